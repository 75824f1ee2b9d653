//! Delivery jobs: one per device, on `XIBAAR_DELIVERIES`, consumed by the sender.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    event::FcmTarget,
    ids::{CustomerId, DeviceId, FcmToken, NotificationId},
    notification::{Content, DeliveryOptions, Platform},
    priority::Priority,
    subject,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryJob {
    pub notification_id: NotificationId,
    pub priority: Priority,
    pub device_id: DeviceId,
    pub customer_id: CustomerId,
    pub token: FcmToken,
    pub platform: Platform,
    /// The Firebase app the device's token belongs to; selects the FCM project.
    pub app_id: String,
    pub content: Content,
    #[serde(flatten)]
    pub delivery: DeliveryOptions,
    /// Carried into every event about this delivery.
    pub correlation_id: String,
    pub accepted_at: DateTime<Utc>,
}

impl DeliveryJob {
    pub fn subject(&self) -> String {
        subject::delivery(self.priority, self.notification_id, &self.device_id)
    }

    /// Deterministic, so a fan-out resumed after a crash publishes each job once. Device ids
    /// are unique within a customer only, so the customer is part of it.
    pub fn msg_id(&self) -> String {
        format!(
            "{}:{}:{}",
            self.notification_id, self.customer_id, self.device_id
        )
    }

    /// The job's key in `XIBAAR_SENT`: `<notification>.<customer>.<device>` (`.` can occur in
    /// none of the three).
    pub fn marker_key(&self) -> String {
        format!(
            "{}.{}.{}",
            self.notification_id, self.customer_id, self.device_id
        )
    }
}

/// The one job of a notification to an FCM topic or condition: FCM fans it out to the
/// subscribed devices. On `XIBAAR_DELIVERIES` beside the device jobs, so priorities, retries,
/// the circuit breaker and the DLQ treat it the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopicJob {
    pub notification_id: NotificationId,
    pub priority: Priority,
    /// The Firebase app whose topic it is; selects the FCM project.
    pub app_id: String,
    pub target: FcmTarget,
    pub content: Content,
    #[serde(flatten)]
    pub delivery: DeliveryOptions,
    pub correlation_id: String,
    pub accepted_at: DateTime<Utc>,
}

/// `Xibaar-Type` of a [`DeliveryJob`].
pub const DEVICE_JOB_TYPE: &str = "delivery_job";
/// `Xibaar-Type` of a [`TopicJob`].
pub const TOPIC_JOB_TYPE: &str = "topic_job";

impl TopicJob {
    pub fn subject(&self) -> String {
        subject::topic_delivery(self.priority, self.notification_id)
    }

    pub fn msg_id(&self) -> String {
        format!("{}:~topic", self.notification_id)
    }
}

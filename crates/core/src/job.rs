//! Delivery jobs on `XIBAAR_DELIVERIES`, consumed by the sender: a [`DeliveryPage`] carries up to
//! [`DEVICES_PER_PAGE`] devices of one notification; a [`DeliveryJob`] is one device's (the shape
//! earlier versions stored for every device, still delivered, and what a dead letter holds); a
//! [`TopicJob`] is one FCM topic or condition.

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

/// `Xibaar-Type` of a [`DeliveryPage`].
pub const PAGE_JOB_TYPE: &str = "delivery_page";

/// Most devices one [`DeliveryPage`] carries: a job's store, pull and ack are shared by that
/// many pushes, and a page stays a few tens of kilobytes.
pub const DEVICES_PER_PAGE: usize = 100;

/// The `Nats-Msg-Id` of the page of `notification` that ends at `device` of `customer`.
pub fn page_msg_id(
    notification: NotificationId,
    customer: &CustomerId,
    device: &DeviceId,
) -> String {
    format!("{notification}:page:{customer}:{device}")
}

/// One device of a [`DeliveryPage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PageDevice {
    pub device_id: DeviceId,
    pub customer_id: CustomerId,
    pub token: FcmToken,
    pub platform: Platform,
    pub app_id: String,
    /// Which of the page's `contents` this device receives (its language's).
    #[serde(default)]
    pub content: usize,
}

/// The devices of one notification that one job delivers: each gets its own push, its own
/// outcome event, its own retries and, when it fails for good, its own dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryPage {
    pub notification_id: NotificationId,
    pub priority: Priority,
    /// The notification's content in each language the page's devices read, once.
    pub contents: Vec<Content>,
    pub devices: Vec<PageDevice>,
    #[serde(flatten)]
    pub delivery: DeliveryOptions,
    pub correlation_id: String,
    pub accepted_at: DateTime<Utc>,
}

impl DeliveryPage {
    /// A page of `notification`'s devices, each with `content_of` its language.
    pub fn new(
        notification_id: NotificationId,
        priority: Priority,
        delivery: DeliveryOptions,
        correlation_id: String,
        accepted_at: DateTime<Utc>,
    ) -> Self {
        Self {
            notification_id,
            priority,
            contents: Vec::new(),
            devices: Vec::new(),
            delivery,
            correlation_id,
            accepted_at,
        }
    }

    /// Adds a device with its content, stored once per distinct content.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        device_id: DeviceId,
        customer_id: CustomerId,
        token: FcmToken,
        platform: Platform,
        app_id: String,
        content: Content,
    ) {
        let index = match self.contents.iter().position(|c| *c == content) {
            Some(i) => i,
            None => {
                self.contents.push(content);
                self.contents.len() - 1
            }
        };
        self.devices.push(PageDevice {
            device_id,
            customer_id,
            token,
            platform,
            app_id,
            content: index,
        });
    }

    pub fn subject(&self) -> String {
        subject::delivery_page(self.priority, self.notification_id)
    }

    /// The last device of the page names it: the fan-out cuts pages at recorded devices, so a
    /// page published again after a crash carries the same id and JetStream drops it.
    pub fn msg_id(&self) -> Option<String> {
        let last = self.devices.last()?;
        Some(page_msg_id(
            self.notification_id,
            &last.customer_id,
            &last.device_id,
        ))
    }

    /// The page's record in `XIBAAR_SENT` (four tokens, where a device's has three):
    /// `<notification>.page.<customer>.<device>` of its last device.
    pub fn marker_key(&self) -> Option<String> {
        let last = self.devices.last()?;
        Some(format!(
            "{}.page.{}.{}",
            self.notification_id, last.customer_id, last.device_id
        ))
    }

    /// The content device `index` receives.
    pub fn content_of(&self, index: usize) -> Option<&Content> {
        self.contents.get(self.devices.get(index)?.content)
    }

    /// Device `index` as a job of its own: what its dead letter holds, so that `xibaar dlq
    /// retry` sends that device alone.
    pub fn job(&self, index: usize) -> Option<DeliveryJob> {
        let device = self.devices.get(index)?;
        Some(DeliveryJob {
            notification_id: self.notification_id,
            priority: self.priority,
            device_id: device.device_id.clone(),
            customer_id: device.customer_id.clone(),
            token: device.token.clone(),
            platform: device.platform,
            app_id: device.app_id.clone(),
            content: self.content_of(index)?.clone(),
            delivery: self.delivery.clone(),
            correlation_id: self.correlation_id.clone(),
            accepted_at: self.accepted_at,
        })
    }

    /// Why the page cannot be delivered as it is, if it cannot.
    pub fn malformed(&self) -> Option<&'static str> {
        if self.devices.is_empty() {
            Some("a delivery page without devices")
        } else if self
            .devices
            .iter()
            .any(|d| d.content >= self.contents.len())
        {
            Some("a delivery page device points at content the page does not carry")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> DeliveryPage {
        let mut page = DeliveryPage::new(
            NotificationId::generate(),
            Priority::Low,
            DeliveryOptions::default(),
            "c".into(),
            Utc::now(),
        );
        for (i, title) in ["Facture", "Fakitir", "Facture"].into_iter().enumerate() {
            page.push(
                DeviceId::parse(format!("d{i}")).unwrap(),
                CustomerId::parse(format!("c{i}")).unwrap(),
                FcmToken::parse(format!("token-{i}")).unwrap(),
                Platform::Android,
                "app".into(),
                Content {
                    title: title.into(),
                    body: "b".into(),
                    ..Default::default()
                },
            );
        }
        page
    }

    #[test]
    fn a_page_stores_each_content_once_and_gives_each_device_its_own() {
        let page = page();
        assert_eq!(page.contents.len(), 2);
        assert_eq!(page.content_of(1).unwrap().title, "Fakitir");
        assert_eq!(page.content_of(2).unwrap().title, "Facture");
        let job = page.job(1).unwrap();
        assert_eq!(job.device_id.as_str(), "d1");
        assert_eq!(job.content.title, "Fakitir");
        assert_eq!(page.malformed(), None);
        let back: DeliveryPage =
            serde_json::from_slice(&serde_json::to_vec(&page).unwrap()).unwrap();
        assert_eq!(back, page);
    }

    #[test]
    fn a_page_is_named_by_its_last_device() {
        let page = page();
        let id = page.notification_id;
        assert_eq!(page.msg_id().unwrap(), format!("{id}:page:c2:d2"));
        assert_eq!(page.marker_key().unwrap(), format!("{id}.page.c2.d2"));
        assert!(page.subject().ends_with(&format!("{id}.~page")));
        let mut empty = page.clone();
        empty.devices.clear();
        assert_eq!(empty.msg_id(), None);
        assert!(empty.malformed().is_some());
        let mut dangling = page;
        dangling.devices[0].content = 7;
        assert!(dangling.malformed().is_some());
    }
}

//! The event catalog and its envelope. Events are the source of truth: read models are folds of
//! them and auditors replay them.
//!
//! On the wire an event is `{id, type, version, occurred_at, correlation_id, causation_id, actor,
//! data}`. Decoding reads the envelope first and the data by `(type, version)`, so an unknown
//! type is reported as [`Decoded::Unknown`] instead of failing the reader.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

mod envelope;
mod upcast;

pub use envelope::{DecodeError, Decoded, EventEnvelope, EventMeta, WireEnvelope};

use crate::{
    ids::{CustomerId, DeviceId, FcmToken, NotificationId},
    notification::{Audience, Category, Content, DeliveryOptions, Platform},
    priority::Priority,
    segment::CustomerAttributes,
    subject,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A customer acting through the mobile app.
    Customer,
    /// A back-office or internal system with a client token.
    Client,
    /// Xibaar itself (dispatcher, sender, sources).
    System,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Customer => "customer",
            ActorKind::Client => "client",
            ActorKind::System => "system",
        }
    }
}

/// Who caused a fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

/// `kind:id`, e.g. `client:billing`.
impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

impl Actor {
    pub fn system(role: &str) -> Self {
        Self {
            kind: ActorKind::System,
            id: role.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationAccepted {
    pub notification_id: NotificationId,
    pub priority: Priority,
    pub audience: Audience,
    pub content: Content,
    /// What the notification is about; customers opted out of it are skipped (an urgent outage
    /// notice reaches them regardless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Since v2 nested here; v1 had these fields beside the others (see [`upcast`]).
    #[serde(default)]
    pub delivery: DeliveryOptions,
    pub accepted_at: DateTime<Utc>,
}

/// A send accepted for later: it waits in JetStream's message scheduler until `send_at`, then
/// goes through fan-out like any other (`notification.accepted` follows then).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationScheduled {
    pub notification_id: NotificationId,
    pub priority: Priority,
    pub audience: Audience,
    pub content: Content,
    /// What the notification is about; customers opted out of it are skipped (an urgent outage
    /// notice reaches them regardless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Since v2 nested here; v1 had these fields beside the others (see [`upcast`]).
    #[serde(default)]
    pub delivery: DeliveryOptions,
    pub send_at: DateTime<Utc>,
    pub accepted_at: DateTime<Utc>,
}

/// A scheduled or queued notification withdrawn before any fan-out began: nothing of it is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationCanceled {
    pub notification_id: NotificationId,
    pub priority: Priority,
    pub audience: Audience,
    pub content: Content,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    /// Since v2 nested here; v1 had these fields beside the others (see [`upcast`]).
    #[serde(default)]
    pub delivery: DeliveryOptions,
    /// Who sent it; the event's actor is who canceled it.
    pub requested_by: Actor,
    pub accepted_at: DateTime<Utc>,
    pub canceled_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationFannedOut {
    pub notification_id: NotificationId,
    pub priority: Priority,
    /// Delivery jobs created: one per active device in the audience.
    pub targeted: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliverySucceeded {
    pub notification_id: NotificationId,
    pub priority: Priority,
    pub device_id: DeviceId,
    pub customer_id: CustomerId,
    /// 1 for the first try.
    pub attempt: u32,
    /// FCM's `name` for the message, `projects/<p>/messages/<id>`.
    pub fcm_message_id: String,
}

/// The devices of one page of delivery jobs that FCM accepted, recorded together: one stored
/// event for up to a hundred pushes instead of one each. Each device's record is what its own
/// `delivery.succeeded` would hold. Failures and expiries stay events of their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveriesSucceeded {
    pub notification_id: NotificationId,
    pub priority: Priority,
    /// At least one, in the order FCM answered.
    pub devices: Vec<SucceededDevice>,
}

/// One device of [`DeliveriesSucceeded`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SucceededDevice {
    pub device_id: DeviceId,
    pub customer_id: CustomerId,
    /// 1 for the first try.
    pub attempt: u32,
    /// FCM's `name` for the message, `projects/<p>/messages/<id>`.
    pub fcm_message_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryFailure {
    /// FCM no longer knows the token (UNREGISTERED, SENDER_ID_MISMATCH, invalid token).
    InvalidToken,
    /// FCM refused the message itself (INVALID_ARGUMENT on the payload).
    Rejected,
    /// Retryable errors outlasted every attempt.
    RetriesExhausted,
    /// FCM could not reach APNs or web push with the project's credentials.
    ThirdPartyAuth,
}

impl DeliveryFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryFailure::InvalidToken => "invalid_token",
            DeliveryFailure::Rejected => "rejected",
            DeliveryFailure::RetriesExhausted => "retries_exhausted",
            DeliveryFailure::ThirdPartyAuth => "third_party_auth",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryFailed {
    pub notification_id: NotificationId,
    pub priority: Priority,
    pub device_id: DeviceId,
    pub customer_id: CustomerId,
    pub attempt: u32,
    pub reason: DeliveryFailure,
    /// FCM's `errorCode` or HTTP status, when FCM answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub detail: String,
}

/// The push was not sent before the notification's `expires_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryExpired {
    pub notification_id: NotificationId,
    pub priority: Priority,
    pub device_id: DeviceId,
    pub customer_id: CustomerId,
    pub attempt: u32,
    pub expired_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceRegistered {
    pub device_id: DeviceId,
    pub customer_id: CustomerId,
    pub token: FcmToken,
    pub platform: Platform,
    pub app_id: String,
    /// The app's version, as the app reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
    /// The device's language tag (BCP 47), e.g. `fr-SN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceTokenInvalidated {
    pub device_id: DeviceId,
    /// The device's owner. Events recorded before devices belonged to their customer lack it;
    /// the token alone names the device then (a token is held by one device at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<CustomerId>,
    /// The token FCM refused; a device that has since registered a new token stays active.
    pub token: FcmToken,
    pub error_code: String,
}

/// The customer removed a device: it receives nothing more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceRemoved {
    pub device_id: DeviceId,
    pub customer_id: CustomerId,
}

/// The customer read one notification of their inbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InboxItemRead {
    pub customer_id: CustomerId,
    pub notification_id: NotificationId,
}

/// The customer marked their whole inbox read: every item up to `up_to_position` (the newest
/// they had been shown); items that arrive later stay unread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InboxAllRead {
    pub customer_id: CustomerId,
    pub up_to_position: i64,
}

/// The customer system's record of a customer, as a `customers` source read it: every
/// attribute as it now stands (an attribute it no longer holds is `None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerAttributesChanged {
    pub customer_id: CustomerId,
    pub attributes: CustomerAttributes,
    /// Where it was read, `<source>/<row key>/<row version>`: the event's id derives from it,
    /// so a row read again after a crash is stored once.
    pub origin: String,
}

/// A customer's choice of categories: only the categories named change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PreferencesChanged {
    pub customer_id: CustomerId,
    /// Category → opted in.
    pub categories: std::collections::BTreeMap<Category, bool>,
}

/// Where a topic or condition notification went: one FCM request, FCM fans it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FcmTarget {
    Topic { topic: String },
    Condition { condition: String },
}

/// How the single FCM request of a topic or condition notification ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TopicOutcome {
    Succeeded {
        fcm_message_id: String,
    },
    Failed {
        reason: DeliveryFailure,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_code: Option<String>,
        detail: String,
    },
    Expired {
        expired_at: DateTime<Utc>,
    },
}

/// The outcome of a notification sent to an FCM topic or condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopicDelivery {
    pub notification_id: NotificationId,
    pub priority: Priority,
    pub app_id: String,
    pub target: FcmTarget,
    pub attempt: u32,
    #[serde(flatten)]
    pub outcome: TopicOutcome,
}

/// Every fact Xibaar records.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    NotificationAccepted(NotificationAccepted),
    NotificationFannedOut(NotificationFannedOut),
    DeliverySucceeded(DeliverySucceeded),
    DeliveryFailed(DeliveryFailed),
    DeviceRegistered(DeviceRegistered),
    DeviceTokenInvalidated(DeviceTokenInvalidated),
    DeliveryExpired(DeliveryExpired),
    NotificationScheduled(NotificationScheduled),
    PreferencesChanged(PreferencesChanged),
    CustomerAttributesChanged(CustomerAttributesChanged),
    TopicDelivery(TopicDelivery),
    NotificationCanceled(NotificationCanceled),
    DeviceRemoved(DeviceRemoved),
    InboxItemRead(InboxItemRead),
    InboxAllRead(InboxAllRead),
    DeliveriesSucceeded(DeliveriesSucceeded),
}

/// `(type, current version)` of every event in the catalog.
pub const CATALOG: [(&str, u32); 16] = [
    ("notification.accepted", 2),
    ("notification.fanned_out", 1),
    ("delivery.succeeded", 1),
    ("delivery.failed", 1),
    ("device.registered", 1),
    ("device.token_invalidated", 1),
    ("delivery.expired", 1),
    ("notification.scheduled", 2),
    ("preferences.changed", 1),
    ("delivery.topic", 1),
    ("notification.canceled", 2),
    ("device.removed", 1),
    ("inbox.item_read", 1),
    ("inbox.all_read", 1),
    ("customer.attributes_changed", 1),
    ("delivery.page_succeeded", 1),
];

impl Event {
    pub fn event_type(&self) -> &'static str {
        CATALOG[self.catalog_index()].0
    }

    pub fn version(&self) -> u32 {
        CATALOG[self.catalog_index()].1
    }

    fn catalog_index(&self) -> usize {
        match self {
            Event::NotificationAccepted(_) => 0,
            Event::NotificationFannedOut(_) => 1,
            Event::DeliverySucceeded(_) => 2,
            Event::DeliveryFailed(_) => 3,
            Event::DeviceRegistered(_) => 4,
            Event::DeviceTokenInvalidated(_) => 5,
            Event::DeliveryExpired(_) => 6,
            Event::NotificationScheduled(_) => 7,
            Event::PreferencesChanged(_) => 8,
            Event::CustomerAttributesChanged(_) => 14,
            Event::TopicDelivery(_) => 9,
            Event::NotificationCanceled(_) => 10,
            Event::DeviceRemoved(_) => 11,
            Event::InboxItemRead(_) => 12,
            Event::InboxAllRead(_) => 13,
            Event::DeliveriesSucceeded(_) => 15,
        }
    }

    /// The id of the aggregate the event belongs to, the fourth token of its subject. Delivery
    /// events belong to their notification, so one subject filter yields a notification's
    /// whole timeline.
    pub fn aggregate_id(&self) -> String {
        match self {
            Event::NotificationAccepted(e) => e.notification_id.to_string(),
            Event::NotificationFannedOut(e) => e.notification_id.to_string(),
            Event::DeliverySucceeded(e) => e.notification_id.to_string(),
            Event::DeliveryFailed(e) => e.notification_id.to_string(),
            Event::DeviceRegistered(e) => e.device_id.to_string(),
            Event::DeviceTokenInvalidated(e) => e.device_id.to_string(),
            Event::DeliveryExpired(e) => e.notification_id.to_string(),
            Event::NotificationScheduled(e) => e.notification_id.to_string(),
            Event::PreferencesChanged(e) => e.customer_id.to_string(),
            Event::CustomerAttributesChanged(e) => e.customer_id.to_string(),
            Event::TopicDelivery(e) => e.notification_id.to_string(),
            Event::NotificationCanceled(e) => e.notification_id.to_string(),
            Event::DeviceRemoved(e) => e.device_id.to_string(),
            Event::InboxItemRead(e) => e.customer_id.to_string(),
            Event::InboxAllRead(e) => e.customer_id.to_string(),
            Event::DeliveriesSucceeded(e) => e.notification_id.to_string(),
        }
    }

    pub fn subject(&self) -> String {
        subject::event(self.event_type(), &self.aggregate_id())
    }

    /// Facts that can happen only once have a natural key; their event id is derived from it so
    /// that a publish repeated after a crash is dropped by JetStream's duplicate window.
    pub(super) fn natural_key(&self) -> Option<String> {
        match self {
            Event::NotificationAccepted(e) => Some(e.notification_id.to_string()),
            Event::NotificationScheduled(e) => Some(e.notification_id.to_string()),
            Event::NotificationFannedOut(e) => Some(e.notification_id.to_string()),
            Event::DeliverySucceeded(e) => Some(format!(
                "{}/{}/{}",
                e.notification_id, e.customer_id, e.device_id
            )),
            Event::DeliveryFailed(e) => Some(format!(
                "{}/{}/{}",
                e.notification_id, e.customer_id, e.device_id
            )),
            Event::DeliveryExpired(e) => Some(format!(
                "{}/{}/{}",
                e.notification_id, e.customer_id, e.device_id
            )),
            Event::DeviceTokenInvalidated(e) => {
                Some(format!("{}/{}", e.device_id, e.token.as_str()))
            }
            Event::TopicDelivery(e) => Some(e.notification_id.to_string()),
            Event::NotificationCanceled(e) => Some(e.notification_id.to_string()),
            Event::InboxItemRead(e) => Some(format!("{}/{}", e.customer_id, e.notification_id)),
            Event::CustomerAttributesChanged(e) => Some(format!("attributes/{}", e.origin)),
            // Its devices, in order: the same answers recorded again (a store retried after
            // its acknowledgement was lost) are the same event.
            Event::DeliveriesSucceeded(e) => Some(e.devices.iter().fold(
                e.notification_id.to_string(),
                |mut key, d| {
                    key.push('/');
                    key.push_str(d.customer_id.as_str());
                    key.push('/');
                    key.push_str(d.device_id.as_str());
                    key
                },
            )),
            Event::DeviceRegistered(_)
            | Event::PreferencesChanged(_)
            | Event::DeviceRemoved(_)
            | Event::InboxAllRead(_) => None,
        }
    }

    pub(super) fn data_json(&self) -> serde_json::Result<Box<RawValue>> {
        match self {
            Event::NotificationAccepted(d) => serde_json::value::to_raw_value(d),
            Event::NotificationFannedOut(d) => serde_json::value::to_raw_value(d),
            Event::DeliverySucceeded(d) => serde_json::value::to_raw_value(d),
            Event::DeliveryFailed(d) => serde_json::value::to_raw_value(d),
            Event::DeviceRegistered(d) => serde_json::value::to_raw_value(d),
            Event::DeviceTokenInvalidated(d) => serde_json::value::to_raw_value(d),
            Event::DeliveryExpired(d) => serde_json::value::to_raw_value(d),
            Event::NotificationScheduled(d) => serde_json::value::to_raw_value(d),
            Event::PreferencesChanged(d) => serde_json::value::to_raw_value(d),
            Event::CustomerAttributesChanged(d) => serde_json::value::to_raw_value(d),
            Event::TopicDelivery(d) => serde_json::value::to_raw_value(d),
            Event::NotificationCanceled(d) => serde_json::value::to_raw_value(d),
            Event::DeviceRemoved(d) => serde_json::value::to_raw_value(d),
            Event::InboxItemRead(d) => serde_json::value::to_raw_value(d),
            Event::InboxAllRead(d) => serde_json::value::to_raw_value(d),
            Event::DeliveriesSucceeded(d) => serde_json::value::to_raw_value(d),
        }
    }
}

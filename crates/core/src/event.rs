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
use uuid::Uuid;

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

/// Namespace of deterministic event ids (UUIDv5).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x0b5e_7c0d_91a4_4f3b_8d2e_3a6f_c4e1_7d22);

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
    fn natural_key(&self) -> Option<String> {
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

    fn data_json(&self) -> serde_json::Result<Box<RawValue>> {
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

/// Envelope fields other than the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventMeta {
    pub id: Uuid,
    pub occurred_at: DateTime<Utc>,
    /// The notification or request the event is part of; shared by every event it causes.
    pub correlation_id: String,
    /// The message (command, job or event id) that directly caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    pub actor: Actor,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventEnvelope {
    pub meta: EventMeta,
    pub event: Event,
}

/// The envelope as it is written and read; `data` is decoded according to `type` and `version`.
#[derive(Serialize, Deserialize, JsonSchema)]
#[schemars(title = "EventEnvelope")]
pub struct WireEnvelope<D> {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    pub actor: Actor,
    pub data: D,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event is not a valid envelope: {0}")]
    Envelope(serde_json::Error),
    #[error("event {event_type} v{version} has invalid data: {source}")]
    Data {
        event_type: String,
        version: u32,
        source: serde_json::Error,
    },
    #[error("event {event_type} v{version} cannot be upcast: {reason}")]
    Upcast {
        event_type: String,
        version: u32,
        reason: String,
    },
    #[error(
        "event {event_type} has version {version}, newer than this build understands ({known})"
    )]
    FutureVersion {
        event_type: String,
        version: u32,
        known: u32,
    },
}

/// What a reader gets back: an event it understands, or the name of one it does not.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Known(Box<EventEnvelope>),
    Unknown { event_type: String, version: u32 },
}

impl EventEnvelope {
    /// Wraps `event` with a fresh envelope. The id is derived from the event's natural key when
    /// it has one, otherwise it is a new UUIDv7.
    pub fn new(
        event: Event,
        correlation_id: impl Into<String>,
        causation_id: Option<String>,
        actor: Actor,
    ) -> Self {
        let id = match event.natural_key() {
            Some(key) => {
                let name = format!("{}/{}", event.event_type(), key);
                crate::ids::derived_uuid(&EVENT_NAMESPACE, name.as_bytes())
            }
            None => Uuid::now_v7(),
        };
        Self {
            meta: EventMeta {
                id,
                occurred_at: Utc::now(),
                correlation_id: correlation_id.into(),
                causation_id,
                actor,
            },
            event,
        }
    }

    pub fn subject(&self) -> String {
        self.event.subject()
    }

    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        let wire = WireEnvelope {
            id: self.meta.id,
            event_type: self.event.event_type().to_owned(),
            version: self.event.version(),
            occurred_at: self.meta.occurred_at,
            correlation_id: self.meta.correlation_id.clone(),
            causation_id: self.meta.causation_id.clone(),
            actor: self.meta.actor.clone(),
            data: self.event.data_json()?,
        };
        serde_json::to_vec(&wire)
    }

    pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
        let wire: WireEnvelope<&RawValue> =
            serde_json::from_slice(bytes).map_err(DecodeError::Envelope)?;
        let Some(&(event_type, known)) = CATALOG.iter().find(|(t, _)| *t == wire.event_type) else {
            return Ok(Decoded::Unknown {
                event_type: wire.event_type,
                version: wire.version,
            });
        };
        if wire.version > known {
            return Err(DecodeError::FutureVersion {
                event_type: wire.event_type,
                version: wire.version,
                known,
            });
        }
        // The current version is read as stored; an older one is upcast step by step first.
        let upcast_data = if wire.version < known {
            Some(upcast(event_type, wire.version, known, wire.data)?)
        } else {
            None
        };
        let data = upcast_data.as_deref().unwrap_or(wire.data.get());
        let parse_err = |source| DecodeError::Data {
            event_type: event_type.to_owned(),
            version: wire.version,
            source,
        };
        let event = match event_type {
            "notification.accepted" => {
                Event::NotificationAccepted(serde_json::from_str(data).map_err(parse_err)?)
            }
            "notification.fanned_out" => {
                Event::NotificationFannedOut(serde_json::from_str(data).map_err(parse_err)?)
            }
            "delivery.succeeded" => {
                Event::DeliverySucceeded(serde_json::from_str(data).map_err(parse_err)?)
            }
            "delivery.failed" => {
                Event::DeliveryFailed(serde_json::from_str(data).map_err(parse_err)?)
            }
            "device.registered" => {
                Event::DeviceRegistered(serde_json::from_str(data).map_err(parse_err)?)
            }
            "device.token_invalidated" => {
                Event::DeviceTokenInvalidated(serde_json::from_str(data).map_err(parse_err)?)
            }
            "delivery.expired" => {
                Event::DeliveryExpired(serde_json::from_str(data).map_err(parse_err)?)
            }
            "notification.scheduled" => {
                Event::NotificationScheduled(serde_json::from_str(data).map_err(parse_err)?)
            }
            "preferences.changed" => {
                Event::PreferencesChanged(serde_json::from_str(data).map_err(parse_err)?)
            }
            "customer.attributes_changed" => {
                Event::CustomerAttributesChanged(serde_json::from_str(data).map_err(parse_err)?)
            }
            "delivery.topic" => {
                Event::TopicDelivery(serde_json::from_str(data).map_err(parse_err)?)
            }
            "device.removed" => {
                Event::DeviceRemoved(serde_json::from_str(data).map_err(parse_err)?)
            }
            "inbox.item_read" => {
                Event::InboxItemRead(serde_json::from_str(data).map_err(parse_err)?)
            }
            "inbox.all_read" => Event::InboxAllRead(serde_json::from_str(data).map_err(parse_err)?),
            "delivery.page_succeeded" => {
                Event::DeliveriesSucceeded(serde_json::from_str(data).map_err(parse_err)?)
            }
            _ => Event::NotificationCanceled(serde_json::from_str(data).map_err(parse_err)?),
        };
        Ok(Decoded::Known(Box::new(EventEnvelope {
            meta: EventMeta {
                id: wire.id,
                occurred_at: wire.occurred_at,
                correlation_id: wire.correlation_id,
                causation_id: wire.causation_id,
                actor: wire.actor,
            },
            event,
        })))
    }
}

/// One step of an event's evolution: turns the data of `(type, version)` into the data of
/// `version + 1`.
type Upcaster = fn(&mut serde_json::Map<String, serde_json::Value>) -> Result<(), String>;

/// Every step, by `(type, from version)`. Stored events are never rewritten: a reader upcasts an
/// old version through the chain to the one its build knows, so an old log projects exactly as
/// it did when it was written.
const UPCASTERS: [(&str, u32, Upcaster); 3] = [
    ("notification.accepted", 1, nest_delivery_options),
    ("notification.scheduled", 1, nest_scheduled_delivery_options),
    ("notification.canceled", 1, nest_delivery_options),
];

/// v1 → v2 of `notification.accepted` and `notification.canceled`: `expires_at`,
/// `collapse_key` and `send_at` move from beside the other fields into `delivery`. (Flattened
/// fields cannot be checked for unknown names and make every decode buffer the whole object.)
fn nest_delivery_options(
    data: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    nest(data, false)
}

/// v1 → v2 of `notification.scheduled`, whose own `send_at` shared its name with the
/// flattened option: it stays, and `delivery` gets a copy.
fn nest_scheduled_delivery_options(
    data: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    nest(data, true)
}

fn nest(
    data: &mut serde_json::Map<String, serde_json::Value>,
    keep_send_at: bool,
) -> Result<(), String> {
    if data.contains_key("delivery") {
        return Err("v1 data already has a `delivery` field".into());
    }
    let mut delivery = serde_json::Map::new();
    for field in ["expires_at", "collapse_key", "send_at"] {
        let value = if field == "send_at" && keep_send_at {
            data.get(field).cloned()
        } else {
            data.remove(field)
        };
        if let Some(value) = value {
            delivery.insert(field.to_owned(), value);
        }
    }
    data.insert("delivery".into(), serde_json::Value::Object(delivery));
    Ok(())
}

/// The data of `event_type` at `version`, upcast to `target`.
fn upcast(
    event_type: &str,
    version: u32,
    target: u32,
    data: &RawValue,
) -> Result<String, DecodeError> {
    let failed = |reason: String| DecodeError::Upcast {
        event_type: event_type.to_owned(),
        version,
        reason,
    };
    let mut value: serde_json::Map<String, serde_json::Value> = serde_json::from_str(data.get())
        .map_err(|e| failed(format!("data is not an object: {e}")))?;
    for from in version..target {
        let step = UPCASTERS
            .iter()
            .find(|(t, v, _)| *t == event_type && *v == from)
            .ok_or_else(|| failed(format!("no upcaster from v{from}")))?;
        (step.2)(&mut value).map_err(|e| failed(format!("v{from} → v{}: {e}", from + 1)))?;
    }
    serde_json::to_string(&value).map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_below_the_current_one_has_an_upcaster() {
        for (event_type, current) in CATALOG {
            for from in 1..current {
                assert!(
                    UPCASTERS
                        .iter()
                        .any(|(t, v, _)| *t == event_type && *v == from),
                    "{event_type} v{from} has no upcaster"
                );
            }
        }
        for (event_type, from, _) in UPCASTERS {
            let current = CATALOG.iter().find(|(t, _)| *t == event_type).unwrap().1;
            assert!(
                from < current,
                "{event_type} v{from} upcaster past the current version"
            );
        }
    }

    #[test]
    fn a_v1_notification_event_decodes_to_the_same_event_as_its_v2() {
        let v1 = br#"{"id":"0190a0e0-0000-7000-8000-000000000001","type":"notification.accepted","version":1,
            "occurred_at":"2026-01-01T00:00:00Z","correlation_id":"n","actor":{"kind":"client","id":"billing"},
            "data":{"notification_id":"0190a0e0-0000-7000-8000-0000000000aa","priority":"high",
                    "audience":{"kind":"everyone"},"content":{"title":"t","body":"b"},
                    "collapse_key":"bill","expires_at":"2026-01-02T00:00:00Z",
                    "accepted_at":"2026-01-01T00:00:00Z"}}"#;
        let Decoded::Known(old) = EventEnvelope::decode(v1).unwrap() else {
            panic!("known type")
        };
        let Event::NotificationAccepted(accepted) = &old.event else {
            panic!("{old:?}")
        };
        assert_eq!(accepted.delivery.collapse_key.as_deref(), Some("bill"));
        assert_eq!(
            accepted.delivery.expires_at.map(|t| t.to_rfc3339()),
            Some("2026-01-02T00:00:00+00:00".to_owned())
        );
        // Written again it is v2, nested, and reads back the same.
        let v2 = old.to_json().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&v2).unwrap();
        assert_eq!(json["version"], 2);
        assert_eq!(json["data"]["delivery"]["collapse_key"], "bill");
        assert!(json["data"].get("collapse_key").is_none());
        assert_eq!(EventEnvelope::decode(&v2).unwrap(), Decoded::Known(old));
    }

    #[test]
    fn a_v1_event_that_cannot_be_upcast_is_an_error_not_a_guess() {
        let bad = br#"{"id":"0190a0e0-0000-7000-8000-000000000002","type":"notification.canceled","version":1,
            "occurred_at":"2026-01-01T00:00:00Z","correlation_id":"n","actor":{"kind":"client","id":"b"},
            "data":{"delivery":{},"notification_id":"0190a0e0-0000-7000-8000-0000000000aa"}}"#;
        let e = EventEnvelope::decode(bad).unwrap_err();
        assert!(matches!(e, DecodeError::Upcast { .. }), "{e}");
    }

    fn registered() -> Event {
        Event::DeviceRegistered(DeviceRegistered {
            device_id: DeviceId::parse("d1").unwrap(),
            customer_id: CustomerId::parse("c1").unwrap(),
            token: FcmToken::parse("tok").unwrap(),
            platform: Platform::Android,
            app_id: "app".into(),
            app_version: Some("4.2.0".into()),
            locale: None,
        })
    }

    #[test]
    fn events_round_trip_through_the_envelope() {
        let env = EventEnvelope::new(registered(), "corr", None, Actor::system("test"));
        let bytes = env.to_json().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["type"], "device.registered");
        assert_eq!(json["version"], 1);
        assert_eq!(json["data"]["device_id"], "d1");
        assert_eq!(
            EventEnvelope::decode(&bytes).unwrap(),
            Decoded::Known(Box::new(env))
        );
    }

    #[test]
    fn unknown_types_are_reported_not_failed() {
        let bytes = br#"{"id":"0190a0e0-0000-7000-8000-000000000000","type":"meter.read","version":3,
            "occurred_at":"2026-01-01T00:00:00Z","correlation_id":"c","actor":{"kind":"system","id":"x"},"data":{}}"#;
        assert_eq!(
            EventEnvelope::decode(bytes).unwrap(),
            Decoded::Unknown {
                event_type: "meter.read".into(),
                version: 3
            }
        );
    }

    #[test]
    fn facts_with_a_natural_key_get_the_same_id_every_time() {
        let nid = NotificationId::generate();
        let fanned = || {
            Event::NotificationFannedOut(NotificationFannedOut {
                notification_id: nid,
                priority: Priority::Low,
                targeted: 3,
            })
        };
        let a = EventEnvelope::new(fanned(), "c", None, Actor::system("d"));
        let b = EventEnvelope::new(fanned(), "c", None, Actor::system("d"));
        assert_eq!(a.meta.id, b.meta.id);
        assert_eq!(
            a.subject(),
            format!("xibaar.evt.notification.{nid}.fanned_out")
        );
        let r1 = EventEnvelope::new(registered(), "c", None, Actor::system("d"));
        let r2 = EventEnvelope::new(registered(), "c", None, Actor::system("d"));
        assert_ne!(r1.meta.id, r2.meta.id);
    }
}

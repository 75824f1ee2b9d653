//! The envelope around every event: its id, instant, correlation and actor, written and read
//! as `{id, type, version, occurred_at, correlation_id, causation_id, actor, data}`.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{Actor, CATALOG, Event, upcast::upcast};

/// Namespace of deterministic event ids (UUIDv5).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x0b5e_7c0d_91a4_4f3b_8d2e_3a6f_c4e1_7d22);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DeviceRegistered, NotificationFannedOut};
    use crate::{
        ids::{CustomerId, DeviceId, FcmToken, NotificationId},
        notification::Platform,
        priority::Priority,
    };

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

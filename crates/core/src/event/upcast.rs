//! Old versions of events, read as the current one: stored events are never rewritten.

use serde_json::value::RawValue;

use super::DecodeError;

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
pub(super) fn upcast(
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
    use crate::event::{CATALOG, Decoded, Event, EventEnvelope};

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
}

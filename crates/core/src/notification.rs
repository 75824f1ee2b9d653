//! What a notification says and to whom.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{CustomerId, DeviceId};

/// FCM rejects a message whose notification + data payload exceeds this many bytes.
pub const FCM_PAYLOAD_LIMIT: usize = 4096;
/// Most customer ids one notification may name; larger groups are sent by category or to everyone.
pub const MAX_AUDIENCE_CUSTOMERS: usize = 10_000;
/// Data key under which every push carries its notification id, so the app can match a push to
/// its inbox item. Reserved: requests may not set it.
pub const NOTIFICATION_ID_DATA_KEY: &str = "xibaar_notification_id";
const MAX_TITLE_CHARS: usize = 200;
const MAX_BODY_CHARS: usize = 2000;

/// Who receives a notification. Expanded by the dispatcher into one delivery per device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Audience {
    /// Every active device of each listed customer.
    Customers { customer_ids: Vec<CustomerId> },
    /// One device, whoever owns it.
    Device { device_id: DeviceId },
    /// Every active device.
    Everyone,
}

/// The visible part of a push plus the app's data payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Content {
    pub title: String,
    pub body: String,
    /// Key/value pairs handed to the app; FCM requires string values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
}

/// How a push may be delayed or replaced on its way to the phone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryOptions {
    /// After this instant an unsent push is dropped (`delivery.expired`) instead of arriving
    /// stale; also handed to FCM (Android `ttl`, APNs `apns-expiration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Pushes with the same key replace each other on the device (Android `collapse_key`,
    /// APNs `apns-collapse-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<String>,
    /// A scheduled send: fanned out at this instant, not before. The TTL counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How far ahead a send may be scheduled. The command streams keep messages 35 days, so a
/// schedule always fires before its stream could age it out.
pub const MAX_SCHEDULE_AHEAD_DAYS: i64 = 30;
/// FCM keeps a message at most 28 days.
pub const MAX_TTL_SECONDS: u32 = 28 * 24 * 3600;
/// APNs accepts collapse ids of at most 64 bytes.
pub const MAX_COLLAPSE_KEY_BYTES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Android,
    Ios,
    Web,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Android => "android",
            Platform::Ios => "ios",
            Platform::Web => "web",
        }
    }
}

/// One rule a request broke, named by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FieldViolation {
    pub field: String,
    pub message: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    #[error("the notification is invalid")]
    Invalid(Vec<FieldViolation>),
    #[error("the FCM payload would be {bytes} bytes; FCM accepts at most {limit}")]
    TooLarge { bytes: usize, limit: usize },
}

/// Keys FCM reserves in `data` (it rejects messages that use them).
fn reserved_data_key(key: &str) -> bool {
    matches!(
        key,
        "from" | "notification" | "message_type" | "collapse_key"
    ) || key.starts_with("google.")
        || key.starts_with("gcm.")
}

impl Content {
    /// Bytes of the payload as FCM counts it: the notification and data objects, including the
    /// notification id Xibaar adds to the data.
    pub fn fcm_payload_bytes(&self) -> usize {
        let mut data = self.data.clone();
        data.insert(
            NOTIFICATION_ID_DATA_KEY.to_owned(),
            uuid::Uuid::nil().to_string(),
        );
        let payload = serde_json::json!({
            "notification": { "title": self.title, "body": self.body, "image": self.image_url },
            "data": data,
        });
        serde_json::to_vec(&payload).map_or(usize::MAX, |v| v.len())
    }

    pub fn validate(&self) -> Result<(), ContentError> {
        let mut violations = Vec::new();
        if self.title.trim().is_empty() {
            violations.push(FieldViolation::new("content.title", "must not be empty"));
        } else if self.title.chars().count() > MAX_TITLE_CHARS {
            violations.push(FieldViolation::new(
                "content.title",
                format!("must be at most {MAX_TITLE_CHARS} characters"),
            ));
        }
        if self.body.chars().count() > MAX_BODY_CHARS {
            violations.push(FieldViolation::new(
                "content.body",
                format!("must be at most {MAX_BODY_CHARS} characters"),
            ));
        }
        for key in self.data.keys() {
            if key.is_empty() || reserved_data_key(key) {
                violations.push(FieldViolation::new(
                    format!("content.data.{key}"),
                    "is a key reserved by FCM",
                ));
            }
        }
        if let Some(url) = &self.image_url
            && !url.starts_with("https://")
        {
            violations.push(FieldViolation::new(
                "content.image_url",
                "must be an https URL",
            ));
        }
        if !violations.is_empty() {
            return Err(ContentError::Invalid(violations));
        }
        let bytes = self.fcm_payload_bytes();
        if bytes > FCM_PAYLOAD_LIMIT {
            return Err(ContentError::TooLarge {
                bytes,
                limit: FCM_PAYLOAD_LIMIT,
            });
        }
        Ok(())
    }
}

impl Audience {
    pub fn validate(&self) -> Result<(), Vec<FieldViolation>> {
        match self {
            Audience::Customers { customer_ids } if customer_ids.is_empty() => {
                Err(vec![FieldViolation::new(
                    "audience.customer_ids",
                    "must name at least one customer",
                )])
            }
            Audience::Customers { customer_ids } if customer_ids.len() > MAX_AUDIENCE_CUSTOMERS => {
                Err(vec![FieldViolation::new(
                    "audience.customer_ids",
                    format!("must name at most {MAX_AUDIENCE_CUSTOMERS} customers"),
                )])
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(body: &str) -> Content {
        Content {
            title: "Outage".into(),
            body: body.into(),
            data: BTreeMap::new(),
            image_url: None,
        }
    }

    #[test]
    fn content_over_the_fcm_limit_is_refused_with_its_size() {
        let mut c = content("x");
        c.data.insert("blob".into(), "y".repeat(5000));
        match c.validate() {
            Err(ContentError::TooLarge { bytes, limit }) => {
                assert!(bytes > 5000);
                assert_eq!(limit, FCM_PAYLOAD_LIMIT);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(content("fine").validate().is_ok());
    }

    #[test]
    fn reserved_keys_and_empty_titles_are_named() {
        let mut c = content("b");
        c.title = " ".into();
        c.data.insert("google.x".into(), "1".into());
        let Err(ContentError::Invalid(v)) = c.validate() else {
            panic!("expected violations")
        };
        let fields: Vec<_> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["content.title", "content.data.google.x"]);
    }

    #[test]
    fn audiences_have_an_explicit_kind() {
        let a: Audience =
            serde_json::from_str(r#"{"kind":"customers","customer_ids":["c1"]}"#).unwrap();
        assert!(a.validate().is_ok());
        let empty = Audience::Customers {
            customer_ids: vec![],
        };
        assert!(empty.validate().is_err());
        assert!(serde_json::from_str::<Audience>(r#"{"kind":"planet"}"#).is_err());
    }
}

//! What a notification says and to whom.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{CustomerId, DeviceId};
pub use crate::language::{Language, Text};
pub use crate::segment::{Contract, CustomerAttributes, MAX_ATTRIBUTE_CHARS};

/// FCM rejects a message whose notification + data payload exceeds this many bytes.
pub const FCM_PAYLOAD_LIMIT: usize = 4096;
/// Most customer ids one notification may name; larger groups are sent by category or to everyone.
pub const MAX_AUDIENCE_CUSTOMERS: usize = 10_000;
/// Data key under which every push carries its notification id, so the app can match a push to
/// its inbox item. Reserved: requests may not set it.
pub const NOTIFICATION_ID_DATA_KEY: &str = "xibaar_notification_id";
pub(crate) const MAX_TITLE_CHARS: usize = 200;
pub(crate) const MAX_BODY_CHARS: usize = 2000;

/// Who receives a notification. Expanded by the dispatcher into one delivery per device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Audience {
    /// Every active device of each listed customer.
    Customers { customer_ids: Vec<CustomerId> },
    /// One device of one customer. A device id is the app's name for a phone within its
    /// customer, so the customer is part of the address. Commands accepted before devices
    /// belonged to their customer lack it: those reach every device of that id.
    Device {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(required = true, value_type = CustomerId)]
        #[schemars(required, with = "CustomerId")]
        customer_id: Option<CustomerId>,
        device_id: DeviceId,
    },
    /// Every active device.
    Everyone,
    /// Every active device of the customers opted in to `category` (see [`Category`] for the
    /// defaults).
    Category { category: Category },
    /// Every active device of the customers whose attributes (kept in step with the customer
    /// system by a `customers` source) match every criterion given: a planned outage in one
    /// commune reaches that commune's customers.
    Segment {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commune: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        zone: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contract: Option<Contract>,
        /// Customers whose preferred language this is (an ISO 639 code).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<String>, pattern = "^[a-z]{2,3}$")]
        language: Option<Language>,
    },
    /// Devices subscribed to an FCM topic of one Firebase app: a single FCM request, FCM does
    /// the fan-out.
    Topic { app_id: String, topic: String },
    /// Devices matching an FCM condition over topics, e.g.
    /// `'outage-dakar' in topics && !('muted' in topics)`; a single FCM request.
    Condition { app_id: String, condition: String },
}

/// What a notification is about. Customers choose which categories they receive.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Bills and payment reminders. Received unless opted out.
    Billing,
    /// Planned and unplanned outages. Received unless opted out; urgent outage notices reach
    /// every customer regardless.
    Outage,
    /// Prepaid meter credit and top-ups. Received unless opted out.
    Prepaid,
    /// Offers and news. Received only after opting in.
    Marketing,
}

impl Category {
    pub const ALL: [Category; 4] = [
        Category::Billing,
        Category::Outage,
        Category::Prepaid,
        Category::Marketing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Billing => "billing",
            Category::Outage => "outage",
            Category::Prepaid => "prepaid",
            Category::Marketing => "marketing",
        }
    }

    /// Whether a customer who never chose receives this category.
    pub fn default_opted_in(self) -> bool {
        !matches!(self, Category::Marketing)
    }
}

/// Which customers' preferences a fan-out must respect, if any: a notification with a category
/// skips customers opted out of it, except an urgent outage notice, which reaches everyone.
pub fn preference_filter(
    priority: crate::Priority,
    category: Option<Category>,
) -> Option<Category> {
    category.filter(|c| !(*c == Category::Outage && priority == crate::Priority::Urgent))
}

/// FCM's rule for topic names.
fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_BYTES
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b))
}

/// FCM accepts at most this many topics in one condition.
pub const MAX_CONDITION_TOPICS: usize = 5;
const MAX_TOPIC_BYTES: usize = 900;
/// FCM's payload limit for messages to a topic or condition.
pub const FCM_TOPIC_PAYLOAD_LIMIT: usize = 2048;

/// Checks an FCM condition: `'<topic>' in topics` terms joined by `&&` and `||`, negated with
/// `!`, grouped with parentheses, at most [`MAX_CONDITION_TOPICS`] topics. Written by hand: the
/// grammar is five tokens and no crate implements FCM's dialect.
fn check_condition(condition: &str) -> Result<(), String> {
    #[derive(PartialEq)]
    enum Tok {
        Term,
        And,
        Or,
        Not,
        Open,
        Close,
    }
    let mut tokens = Vec::new();
    let mut rest = condition.trim_start();
    while !rest.is_empty() {
        let (tok, len) = if let Some(r) = rest.strip_prefix('\'') {
            let end = r.find('\'').ok_or("a topic name is not closed with '")?;
            let topic = &r[..end];
            if !valid_topic(topic) {
                return Err(format!("'{topic}' is not a valid topic name"));
            }
            let after = r[end + 1..].trim_start();
            let Some(after) = after.strip_prefix("in") else {
                return Err(format!("'{topic}' must be followed by `in topics`"));
            };
            let after = after.trim_start();
            let Some(after) = after.strip_prefix("topics") else {
                return Err(format!("'{topic}' must be followed by `in topics`"));
            };
            (Tok::Term, rest.len() - after.len())
        } else if rest.starts_with("&&") {
            (Tok::And, 2)
        } else if rest.starts_with("||") {
            (Tok::Or, 2)
        } else if rest.starts_with('!') {
            (Tok::Not, 1)
        } else if rest.starts_with('(') {
            (Tok::Open, 1)
        } else if rest.starts_with(')') {
            (Tok::Close, 1)
        } else {
            return Err(format!(
                "unexpected text at `{}`",
                rest.chars().take(12).collect::<String>()
            ));
        };
        tokens.push(tok);
        rest = rest[len..].trim_start();
    }
    let terms = tokens.iter().filter(|t| **t == Tok::Term).count();
    if terms == 0 {
        return Err("must name at least one topic".into());
    }
    if terms > MAX_CONDITION_TOPICS {
        return Err(format!("may name at most {MAX_CONDITION_TOPICS} topics"));
    }
    // Shape: an operand (term or parenthesised group, optionally negated) between binary
    // operators, with balanced parentheses.
    let mut depth = 0usize;
    let mut expect_operand = true;
    for tok in &tokens {
        match (tok, expect_operand) {
            (Tok::Not | Tok::Open, true) => {
                if *tok == Tok::Open {
                    depth += 1;
                }
            }
            (Tok::Term, true) => expect_operand = false,
            (Tok::And | Tok::Or, false) => expect_operand = true,
            (Tok::Close, false) if depth > 0 => depth -= 1,
            _ => return Err("is not a well-formed condition".into()),
        }
    }
    if expect_operand || depth != 0 {
        return Err("is not a well-formed condition".into());
    }
    Ok(())
}

/// The visible part of a push plus the app's data payload.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Content {
    pub title: String,
    pub body: String,
    /// Key/value pairs handed to the app; FCM requires string values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// The language of `title` and `body` (`fr`, `wo`, `en`: an ISO 639 code); required with
    /// `translations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = "^[a-z]{2,3}$", example = "fr")]
    pub language: Option<Language>,
    /// The title and body in other languages. Each device receives the text of its locale's
    /// language (`wo-SN` reads `wo`), or `title` and `body`; a customer's inbox shows their
    /// language the same way.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = BTreeMap<String, Text>)]
    pub translations: BTreeMap<Language, Text>,
}

/// How a push may be delayed or replaced on its way to the phone.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
pub struct DeliveryOptions {
    /// After this instant an unsent push is dropped (`delivery.expired`) instead of arriving
    /// stale; also handed to FCM (Android `ttl`, APNs `apns-expiration`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::instant::serialize_option"
    )]
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

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
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
            Audience::Device {
                customer_id: None, ..
            } => Err(vec![FieldViolation::new(
                "audience.customer_id",
                "is required: a device id names a phone within one customer",
            )]),
            Audience::Topic { app_id, topic } => {
                let mut v = app_violation(app_id);
                if !valid_topic(topic) {
                    v.push(FieldViolation::new(
                        "audience.topic",
                        format!(
                            "must be 1 to {MAX_TOPIC_BYTES} characters of letters, digits and -_.~%"
                        ),
                    ));
                }
                if v.is_empty() { Ok(()) } else { Err(v) }
            }
            Audience::Condition { app_id, condition } => {
                let mut v = app_violation(app_id);
                if let Err(e) = check_condition(condition) {
                    v.push(FieldViolation::new("audience.condition", e));
                }
                if v.is_empty() { Ok(()) } else { Err(v) }
            }
            Audience::Segment {
                commune,
                zone,
                contract,
                language,
            } => {
                if commune.is_none() && zone.is_none() && contract.is_none() && language.is_none() {
                    return Err(vec![FieldViolation::new(
                        "audience",
                        "a segment needs at least one of commune, zone, contract and language",
                    )]);
                }
                let mut v = Vec::new();
                for (field, value) in [("audience.commune", commune), ("audience.zone", zone)] {
                    if let Some(value) = value
                        && (value.trim().is_empty()
                            || value.chars().count() > MAX_ATTRIBUTE_CHARS
                            || value.contains('\0'))
                    {
                        v.push(FieldViolation::new(
                            field,
                            format!("must be 1 to {MAX_ATTRIBUTE_CHARS} characters, without NUL"),
                        ));
                    }
                }
                if v.is_empty() { Ok(()) } else { Err(v) }
            }
            _ => Ok(()),
        }
    }

    /// Topic and condition audiences are one FCM request; FCM expands them.
    pub fn is_fcm_fan_out(&self) -> bool {
        matches!(self, Audience::Topic { .. } | Audience::Condition { .. })
    }

    /// The category this audience is defined by, if any.
    pub fn category(&self) -> Option<Category> {
        match self {
            Audience::Category { category } => Some(*category),
            _ => None,
        }
    }
}

fn app_violation(app_id: &str) -> Vec<FieldViolation> {
    if app_id.is_empty() || app_id.len() > 255 {
        vec![FieldViolation::new(
            "audience.app_id",
            "must name the Firebase app whose topic it is",
        )]
    } else {
        Vec::new()
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
            ..Default::default()
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
    fn the_counted_fcm_payload_size_is_that_of_the_payload_written_out() {
        let mut c = content("Line one\nline \"two\" \u{e9}t\u{e9} \u{1f50c}");
        c.image_url = Some("https://example.com/a.png".into());
        c.data.insert("kind".into(), "bill\tdue".into());
        c.data
            .insert(NOTIFICATION_ID_DATA_KEY.into(), "set by the client".into());
        for content in [content("plain"), c] {
            let mut data = content.data.clone();
            data.insert(
                NOTIFICATION_ID_DATA_KEY.to_owned(),
                uuid::Uuid::nil().to_string(),
            );
            let written = serde_json::to_vec(&serde_json::json!({
                "notification": {
                    "title": content.title, "body": content.body, "image": content.image_url,
                },
                "data": data,
            }))
            .unwrap();
            assert_eq!(content.fcm_payload_bytes(), written.len());
        }
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
    fn nul_characters_are_refused_where_the_read_models_keep_text() {
        let mut c = content("body\0");
        c.title = "ti\0tle".into();
        c.data.insert("k".into(), "v\0".into());
        c.data.insert("ok".into(), "line\nbreak".into());
        let Err(ContentError::Invalid(v)) = c.validate() else {
            panic!("NUL accepted")
        };
        let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["content.title", "content.body", "content.data.k"]);
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

    #[test]
    fn conditions_follow_fcm_grammar_and_topic_limit() {
        for ok in [
            "'a' in topics",
            "'a' in topics && 'b' in topics",
            "'a' in topics && ('b' in topics || 'c' in topics)",
            "!('a' in topics) || !'b' in topics",
            "'a' in topics&&'b' in topics",
        ] {
            assert_eq!(check_condition(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "'a' in topics &&",
            "('a' in topics",
            "'a' in topics)",
            "'a b' in topics",
            "'a' in topic",
            "'a' in topics 'b' in topics",
            "a in topics",
            "'a' in topics || 'b' in topics || 'c' in topics || 'd' in topics || 'e' in topics || 'f' in topics",
        ] {
            assert!(check_condition(bad).is_err(), "{bad}");
        }
        let topic = Audience::Topic {
            app_id: "app".into(),
            topic: "outage-dakar".into(),
        };
        assert!(topic.validate().is_ok());
        let bad = Audience::Topic {
            app_id: String::new(),
            topic: "no spaces".into(),
        };
        assert_eq!(bad.validate().unwrap_err().len(), 2);
    }

    #[test]
    fn urgent_outage_notices_ignore_opt_outs_nothing_else_does() {
        use crate::Priority;
        assert_eq!(
            preference_filter(Priority::Urgent, Some(Category::Outage)),
            None
        );
        assert_eq!(
            preference_filter(Priority::High, Some(Category::Outage)),
            Some(Category::Outage)
        );
        assert_eq!(
            preference_filter(Priority::Urgent, Some(Category::Marketing)),
            Some(Category::Marketing)
        );
        assert_eq!(preference_filter(Priority::Low, None), None);
        assert!(!Category::Marketing.default_opted_in());
        assert!(Category::Billing.default_opted_in());
    }
}

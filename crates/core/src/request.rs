//! A request to send a notification, as a caller makes it: validated, normalized, and
//! recoverable from what the pipeline stores, so that a retry with the same idempotency key
//! can be compared with the request that key first named.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Actor, NotificationId, Priority,
    command::SendNotification,
    notification::{
        Audience, Category, Content, ContentError, DeliveryOptions, FieldViolation,
        MAX_COLLAPSE_KEY_BYTES, MAX_SCHEDULE_AHEAD_DAYS, MAX_TTL_SECONDS,
    },
};

/// A notification to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub priority: Priority,
    pub audience: Audience,
    pub content: Content,
    /// What the notification is about (billing, outage, prepaid, marketing); customers opted
    /// out of it are skipped, except for urgent outage notices. A `category` audience implies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    /// Drop the push if it cannot be delivered within this many seconds (at most 28 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 2419200)]
    pub ttl_seconds: Option<u32>,
    /// Pushes with the same key replace each other on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 64)]
    pub collapse_key: Option<String>,
    /// Send at this instant (RFC 3339) instead of now; at most 30 days ahead. The TTL counts
    /// from here. An instant in the past means now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<DateTime<Utc>>,
}

/// Why a request cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the notification is invalid")]
    Invalid(Vec<FieldViolation>),
    #[error("{0}")]
    TooLarge(String),
}

impl SendRequest {
    /// Every rule a request must keep, checked at `now`.
    pub fn validate(&self, now: DateTime<Utc>) -> Result<(), RequestError> {
        let mut violations = self.audience.validate().err().unwrap_or_default();
        match self.content.validate_for(&self.audience) {
            Ok(()) => {}
            Err(ContentError::Invalid(v)) => violations.extend(v),
            Err(e @ ContentError::TooLarge { .. }) => {
                return Err(RequestError::TooLarge(e.to_string()));
            }
        }
        match (&self.audience, self.category) {
            (Audience::Category { category: implied }, Some(given)) if *implied != given => {
                violations.push(FieldViolation::new(
                    "category",
                    format!(
                        "must match the audience's category `{}` or be left out",
                        implied.as_str()
                    ),
                ));
            }
            (audience, Some(_)) if audience.is_fcm_fan_out() => {
                violations.push(FieldViolation::new(
                    "category",
                    "cannot be applied to an FCM topic or condition: subscribing to the topic is the opt-in",
                ));
            }
            _ => {}
        }
        if let Some(ttl) = self.ttl_seconds
            && !(1..=MAX_TTL_SECONDS).contains(&ttl)
        {
            violations.push(FieldViolation::new(
                "ttl_seconds",
                format!("must be between 1 and {MAX_TTL_SECONDS}"),
            ));
        }
        if let Some(key) = &self.collapse_key
            && (key.is_empty()
                || key.len() > MAX_COLLAPSE_KEY_BYTES
                || !key.bytes().all(|b| b.is_ascii_graphic()))
        {
            violations.push(FieldViolation::new(
                "collapse_key",
                format!("must be 1 to {MAX_COLLAPSE_KEY_BYTES} printable ASCII characters"),
            ));
        }
        if let Some(at) = self.send_at
            && at > now + chrono::Duration::days(MAX_SCHEDULE_AHEAD_DAYS)
        {
            violations.push(FieldViolation::new(
                "send_at",
                format!("must be at most {MAX_SCHEDULE_AHEAD_DAYS} days ahead"),
            ));
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(RequestError::Invalid(violations))
        }
    }

    /// The request in the one form that means what it says: the category a `category`
    /// audience implies is named, a customer list is sorted without repeats, and `send_at` is
    /// rounded up to the second (JetStream's scheduler fires on whole seconds, and never early).
    /// Two requests that mean the same are equal once normalized, and only then.
    pub fn normalized(mut self) -> Self {
        self.category = self.category.or(self.audience.category());
        if let Audience::Customers { customer_ids } = &mut self.audience {
            customer_ids.sort_unstable();
            customer_ids.dedup();
        }
        self.send_at = self.send_at.map(|at| {
            let whole = at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0);
            DateTime::from_timestamp(whole, 0).unwrap_or(at)
        });
        self
    }

    /// SHA-256 of the normalized request's JSON, hex: what an idempotency key is bound to.
    /// Every field takes part, so a field added later is compared without anyone listing it.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_vec(&self.clone().normalized())
            .expect("a send request serializes to JSON");
        let digest = sha2::Sha256::digest(&json);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The command for this (normalized) request, accepted at `accepted_at`.
    pub fn into_command(
        self,
        notification_id: NotificationId,
        idempotency_key: Option<String>,
        requested_by: Actor,
        accepted_at: DateTime<Utc>,
    ) -> SendNotification {
        let SendRequest {
            priority,
            audience,
            content,
            category,
            ttl_seconds,
            collapse_key,
            send_at,
        } = self.normalized();
        let starts_at = send_at.map_or(accepted_at, |at| at.max(accepted_at));
        SendNotification {
            notification_id,
            priority,
            audience,
            content,
            category,
            idempotency_key,
            delivery: DeliveryOptions {
                expires_at: ttl_seconds
                    .map(|ttl| starts_at + chrono::Duration::seconds(i64::from(ttl))),
                collapse_key,
                send_at,
            },
            requested_by,
            accepted_at,
        }
    }

    /// The request a stored notification was accepted from (the inverse of
    /// [`SendRequest::into_command`] on a normalized request): the TTL is the time from its
    /// start to its expiry, both stored exactly.
    pub fn recovered(
        priority: Priority,
        audience: Audience,
        content: Content,
        category: Option<Category>,
        delivery: DeliveryOptions,
        accepted_at: DateTime<Utc>,
    ) -> Self {
        let DeliveryOptions {
            expires_at,
            collapse_key,
            send_at,
        } = delivery;
        let starts_at = send_at.map_or(accepted_at, |at| at.max(accepted_at));
        Self {
            priority,
            audience,
            content,
            category,
            ttl_seconds: expires_at
                .map(|at| u32::try_from((at - starts_at).num_seconds()).unwrap_or(u32::MAX)),
            collapse_key,
            send_at,
        }
    }
}

impl SendNotification {
    /// The request this command was accepted from.
    pub fn request(&self) -> SendRequest {
        SendRequest::recovered(
            self.priority,
            self.audience.clone(),
            self.content.clone(),
            self.category,
            self.delivery.clone(),
            self.accepted_at,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CustomerId, DeviceId};

    fn base() -> SendRequest {
        serde_json::from_value(serde_json::json!({
            "priority": "normal",
            "audience": {"kind": "customers", "customer_ids": ["c2", "c1", "c2"]},
            "content": {"title": "t", "body": "b", "data": {"k": "v"}},
            "ttl_seconds": 600,
            "collapse_key": "ck",
            "send_at": "2030-01-01T10:00:00.250Z"
        }))
        .unwrap()
    }

    /// One request per field, each differing from [`base`] in that field alone.
    fn each_field_changed() -> Vec<(&'static str, SendRequest)> {
        let b = base();
        let mut data = b.content.clone();
        data.data.insert("k".into(), "w".into());
        vec![
            (
                "priority",
                SendRequest {
                    priority: Priority::Urgent,
                    ..b.clone()
                },
            ),
            (
                "audience",
                SendRequest {
                    audience: Audience::Device {
                        customer_id: Some(CustomerId::parse("c1").unwrap()),
                        device_id: DeviceId::parse("d").unwrap(),
                    },
                    ..b.clone()
                },
            ),
            (
                "content",
                SendRequest {
                    content: Content {
                        title: "other".into(),
                        ..b.content.clone()
                    },
                    ..b.clone()
                },
            ),
            (
                "data",
                SendRequest {
                    content: data,
                    ..b.clone()
                },
            ),
            (
                "category",
                SendRequest {
                    category: Some(Category::Billing),
                    ..b.clone()
                },
            ),
            (
                "ttl_seconds",
                SendRequest {
                    ttl_seconds: Some(601),
                    ..b.clone()
                },
            ),
            (
                "collapse_key",
                SendRequest {
                    collapse_key: None,
                    ..b.clone()
                },
            ),
            ("send_at", SendRequest { send_at: None, ..b }),
        ]
    }

    #[test]
    fn a_stored_command_gives_back_the_normalized_request_it_came_from() {
        for (_, request) in std::iter::once(("base", base())).chain(each_field_changed()) {
            for accepted_at in ["2029-12-31T09:00:00.123456Z", "2030-02-01T00:00:00.5Z"] {
                let command = request.clone().into_command(
                    NotificationId::generate(),
                    Some("k".into()),
                    Actor::system("test"),
                    accepted_at.parse().unwrap(),
                );
                assert_eq!(command.request(), request.clone().normalized());
            }
        }
    }

    #[test]
    fn requests_that_mean_the_same_have_one_fingerprint_and_any_change_gives_another() {
        let mut same = base();
        same.send_at = Some("2030-01-01T10:00:01Z".parse().unwrap());
        if let Audience::Customers { customer_ids } = &mut same.audience {
            customer_ids.reverse();
        }
        assert_eq!(base().fingerprint(), same.fingerprint());
        for (field, changed) in each_field_changed() {
            assert_ne!(base().fingerprint(), changed.fingerprint(), "{field}");
        }
    }
}

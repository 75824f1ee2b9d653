//! Identifiers. Customer and device ids appear inside NATS subjects, so they are restricted to
//! characters that are safe in a subject token.

use std::{borrow::Cow, fmt};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} `{value}`: {reason}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
    pub reason: &'static str,
}

const TOKEN_PATTERN: &str = "^[A-Za-z0-9_-]{1,128}$";

fn subject_token(kind: &'static str, value: String) -> Result<String, InvalidId> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > 128 {
        Some("must be at most 128 characters")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Some("may contain only letters, digits, `_` and `-`")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(InvalidId {
            kind,
            value,
            reason,
        }),
        None => Ok(value),
    }
}

/// The OpenAPI schema of a subject-safe id (the same rule as its JSON Schema).
fn subject_token_schema(kind: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(TOKEN_PATTERN))
        .description(Some(kind))
        .into()
}

/// Declares a string identifier that is valid by construction.
macro_rules! subject_safe_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        // Serialized as its string, a newtype (`into = "String"` copied it for every write).
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidId> {
                subject_token($kind, value.into()).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(value: String) -> Result<Self, InvalidId> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "pattern": TOKEN_PATTERN, "description": $kind })
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                subject_token_schema($kind)
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

subject_safe_id!(
    /// A customer of the utility (the `sub` of a customer's token).
    CustomerId,
    "customer id"
);
subject_safe_id!(
    /// One installation of the app on one phone, chosen by the app and stable across token refreshes.
    DeviceId,
    "device id"
);

/// An FCM registration token. Opaque; FCM tokens are ~150–250 characters of URL-safe text.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct FcmToken(String);

impl FcmToken {
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidId> {
        let value = value.into();
        let reason = if value.is_empty() {
            Some("must not be empty")
        } else if value.len() > 4096 {
            Some("must be at most 4096 characters")
        } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
            Some("must be printable ASCII without spaces")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidId {
                kind: "FCM token",
                value,
                reason,
            }),
            None => Ok(Self(value)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Tokens are credentials of a sort: debug output shows only a prefix.
impl fmt::Debug for FcmToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.0.chars().take(8).collect();
        write!(f, "FcmToken({shown}…)")
    }
}

impl TryFrom<String> for FcmToken {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, InvalidId> {
        Self::parse(value)
    }
}

impl From<FcmToken> for String {
    fn from(t: FcmToken) -> String {
        t.0
    }
}

impl utoipa::PartialSchema for FcmToken {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(4096))
            .pattern(Some("^[!-~]+$"))
            .description(Some("An FCM registration token"))
            .into()
    }
}

impl utoipa::ToSchema for FcmToken {}

impl JsonSchema for FcmToken {
    fn schema_name() -> Cow<'static, str> {
        "FcmToken".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^[!-~]+$" })
    }
}

/// Identifies one notification across its whole life. UUIDv7, so ids sort by acceptance time.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct NotificationId(pub Uuid);

/// The UUIDv5 of `name` in `namespace`, as `Uuid::new_v5` derives it, through the `sha1` crate:
/// it hashes with the processor's SHA instructions where there are some, where `uuid` hashes
/// in portable code. Ids are derived for every source row and every outcome event, and that
/// hash was 7 % of building a notification from a row.
pub fn derived_uuid(namespace: &Uuid, name: &[u8]) -> Uuid {
    use sha1::{Digest, Sha1};
    let digest = Sha1::new()
        .chain_update(namespace.as_bytes())
        .chain_update(name)
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// Namespace for ids derived from idempotency keys (UUIDv5).
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6d1f_4a6e_8b57_4c1e_9a43_51c1_5e0a_b1a7);

impl NotificationId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id a retried request gets: the same caller with the same key always names the same
    /// notification, so a retry after a lost response cannot create a second one.
    pub fn from_idempotency_key(caller: &str, key: &str) -> Self {
        let mut name = Vec::with_capacity(caller.len() + key.len() + 1);
        name.extend_from_slice(caller.as_bytes());
        name.push(0);
        name.extend_from_slice(key.as_bytes());
        Self(derived_uuid(&IDEMPOTENCY_NAMESPACE, &name))
    }
}

impl fmt::Display for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uuids_are_uuid_v5s() {
        // Every length around SHA-1's 64-byte blocks and their padding, and non-ASCII bytes.
        for len in 0..=200 {
            let name: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            for namespace in [IDEMPOTENCY_NAMESPACE, Uuid::NAMESPACE_DNS] {
                assert_eq!(
                    derived_uuid(&namespace, &name),
                    Uuid::new_v5(&namespace, &name),
                    "length {len}"
                );
            }
        }
    }

    #[test]
    fn ids_reject_characters_that_would_break_a_subject() {
        assert!(CustomerId::parse("c-42_x").is_ok());
        for bad in ["", "a.b", "a*", "a>", "a b", &"x".repeat(129)] {
            let err = CustomerId::parse(bad).unwrap_err();
            assert_eq!(err.kind, "customer id");
        }
        let err = serde_json::from_str::<DeviceId>("\"a.b\"").unwrap_err();
        assert!(err.to_string().contains("invalid device id"), "{err}");
    }

    #[test]
    fn the_same_idempotency_key_names_the_same_notification() {
        let a = NotificationId::from_idempotency_key("billing", "k1");
        assert_eq!(a, NotificationId::from_idempotency_key("billing", "k1"));
        assert_ne!(a, NotificationId::from_idempotency_key("billing", "k2"));
        assert_ne!(a, NotificationId::from_idempotency_key("crm", "k1"));
    }

    #[test]
    fn tokens_do_not_leak_into_debug_output() {
        let t = FcmToken::parse("abcdefghijklmnopqrstuvwxyz").unwrap();
        assert_eq!(format!("{t:?}"), "FcmToken(abcdefgh…)");
        assert!(FcmToken::parse("has space").is_err());
    }
}

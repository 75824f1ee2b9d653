//! FCM's errors, classified as FCM documents them: branch on `details[].errorCode`, not on the
//! HTTP status alone.

use std::time::Duration;

use serde::Deserialize;

/// `google.firebase.fcm.v1.FcmError.errorCode`, plus the statuses that come without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FcmErrorCode {
    Unregistered,
    SenderIdMismatch,
    InvalidArgument,
    QuotaExceeded,
    Unavailable,
    Internal,
    ThirdPartyAuthError,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    Unspecified,
}

impl FcmErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unregistered => "UNREGISTERED",
            Self::SenderIdMismatch => "SENDER_ID_MISMATCH",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::QuotaExceeded => "QUOTA_EXCEEDED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
            Self::ThirdPartyAuthError => "THIRD_PARTY_AUTH_ERROR",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::NotFound => "NOT_FOUND",
            Self::Unspecified => "UNSPECIFIED_ERROR",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::Unregistered,
            Self::SenderIdMismatch,
            Self::InvalidArgument,
            Self::QuotaExceeded,
            Self::Unavailable,
            Self::Internal,
            Self::ThirdPartyAuthError,
            Self::Unauthenticated,
            Self::PermissionDenied,
            Self::NotFound,
            Self::Unspecified,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// An answer from FCM other than success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FCM answered {status} {}: {message}", code.as_str())]
pub struct FcmError {
    pub status: u16,
    pub code: FcmErrorCode,
    pub message: String,
    /// The `Retry-After` header, on 429 and 5xx answers.
    pub retry_after: Option<Duration>,
    /// A `google.rpc.BadRequest` field violation named `message.token`.
    pub token_field_invalid: bool,
}

#[derive(Deserialize)]
struct Body {
    error: Status,
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

impl FcmError {
    pub(crate) fn from_response(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Self {
        let parsed: Option<Body> = serde_json::from_slice(body).ok();
        let (mut code, message, mut token_field_invalid) = (None, None, false);
        let mut message = message;
        if let Some(Body { error }) = parsed {
            for detail in &error.details {
                let kind = detail.get("@type").and_then(|t| t.as_str()).unwrap_or("");
                if kind.ends_with("google.firebase.fcm.v1.FcmError") {
                    code = detail
                        .get("errorCode")
                        .and_then(|c| c.as_str())
                        .and_then(FcmErrorCode::parse);
                } else if kind.ends_with("google.rpc.BadRequest") {
                    token_field_invalid |= detail
                        .get("fieldViolations")
                        .and_then(|v| v.as_array())
                        .is_some_and(|v| {
                            v.iter().any(|f| {
                                f.get("field").and_then(|f| f.as_str()) == Some("message.token")
                            })
                        });
                }
            }
            code = code.or_else(|| FcmErrorCode::parse(&error.status));
            message = Some(error.message);
        }
        let code = code.unwrap_or(match status {
            400 => FcmErrorCode::InvalidArgument,
            401 => FcmErrorCode::Unauthenticated,
            403 => FcmErrorCode::PermissionDenied,
            404 => FcmErrorCode::NotFound,
            429 => FcmErrorCode::QuotaExceeded,
            503 => FcmErrorCode::Unavailable,
            500..=599 => FcmErrorCode::Internal,
            _ => FcmErrorCode::Unspecified,
        });
        let message =
            message.unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
        if code == FcmErrorCode::InvalidArgument && message.contains("registration token") {
            token_field_invalid = true;
        }
        Self {
            status,
            code,
            message,
            retry_after,
            token_field_invalid,
        }
    }

    /// The token is dead: drop it and never retry (UNREGISTERED, SENDER_ID_MISMATCH, or an
    /// INVALID_ARGUMENT about the token).
    pub fn token_is_invalid(&self) -> bool {
        matches!(
            self.code,
            FcmErrorCode::Unregistered | FcmErrorCode::SenderIdMismatch
        ) || (self.code == FcmErrorCode::InvalidArgument && self.token_field_invalid)
    }

    /// Worth trying again later with backoff (429, 500, 503).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code,
            FcmErrorCode::QuotaExceeded | FcmErrorCode::Unavailable | FcmErrorCode::Internal
        )
    }

    /// The project's credentials are wrong; sending more will not help until an operator acts.
    pub fn is_credential_failure(&self) -> bool {
        matches!(
            self.code,
            FcmErrorCode::ThirdPartyAuthError
                | FcmErrorCode::Unauthenticated
                | FcmErrorCode::PermissionDenied
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_come_from_the_fcm_details_not_the_status() {
        let body = br#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND",
            "details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        let e = FcmError::from_response(404, None, body);
        assert_eq!(e.code, FcmErrorCode::Unregistered);
        assert!(e.token_is_invalid() && !e.is_retryable());
    }

    #[test]
    fn a_bad_token_argument_is_an_invalid_token_but_a_bad_payload_is_not() {
        let token = br#"{"error":{"code":400,"message":"The registration token is not a valid FCM registration token","status":"INVALID_ARGUMENT",
            "details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"INVALID_ARGUMENT"},
                       {"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"message.token","description":"Invalid registration token"}]}]}}"#;
        assert!(FcmError::from_response(400, None, token).token_is_invalid());
        let payload = br#"{"error":{"code":400,"message":"Invalid JSON payload received.","status":"INVALID_ARGUMENT"}}"#;
        let e = FcmError::from_response(400, None, payload);
        assert_eq!(e.code, FcmErrorCode::InvalidArgument);
        assert!(!e.token_is_invalid());
    }

    #[test]
    fn unparseable_bodies_fall_back_to_the_status() {
        let e = FcmError::from_response(503, Some(Duration::from_secs(7)), b"<html>busy</html>");
        assert_eq!(e.code, FcmErrorCode::Unavailable);
        assert!(e.is_retryable());
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    }
}

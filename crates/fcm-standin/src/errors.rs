//! FCM's error answers, byte for byte in shape: a `google.rpc.Status` with an `FcmError` detail.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The error classes a test can script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScriptedError {
    Unregistered,
    SenderIdMismatch,
    /// INVALID_ARGUMENT about the registration token.
    InvalidToken,
    /// INVALID_ARGUMENT about the payload.
    InvalidArgument,
    QuotaExceeded,
    Unavailable,
    Internal,
    ThirdPartyAuthError,
    /// A plain 401 (expired or revoked access token).
    Unauthenticated,
}

const FCM_ERROR: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";

fn status(code: StatusCode, status: &str, message: &str, details: serde_json::Value) -> Response {
    let body = json!({ "error": {
        "code": code.as_u16(), "message": message, "status": status, "details": details,
    }});
    (code, Json(body)).into_response()
}

fn fcm_detail(error_code: &str) -> serde_json::Value {
    json!([{ "@type": FCM_ERROR, "errorCode": error_code }])
}

pub(crate) fn invalid_argument(message: &str) -> Response {
    status(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        message,
        fcm_detail("INVALID_ARGUMENT"),
    )
}

pub(crate) fn unauthenticated() -> Response {
    status(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        json!([]),
    )
}

pub(crate) fn permission_denied(project: &str) -> Response {
    status(
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        &format!(
            "Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist)."
        ),
        json!([]),
    )
}

pub(crate) fn scripted(error: ScriptedError, retry_after: Option<u64>) -> Response {
    let mut response = match error {
        ScriptedError::Unregistered => status(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Requested entity was not found.",
            fcm_detail("UNREGISTERED"),
        ),
        ScriptedError::SenderIdMismatch => status(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "SenderId mismatch",
            fcm_detail("SENDER_ID_MISMATCH"),
        ),
        ScriptedError::InvalidToken => status(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
            json!([
                { "@type": FCM_ERROR, "errorCode": "INVALID_ARGUMENT" },
                { "@type": "type.googleapis.com/google.rpc.BadRequest",
                  "fieldViolations": [{ "field": "message.token", "description": "Invalid registration token" }] }
            ]),
        ),
        ScriptedError::InvalidArgument => invalid_argument("Request contains an invalid argument."),
        ScriptedError::QuotaExceeded => status(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute'.",
            fcm_detail("QUOTA_EXCEEDED"),
        ),
        ScriptedError::Unavailable => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            fcm_detail("UNAVAILABLE"),
        ),
        ScriptedError::Internal => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "Internal error encountered.",
            fcm_detail("INTERNAL"),
        ),
        ScriptedError::ThirdPartyAuthError => status(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Auth error from APNS or Web Push Service",
            fcm_detail("THIRD_PARTY_AUTH_ERROR"),
        ),
        ScriptedError::Unauthenticated => unauthenticated(),
    };
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

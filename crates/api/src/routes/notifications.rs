//! `POST /v1/notifications` and `GET /v1/notifications/{id}`.

use async_nats::jetstream::stream::DirectGetErrorKind;
use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use xibaar_core::{
    Audience, Command, Content, ContentError, DeliveryOptions, NotificationId, Priority,
    SendNotification,
    notification::{FieldViolation, MAX_COLLAPSE_KEY_BYTES, MAX_TTL_SECONDS},
    subject,
};

use crate::{
    AppState,
    auth::{Caller, scopes},
    extract::ApiJson,
    problem::ApiError,
    routes::read_failed,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub priority: Priority,
    pub audience: Audience,
    pub content: Content,
    /// Drop the push if it cannot be delivered within this many seconds (at most 28 days).
    #[serde(default)]
    pub ttl_seconds: Option<u32>,
    /// Pushes with the same key replace each other on the device.
    #[serde(default)]
    pub collapse_key: Option<String>,
}

/// Client-chosen key: a retry with the same key names the same notification.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::BadRequest(
                "Idempotency-Key must be 1 to 255 printable ASCII characters".into(),
            )
        })?;
    Ok(Some(key.to_owned()))
}

#[tracing::instrument(skip_all, fields(caller = %caller.subject))]
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(request): ApiJson<SendRequest>,
) -> Result<Response, ApiError> {
    caller.require(scopes::SEND)?;
    let key = idempotency_key(&headers)?;
    let mut violations = request.audience.validate().err().unwrap_or_default();
    match request.content.validate() {
        Ok(()) => {}
        Err(ContentError::Invalid(v)) => violations.extend(v),
        Err(e @ ContentError::TooLarge { .. }) => {
            return Err(ApiError::PayloadTooLarge(e.to_string()));
        }
    }
    if let Some(ttl) = request.ttl_seconds
        && !(1..=MAX_TTL_SECONDS).contains(&ttl)
    {
        violations.push(FieldViolation::new(
            "ttl_seconds",
            format!("must be between 1 and {MAX_TTL_SECONDS}"),
        ));
    }
    if let Some(key) = &request.collapse_key
        && (key.is_empty()
            || key.len() > MAX_COLLAPSE_KEY_BYTES
            || !key.bytes().all(|b| b.is_ascii_graphic()))
    {
        violations.push(FieldViolation::new(
            "collapse_key",
            format!("must be 1 to {MAX_COLLAPSE_KEY_BYTES} printable ASCII characters"),
        ));
    }
    if !violations.is_empty() {
        return Err(ApiError::Validation(violations));
    }
    let accepted_at = chrono::Utc::now();
    let notification_id = match &key {
        Some(k) => NotificationId::from_idempotency_key(&caller.subject, k),
        None => NotificationId::generate(),
    };
    let command = Command::SendNotification(SendNotification {
        notification_id,
        priority: request.priority,
        audience: request.audience,
        content: request.content,
        idempotency_key: key,
        delivery: DeliveryOptions {
            expires_at: request
                .ttl_seconds
                .map(|ttl| accepted_at + chrono::Duration::seconds(i64::from(ttl))),
            collapse_key: request.collapse_key,
        },
        requested_by: caller.actor(),
        accepted_at,
    });
    let payload = serde_json::to_vec(&command).map_err(|e| ApiError::Unexpected(e.into()))?;
    let msg_headers = xibaar_streams::headers(&command.msg_id(), "send_notification", None);
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "storing a command failed");
        ApiError::Unavailable(
            "the notification could not be stored and was not accepted; retry with the same Idempotency-Key".into(),
        )
    };
    let publish = async {
        state
            .js
            .publish_with_headers(command.subject(), msg_headers, Bytes::from(payload))
            .await
            .map_err(|e| unavailable(&e))?
            .await
            .map_err(|e| unavailable(&e))
    };
    let ack = tokio::time::timeout(state.publish_timeout, publish)
        .await
        .map_err(|_| unavailable(&"timed out waiting for JetStream"))??;
    if ack.duplicate {
        let Command::SendNotification(sent) = &command;
        match stored_command(&state, sent.priority, notification_id).await {
            Ok(Some(stored))
                if stored.audience != sent.audience
                    || stored.content != sent.content
                    || stored.delivery.collapse_key != sent.delivery.collapse_key =>
            {
                return Err(ApiError::validation(
                    "Idempotency-Key",
                    "was already used for a different notification; use a new key",
                ));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot compare a replayed request with the stored one")
            }
        }
    }
    metrics::counter!("xibaar_api_notifications_accepted_total", "priority" => request.priority.as_str(),
        "replayed" => if ack.duplicate { "true" } else { "false" })
    .increment(1);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({ "notification_id": notification_id, "status": "accepted" })),
    )
        .into_response();
    let location = format!("/v1/notifications/{notification_id}");
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    if ack.duplicate {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The command as JetStream stored it, read back by its subject.
async fn stored_command(
    state: &AppState,
    priority: Priority,
    id: NotificationId,
) -> anyhow::Result<Option<SendNotification>> {
    let stream = state
        .js
        .get_stream_no_info(priority.command_stream())
        .await?;
    match stream
        .direct_get_last_for_subject(subject::command(priority, id))
        .await
    {
        Ok(message) => match serde_json::from_slice(&message.payload)? {
            Command::SendNotification(s) => Ok(Some(s)),
        },
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<xibaar_store::NotificationStatus>, ApiError> {
    if caller.require(scopes::READ).is_err() {
        caller.require(scopes::SEND)?;
    }
    let not_found = || ApiError::NotFound(format!("no notification {id}"));
    let id = NotificationId(uuid::Uuid::parse_str(&id).map_err(|_| not_found())?);
    if let Some(status) = xibaar_store::notification_status(&state.pool, id)
        .await
        .map_err(read_failed)?
    {
        return Ok(Json(status));
    }
    // Accepted but not yet projected: the command stream knows it.
    for priority in Priority::ALL {
        match stored_command(&state, priority, id).await {
            Ok(Some(command)) => return Ok(Json(queued(&command))),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, %priority, "reading a command stream failed"),
        }
    }
    Err(not_found())
}

fn queued(command: &SendNotification) -> xibaar_store::NotificationStatus {
    xibaar_store::NotificationStatus {
        notification_id: command.notification_id.0,
        priority: command.priority.as_str().to_owned(),
        title: command.content.title.clone(),
        requested_by: command.requested_by.to_string(),
        status: "queued".to_owned(),
        targeted: None,
        sent: 0,
        failed: 0,
        invalid: 0,
        expired: 0,
        accepted_at: command.accepted_at,
        fanned_out_at: None,
        completed_at: None,
    }
}

//! `POST /v1/notifications` and `GET /v1/notifications/{id}`.

use axum::{
    Json,
    extract::{FromRequestParts, Path, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use xibaar_core::{
    Event, EventEnvelope, NotificationId, Priority, SendNotification, SendRequest,
    event::NotificationCanceled, subject,
};

use crate::{
    AppState,
    accept::{AcceptError, Requester, Stored, accept_notification, stored_command},
    auth::{Caller, scopes},
    extract::ApiJson,
    problem::ApiError,
    routes::read_failed,
};
use xibaar_streams::fanout::FanOutState;

#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SendStatus {
    /// Stored; the dispatcher sends it now.
    Accepted,
    /// Stored; fanned out at `send_at`.
    Scheduled,
}

/// A notification stored for sending.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SendAccepted {
    pub notification_id: NotificationId,
    pub status: SendStatus,
    /// When a scheduled notification goes out (rounded up to the second).
    pub send_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelStatus {
    Canceled,
}

/// A withdrawn notification: nothing of it is sent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Canceled {
    pub notification_id: NotificationId,
    pub status: CancelStatus,
}

/// A notification's events from the log, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Timeline {
    pub notification_id: NotificationId,
    /// Event envelopes exactly as stored (`schemas/events/`), in log order.
    #[schema(value_type = Vec<LoggedEvent>)]
    pub events: Vec<serde_json::Value>,
}

/// One event as the log stores it: the envelope of `schemas/events/`, whose `data` has the
/// shape its `type` and `version` name. Describes the stored JSON, which the timeline passes on
/// untouched, so it is never built.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct LoggedEvent {
    pub id: uuid::Uuid,
    /// `notification.accepted`, `delivery.succeeded`, … (the catalog of `schemas/events/`).
    #[schema(rename = "type", example = "delivery.succeeded")]
    pub event_type: String,
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub actor: LoggedActor,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// Who caused an event.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct LoggedActor {
    /// `customer`, `client` or `system`.
    pub kind: String,
    pub id: String,
}

/// The `Idempotency-Key` header as sent, checked by [`idempotency_key`] once the caller's scope
/// is: only this header is taken from the request, not a copy of them all.
pub struct IdempotencyHeader(Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyHeader {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get("idempotency-key").cloned()))
    }
}

/// Client-chosen key: a retry with the same key names the same notification.
fn idempotency_key(header: IdempotencyHeader) -> Result<Option<String>, ApiError> {
    let Some(value) = header.0 else {
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

/// Accepts a notification for sending (scope `notifications:send`).
///
/// A retry with the same `Idempotency-Key` names the same notification and sends nothing twice.
#[utoipa::path(post, path = "/v1/notifications", operation_id = "sendNotification", tag = "back-office", request_body = SendRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters; a retry with the same key is answered with the same notification")),
    responses(
        (status = 202, description = "Stored; `Location` names its status", body = SendAccepted,
            headers(("Location" = String, description = "The notification's status URL"),
                    ("Idempotent-Replayed" = String, description = "`true` when the key named an earlier request"))),
    ),
    security(("bearer" = ["notifications:send"])))]
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyHeader,
    ApiJson(request): ApiJson<SendRequest>,
) -> Result<Response, ApiError> {
    caller.require(scopes::SEND)?;
    let requester = Requester {
        subject: caller.subject.clone(),
        actor: caller.actor(),
        idempotency_key: idempotency_key(key)?,
    };
    let accepted = accept_notification(state.commands(), requester, request)
        .await
        .map_err(|e| match e {
            AcceptError::Invalid(v) => ApiError::Validation(v),
            AcceptError::TooLarge(m) => ApiError::PayloadTooLarge(m),
            e @ AcceptError::KeyReused => ApiError::validation("Idempotency-Key", e.to_string()),
            AcceptError::Unavailable(m) => ApiError::Unavailable(m),
        })?;
    let id = accepted.notification_id;
    let mut response = (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/notifications/{id}"))],
        Json(SendAccepted {
            notification_id: id,
            status: match accepted.scheduled_for {
                Some(_) => SendStatus::Scheduled,
                None => SendStatus::Accepted,
            },
            send_at: accepted.scheduled_for,
        }),
    )
        .into_response();
    if accepted.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A notification's status and per-outcome counts.
///
/// Needs the scope `notifications:read` or `notifications:send`.
#[utoipa::path(get, path = "/v1/notifications/{id}", operation_id = "getNotificationStatus", tag = "back-office",
    params(("id" = uuid::Uuid, Path, description = "The notification id")),
    responses(
        (status = 200, description = "Where the notification is", body = xibaar_store::NotificationStatus),
        (status = 404, description = "No such notification", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["notifications:read"]), ("bearer" = ["notifications:send"])))]
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
        match stored_command(&state.js, priority, id).await {
            Ok(Some((command, where_))) => return Ok(Json(queued(&command, where_))),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, %priority, "reading a command stream failed"),
        }
    }
    Err(not_found())
}

/// Withdraws a scheduled or still-queued notification (scope `notifications:send`).
///
/// The api and the fan-out both create `XIBAAR_FANOUT/<id>` only if it is absent: whichever comes
/// first wins, so a notification is either canceled (nothing of it is sent) or already going
/// out (409). A scheduled one is also removed from the scheduler.
#[utoipa::path(delete, path = "/v1/notifications/{id}", operation_id = "cancelNotification", tag = "back-office",
    params(("id" = uuid::Uuid, Path, description = "The notification id")),
    responses(
        (status = 200, description = "Canceled (also when it already was)", body = Canceled),
        (status = 404, description = "No such notification", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Already being delivered", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["notifications:send"])))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Canceled>, ApiError> {
    caller.require(scopes::SEND)?;
    let not_found = || ApiError::NotFound(format!("no notification {id}"));
    let id = NotificationId(uuid::Uuid::parse_str(&id).map_err(|_| not_found())?);
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "canceling a notification failed");
        ApiError::Unavailable("the cancellation could not be stored; retry".into())
    };
    let too_late = || {
        ApiError::Conflict(format!(
            "notification {id} is already being delivered; it can no longer be canceled"
        ))
    };
    let canceled = || {
        Json(Canceled {
            notification_id: id,
            status: CancelStatus::Canceled,
        })
    };
    let mut found = None;
    for priority in Priority::ALL {
        if let Some(stored) = stored_command(&state.js, priority, id)
            .await
            .map_err(|e| unavailable(&*e))?
        {
            found = Some(stored);
            break;
        }
    }
    let progress = state
        .js
        .get_key_value(xibaar_streams::names::FANOUT_BUCKET)
        .await
        .map_err(|e| unavailable(&e))?;
    let key = id.to_string();
    let existing = progress
        .get(key.as_str())
        .await
        .map_err(|e| unavailable(&e))?
        .and_then(|v| FanOutState::decode(&v));
    match existing {
        Some(FanOutState::Canceled { .. }) => return Ok(canceled()),
        Some(FanOutState::Progress(_)) => return Err(too_late()),
        None => {}
    }
    let Some((command, stored)) = found else {
        // Fanned out and acknowledged long ago, or never accepted.
        return match xibaar_store::notification_status(&state.pool, id).await {
            Ok(Some(_)) => Err(too_late()),
            _ => Err(not_found()),
        };
    };
    let now = Utc::now();
    let record = FanOutState::Canceled {
        canceled_at: now,
        by: caller.actor().to_string(),
    };
    match progress.create(key.as_str(), record.encode()).await {
        Ok(_) => {}
        Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
            let now_there = progress
                .get(key.as_str())
                .await
                .map_err(|e| unavailable(&e))?
                .and_then(|v| FanOutState::decode(&v));
            return match now_there {
                Some(FanOutState::Canceled { .. }) => Ok(canceled()),
                _ => Err(too_late()),
            };
        }
        Err(e) => return Err(unavailable(&e)),
    }
    let stream = state
        .js
        .get_stream_no_info(command.priority.command_stream())
        .await
        .map_err(|e| unavailable(&e))?;
    if matches!(stored, Stored::Scheduled) {
        // Removed from the scheduler; had it fired meanwhile, the fan-out finds the record.
        stream
            .purge()
            .filter(subject::schedule(command.priority, id))
            .await
            .map_err(|e| unavailable(&e))?;
    } else {
        // The queued command goes too, so the cancellation does not depend on the record
        // outliving the fan-out bucket's three days. A dispatcher holding it already finds the
        // record.
        stream
            .purge()
            .filter(subject::command(command.priority, id))
            .await
            .map_err(|e| unavailable(&e))?;
    }
    let event = EventEnvelope::new(
        Event::NotificationCanceled(NotificationCanceled {
            notification_id: id,
            priority: command.priority,
            audience: command.audience,
            content: command.content,
            category: command.category,
            delivery: command.delivery,
            requested_by: command.requested_by,
            accepted_at: command.accepted_at,
            canceled_at: now,
        }),
        id.to_string(),
        None,
        caller.actor(),
    );
    crate::routes::store_event(&state, &event, "cancellation").await?;
    Ok(canceled())
}

/// The notification's events from the log (scope `audit:read`).
///
/// The same timeline as `xibaar audit notification` prints.
#[utoipa::path(get, path = "/v1/notifications/{id}/timeline", operation_id = "getNotificationTimeline", tag = "audit",
    params(("id" = uuid::Uuid, Path, description = "The notification id")),
    responses(
        (status = 200, description = "Accepted → fan-out → each attempt → outcome", body = Timeline),
        (status = 404, description = "The log holds no event of this notification", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["audit:read"])))]
pub async fn timeline(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Timeline>, ApiError> {
    caller.require(scopes::AUDIT)?;
    let not_found = || ApiError::NotFound(format!("no events of notification {id}"));
    let id = NotificationId(uuid::Uuid::parse_str(&id).map_err(|_| not_found())?);
    let events =
        xibaar_archive::replay::notification_timeline(&state.js, state.archive.as_ref(), id)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "reading a timeline failed");
                ApiError::Unavailable("the event log is unavailable; try again shortly".into())
            })?;
    if events.is_empty() {
        return Err(not_found());
    }
    Ok(Json(Timeline {
        notification_id: id,
        events,
    }))
}

fn queued(command: &SendNotification, stored: Stored) -> xibaar_store::NotificationStatus {
    xibaar_store::NotificationStatus {
        notification_id: command.notification_id.0,
        priority: command.priority.as_str().to_owned(),
        title: command.content.title.clone(),
        requested_by: command.requested_by.to_string(),
        status: match stored {
            Stored::Scheduled => "scheduled",
            Stored::Released | Stored::Canceled => "queued",
        }
        .to_owned(),
        targeted: None,
        sent: 0,
        failed: 0,
        invalid: 0,
        expired: 0,
        accepted_at: command.accepted_at,
        send_at: command.delivery.send_at,
        fanned_out_at: None,
        completed_at: None,
    }
}

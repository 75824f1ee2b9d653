//! `POST /v1/notifications` and `GET /v1/notifications/{id}`.

use async_nats::HeaderMap as NatsHeaders;
use async_nats::jetstream::stream::DirectGetErrorKind;
use axum::{
    Json,
    extract::{FromRequestParts, Path, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use xibaar_core::{
    Actor, Audience, Category, Command, Content, ContentError, DeliveryOptions, Event,
    EventEnvelope, NotificationId, Priority, SendNotification,
    event::{NotificationCanceled, NotificationScheduled},
    notification::{
        FieldViolation, MAX_COLLAPSE_KEY_BYTES, MAX_SCHEDULE_AHEAD_DAYS, MAX_TTL_SECONDS,
    },
    subject,
};

use crate::{
    AppState,
    auth::{Caller, scopes},
    extract::ApiJson,
    problem::ApiError,
    routes::read_failed,
};
use xibaar_streams::fanout::FanOutState;

/// A notification to send.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub priority: Priority,
    pub audience: Audience,
    pub content: Content,
    /// What the notification is about (billing, outage, prepaid, marketing); customers opted
    /// out of it are skipped, except for urgent outage notices. A `category` audience implies it.
    #[serde(default)]
    pub category: Option<Category>,
    /// Drop the push if it cannot be delivered within this many seconds (at most 28 days).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 2419200)]
    pub ttl_seconds: Option<u32>,
    /// Pushes with the same key replace each other on the device.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub collapse_key: Option<String>,
    /// Send at this instant (RFC 3339) instead of now; at most 30 days ahead. The TTL counts
    /// from here. An instant in the past means now.
    #[serde(default)]
    pub send_at: Option<DateTime<Utc>>,
}

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
    /// Event envelopes as stored (`schemas/events/`), each with its stream sequence.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
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
#[utoipa::path(post, path = "/v1/notifications", tag = "notifications", request_body = SendRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 printable ASCII characters; a retry with the same key is answered with the same notification")),
    responses(
        (status = 202, description = "Stored; `Location` names its status", body = SendAccepted,
            headers(("Location" = String, description = "The notification's status URL"),
                    ("Idempotent-Replayed" = String, description = "`true` when the key named an earlier request"))),
    ),
    security(("bearer" = ["notifications:send"])))]
#[tracing::instrument(skip_all, fields(caller = %caller.subject))]
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    key: IdempotencyHeader,
    ApiJson(request): ApiJson<SendRequest>,
) -> Result<Response, ApiError> {
    caller.require(scopes::SEND)?;
    let key = idempotency_key(key)?;
    let mut violations = request.audience.validate().err().unwrap_or_default();
    match request.content.validate_for(&request.audience) {
        Ok(()) => {}
        Err(ContentError::Invalid(v)) => violations.extend(v),
        Err(e @ ContentError::TooLarge { .. }) => {
            return Err(ApiError::PayloadTooLarge(e.to_string()));
        }
    }
    let category = request.category.or(request.audience.category());
    match (&request.audience, request.category) {
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
    let accepted_at = Utc::now();
    if let Some(at) = request.send_at
        && at > accepted_at + chrono::Duration::days(MAX_SCHEDULE_AHEAD_DAYS)
    {
        violations.push(FieldViolation::new(
            "send_at",
            format!("must be at most {MAX_SCHEDULE_AHEAD_DAYS} days ahead"),
        ));
    }
    if !violations.is_empty() {
        return Err(ApiError::Validation(violations));
    }
    // JetStream's scheduler fires on whole seconds: round up, never early.
    let send_at = request.send_at.map(|at| {
        let whole = at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0);
        DateTime::from_timestamp(whole, 0).unwrap_or(at)
    });
    let starts_at = send_at.map_or(accepted_at, |at| at.max(accepted_at));
    let notification_id = match &key {
        Some(k) => NotificationId::from_idempotency_key(&caller.subject, k),
        None => NotificationId::generate(),
    };
    let command = Command::SendNotification(SendNotification {
        notification_id,
        priority: request.priority,
        audience: request.audience,
        content: request.content,
        category,
        idempotency_key: key,
        delivery: DeliveryOptions {
            expires_at: request
                .ttl_seconds
                .map(|ttl| starts_at + chrono::Duration::seconds(i64::from(ttl))),
            collapse_key: request.collapse_key,
            send_at,
        },
        requested_by: caller.actor(),
        accepted_at,
    });
    let Command::SendNotification(sent) = &command;
    let scheduled = send_at.filter(|at| *at > accepted_at);
    // A scheduled command has no `Nats-Msg-Id` to deduplicate on (the scheduler's copy would
    // inherit it), so a keyed request looks for what an earlier one stored first.
    let mut earlier = None;
    if sent.idempotency_key.is_some() && send_at.is_some() {
        earlier = stored_anywhere(&state, sent.priority, notification_id)
            .await
            .map_err(|e| unavailable(&*e))?;
    }
    let duplicate = match &earlier {
        Some(_) => true,
        None => {
            let payload = Bytes::from(
                serde_json::to_vec(&command).map_err(|e| ApiError::Unexpected(e.into()))?,
            );
            match scheduled {
                Some(at) => {
                    // No message id: the scheduler stores one schedule per notification
                    // subject. The traceparent goes with the command it fires.
                    let mut headers = NatsHeaders::new();
                    headers.insert("Xibaar-Type", "send_notification");
                    if let Some(tp) = xibaar_streams::trace::current_traceparent() {
                        headers.insert(xibaar_streams::trace::TRACEPARENT, tp.as_str());
                    }
                    headers.insert(
                        "Nats-Schedule",
                        format!(
                            "@at {}",
                            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        )
                        .as_str(),
                    );
                    headers.insert("Nats-Schedule-Target", command.subject().as_str());
                    let subject = subject::schedule(sent.priority, notification_id);
                    store(&state, subject, headers, payload).await?;
                    false
                }
                None => {
                    let headers = xibaar_streams::headers(&command.msg_id(), "send_notification");
                    store(&state, command.subject(), headers, payload).await?
                }
            }
        }
    };
    if duplicate {
        let stored = match earlier {
            Some((stored, _)) => Some(stored),
            None => stored_anywhere(&state, sent.priority, notification_id)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot compare a replayed request with the stored one");
                    None
                })
                .map(|(s, _)| s),
        };
        if let Some(stored) = stored
            && (stored.audience != sent.audience
                || stored.content != sent.content
                || stored.category != sent.category
                || stored.delivery.collapse_key != sent.delivery.collapse_key
                || stored.delivery.send_at != sent.delivery.send_at)
        {
            return Err(ApiError::validation(
                "Idempotency-Key",
                "was already used for a different notification; use a new key",
            ));
        }
    }
    if let Some(at) = scheduled {
        // Repeated on a replay: its id is fixed, so JetStream stores it once.
        let event = EventEnvelope::new(
            Event::NotificationScheduled(NotificationScheduled {
                notification_id,
                priority: sent.priority,
                audience: sent.audience.clone(),
                content: sent.content.clone(),
                category: sent.category,
                idempotency_key: sent.idempotency_key.clone(),
                delivery: sent.delivery.clone(),
                send_at: at,
                accepted_at,
            }),
            notification_id.to_string(),
            Some(command.msg_id()),
            Actor::clone(&sent.requested_by),
        );
        state
            .publisher()
            .publish_event(&event)
            .await
            .map_err(|e| unavailable(&e))?;
    }
    metrics::counter!("xibaar_api_notifications_accepted_total", "priority" => request.priority.as_str(),
        "replayed" => if duplicate { "true" } else { "false" })
    .increment(1);
    let status = if scheduled.is_some() {
        SendStatus::Scheduled
    } else {
        SendStatus::Accepted
    };
    tracing::info!(notification = %notification_id, priority = %sent.priority, ?status, replayed = duplicate, "notification accepted");
    let mut response = (
        StatusCode::ACCEPTED,
        Json(SendAccepted {
            notification_id,
            status,
            send_at: scheduled,
        }),
    )
        .into_response();
    let location = format!("/v1/notifications/{notification_id}");
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    if duplicate {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

fn unavailable(e: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "storing a command failed");
    ApiError::Unavailable(
        "the notification could not be stored and was not accepted; retry with the same Idempotency-Key".into(),
    )
}

/// Publishes and waits for JetStream to store; whether it was a duplicate of an earlier id.
async fn store(
    state: &AppState,
    subject: String,
    headers: NatsHeaders,
    payload: Bytes,
) -> Result<bool, ApiError> {
    let publish = async {
        state
            .publisher()
            .publish(subject, headers, payload)
            .await
            .map_err(|e| unavailable(&e))?
            .await
            .map_err(|e| unavailable(&e))
    };
    let ack = tokio::time::timeout(state.publish_timeout, publish)
        .await
        .map_err(|_| unavailable(&"timed out waiting for JetStream"))??;
    Ok(ack.duplicate)
}

/// Where a command is: waiting for its time, or released to the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Scheduled,
    Released,
}

/// The command as JetStream stored it, released or still scheduled.
async fn stored_anywhere(
    state: &AppState,
    priority: Priority,
    id: NotificationId,
) -> anyhow::Result<Option<(SendNotification, Stored)>> {
    if let Some(c) = stored_command(state, priority, subject::command(priority, id)).await? {
        return Ok(Some((c, Stored::Released)));
    }
    Ok(
        stored_command(state, priority, subject::schedule(priority, id))
            .await?
            .map(|c| (c, Stored::Scheduled)),
    )
}

/// The command stored under `subject`, read back directly.
async fn stored_command(
    state: &AppState,
    priority: Priority,
    subject: String,
) -> anyhow::Result<Option<SendNotification>> {
    let stream = state
        .js
        .get_stream_no_info(priority.command_stream())
        .await?;
    match stream.direct_get_last_for_subject(subject).await {
        Ok(message) => match serde_json::from_slice(&message.payload)? {
            Command::SendNotification(s) => Ok(Some(s)),
        },
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A notification's status and per-outcome counts.
///
/// Needs the scope `notifications:read` or `notifications:send`.
#[utoipa::path(get, path = "/v1/notifications/{id}", tag = "notifications",
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
        match stored_anywhere(&state, priority, id).await {
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
#[utoipa::path(delete, path = "/v1/notifications/{id}", tag = "notifications",
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
        if let Some(stored) = stored_anywhere(&state, priority, id)
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
#[utoipa::path(get, path = "/v1/notifications/{id}/timeline", tag = "audit",
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
    let events = xibaar_streams::replay::notification_timeline(&state.js, id)
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
            Stored::Released => "queued",
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

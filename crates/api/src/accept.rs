//! Accepting a notification: validation, normalization, the idempotency key, scheduling and
//! storing the command. The HTTP handler parses and maps; this is the use case, callable
//! without HTTP.
//!
//! An idempotency key is bound to one request by a claim in `XIBAAR_IDEMPOTENCY/<notification>`
//! (the notification id is derived from caller and key), created only if absent before anything
//! is stored: the priority and the SHA-256 of the normalized request. A reused key whose request
//! differs in anything is refused and stores nothing; the same request is answered as a replay.
//! The claim lives as long as the command streams keep commands, so the earlier request is
//! found whatever its priority and whatever became of it (queued, scheduled, released,
//! canceled).

use std::time::Duration;

use async_nats::HeaderMap as NatsHeaders;
use async_nats::jetstream::{self, kv, stream::DirectGetErrorKind};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use xibaar_core::{
    Actor, Command, Event, EventEnvelope, NotificationId, Priority, RequestError, SendNotification,
    SendRequest, event::NotificationScheduled, notification::FieldViolation, subject,
};
use xibaar_streams::CoalescingPublisher;

/// What accepting needs: JetStream, the api's publisher and how long a publish may wait.
#[derive(Clone, Copy)]
pub struct CommandStore<'a> {
    pub js: &'a jetstream::Context,
    pub publisher: &'a CoalescingPublisher,
    pub publish_timeout: Duration,
}

/// Who asks, and with which key.
#[derive(Debug, Clone)]
pub struct Requester {
    /// The token's subject: keys are per caller.
    pub subject: String,
    pub actor: Actor,
    pub idempotency_key: Option<String>,
}

/// A notification stored for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub notification_id: NotificationId,
    /// When it goes out, if that is later than now (rounded up to the second).
    pub scheduled_for: Option<DateTime<Utc>>,
    /// The key named an earlier request (the same one): nothing new was stored.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("the notification is invalid")]
    Invalid(Vec<FieldViolation>),
    #[error("{0}")]
    TooLarge(String),
    #[error("the Idempotency-Key was already used for a different notification; use a new key")]
    KeyReused,
    /// JetStream did not confirm in time: the command may or may not be stored. A retry with
    /// the same key is safe.
    #[error("{0}")]
    Unavailable(String),
}

impl From<RequestError> for AcceptError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Invalid(v) => AcceptError::Invalid(v),
            RequestError::TooLarge(m) => AcceptError::TooLarge(m),
        }
    }
}

/// The value under `XIBAAR_IDEMPOTENCY/<notification>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    priority: Priority,
    /// [`SendRequest::fingerprint`].
    request_sha256: String,
}

/// Where a notification's command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Waiting in the scheduler for its time.
    Scheduled,
    /// Released to the dispatcher (queued or being fanned out).
    Released,
    /// Withdrawn before any fan-out.
    Canceled,
}

/// Validates, normalizes and stores `request`: 202's whole meaning.
#[tracing::instrument(skip_all, fields(caller = %requester.subject))]
pub async fn accept_notification(
    store: CommandStore<'_>,
    requester: Requester,
    request: SendRequest,
) -> Result<Accepted, AcceptError> {
    let accepted_at = Utc::now();
    request.validate(accepted_at)?;
    let request = request.normalized();
    let notification_id = match &requester.idempotency_key {
        Some(k) => NotificationId::from_idempotency_key(&requester.subject, k),
        None => NotificationId::generate(),
    };
    if requester.idempotency_key.is_some()
        && let Some(earlier) = claim_key(store, notification_id, &request).await?
    {
        return Ok(earlier);
    }
    let command = request.into_command(
        notification_id,
        requester.idempotency_key,
        requester.actor,
        accepted_at,
    );
    let scheduled_for = command.delivery.send_at.filter(|at| *at > accepted_at);
    let duplicate = match scheduled_for {
        Some(at) => {
            schedule(store, &command, at).await?;
            false
        }
        None => release(store, &command).await?,
    };
    if duplicate {
        // Stored before claims existed (JetStream's duplicate window caught it): compare with
        // what is stored, the same way.
        if let Some((earlier, _)) = stored_command(store.js, command.priority, notification_id)
            .await
            .map_err(|e| unavailable(&*e))?
            && earlier.request() != command.request()
        {
            return Err(AcceptError::KeyReused);
        }
    }
    metrics::counter!("xibaar_api_notifications_accepted_total", "priority" => command.priority.as_str(),
        "replayed" => if duplicate { "true" } else { "false" })
    .increment(1);
    tracing::info!(notification = %notification_id, priority = %command.priority,
        scheduled = scheduled_for.is_some(), replayed = duplicate, "notification accepted");
    Ok(Accepted {
        notification_id,
        scheduled_for,
        replayed: duplicate,
    })
}

/// Binds the key to `request`. `Some` when an earlier request with the key is stored already
/// (the answer to give); `None` when this request is to be stored now (first use of the key, or
/// a retry of one whose store never happened).
async fn claim_key(
    store: CommandStore<'_>,
    id: NotificationId,
    request: &SendRequest,
) -> Result<Option<Accepted>, AcceptError> {
    let claim = Claim {
        priority: request.priority,
        request_sha256: request.fingerprint(),
    };
    let encoded = Bytes::from(serde_json::to_vec(&claim).expect("a claim serializes"));
    let key = id.to_string();
    // Retried through a leader election of the bucket, as stores are: a create whose answer
    // was lost finds its own claim on the retry, which reads as a first use below.
    let (claims, created) = xibaar_streams::retry::within(
        store.publish_timeout,
        |_: &String| true,
        || async {
            let claims = store
                .js
                .get_key_value(xibaar_streams::names::IDEMPOTENCY_BUCKET)
                .await
                .map_err(|e| e.to_string())?;
            match claims.create(key.as_str(), encoded.clone()).await {
                Ok(_) => Ok((claims, true)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok((claims, false)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
    .map_err(|e| unavailable(&e.unwrap_or_else(|| "timed out".into())))?;
    if created {
        return Ok(None);
    }
    let earlier = claims
        .get(key.as_str())
        .await
        .map_err(|e| unavailable(&e))?
        .and_then(|v| serde_json::from_slice::<Claim>(&v).ok());
    match earlier {
        Some(earlier) if earlier == claim => {}
        // An unreadable claim cannot vouch for the request either.
        _ => return Err(AcceptError::KeyReused),
    }
    match find_notification(store.js, id)
        .await
        .map_err(|e| unavailable(&*e))?
    {
        Some((_, scheduled_for)) => Ok(Some(Accepted {
            notification_id: id,
            scheduled_for,
            replayed: true,
        })),
        // Claimed, but the store that followed never happened: store it now.
        None => Ok(None),
    }
}

/// Stores a command for the dispatcher now; whether JetStream had it already.
async fn release(store: CommandStore<'_>, command: &SendNotification) -> Result<bool, AcceptError> {
    let payload = Bytes::from(command.command_json());
    let headers = xibaar_streams::headers(&command.msg_id(), "send_notification");
    publish(store, command.subject(), headers, payload).await
}

/// Stores a command in the scheduler for `at`, and records `notification.scheduled`.
async fn schedule(
    store: CommandStore<'_>,
    sent: &SendNotification,
    at: DateTime<Utc>,
) -> Result<(), AcceptError> {
    let payload = Bytes::from(sent.command_json());
    // No message id: the scheduler's copy would inherit it, and it keeps one schedule per
    // subject anyway. The traceparent goes with the command it fires.
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
    headers.insert("Nats-Schedule-Target", sent.subject().as_str());
    let subject = subject::schedule(sent.priority, sent.notification_id);
    publish(store, subject, headers, payload).await?;
    // Repeated on a replay: its id is fixed, so JetStream stores it once.
    let event = EventEnvelope::new(
        Event::NotificationScheduled(NotificationScheduled {
            notification_id: sent.notification_id,
            priority: sent.priority,
            audience: sent.audience.clone(),
            content: sent.content.clone(),
            category: sent.category,
            idempotency_key: sent.idempotency_key.clone(),
            delivery: sent.delivery.clone(),
            send_at: at,
            accepted_at: sent.accepted_at,
        }),
        sent.notification_id.to_string(),
        Some(sent.msg_id()),
        Actor::clone(&sent.requested_by),
    );
    store
        .publisher
        .publish_event_stored(&event, store.publish_timeout)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(())
}

fn unavailable(e: &dyn std::fmt::Display) -> AcceptError {
    tracing::warn!(error = %e, "storing a command failed");
    AcceptError::Unavailable(
        "JetStream did not confirm the notification in time, so it may or may not be stored; \
         retry with the same Idempotency-Key, which never sends it twice"
            .into(),
    )
}

/// Publishes and waits for JetStream to store; whether it was a duplicate of an earlier id.
async fn publish(
    store: CommandStore<'_>,
    subject: String,
    headers: NatsHeaders,
    payload: Bytes,
) -> Result<bool, AcceptError> {
    // Every command carries its `Nats-Msg-Id` (a schedule, one per notification subject), so a
    // store retried through a leader election is stored once.
    let ack = store
        .publisher
        .publish_stored(subject, headers, payload, store.publish_timeout)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(ack.duplicate)
}

/// Where a notification is, and when it goes out if it is scheduled: its command in any
/// priority's stream, released or scheduled, or (withdrawn, or released and its command aged
/// out) its `notification.canceled` or `notification.accepted` in the event log, whose subject
/// alone says which.
async fn find_notification(
    js: &jetstream::Context,
    id: NotificationId,
) -> anyhow::Result<Option<(Stored, Option<DateTime<Utc>>)>> {
    for priority in Priority::ALL {
        if let Some((command, stored)) = stored_command(js, priority, id).await? {
            let send_at = (stored == Stored::Scheduled)
                .then_some(command.delivery.send_at)
                .flatten();
            return Ok(Some((stored, send_at)));
        }
    }
    let events = js.get_stream_no_info(xibaar_streams::names::EVENTS).await?;
    for (event_type, stored) in [
        ("notification.canceled", Stored::Canceled),
        ("notification.accepted", Stored::Released),
    ] {
        let subject = subject::event(event_type, &id.to_string());
        match events.direct_get_last_for_subject(subject).await {
            Ok(_) => return Ok(Some((stored, None))),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// The command of `id` in `priority`'s stream, released or still scheduled.
pub(crate) async fn stored_command(
    js: &jetstream::Context,
    priority: Priority,
    id: NotificationId,
) -> anyhow::Result<Option<(SendNotification, Stored)>> {
    let stream = js.get_stream_no_info(priority.command_stream()).await?;
    for (subject, stored) in [
        (subject::command(priority, id), Stored::Released),
        (subject::schedule(priority, id), Stored::Scheduled),
    ] {
        match stream.direct_get_last_for_subject(subject).await {
            Ok(message) => {
                let command: Command = serde_json::from_slice(&message.payload)?;
                // A page is stored under its first notification's subject only; the others in
                // it are found by their events.
                if let Some(s) = command.into_notification(id) {
                    return Ok(Some((s, stored)));
                }
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

//! The sender: one delivery job in, one FCM request, one outcome event, then the ack. (A page
//! of devices goes through the same steps per device: see [`crate::page`].)
//!
//! - success → `delivery.succeeded`;
//! - dead token (UNREGISTERED, SENDER_ID_MISMATCH, INVALID_ARGUMENT on the token) →
//!   `device.token_invalidated` + `delivery.failed(invalid_token)`, no retry;
//! - FCM refused the message itself, or the app is not configured → `delivery.failed(rejected)`
//!   and the job to the DLQ;
//! - 429/500/503, transport errors and credential failures → NAK with a delay (exponential
//!   backoff with jitter, at least FCM's `Retry-After`), so the retry survives a restart;
//! - the last attempt failing → `delivery.failed(retries_exhausted)` and the job to the DLQ;
//! - a job past its notification's `expires_at`, or whose next retry would be, →
//!   `delivery.expired` instead of a stale push.
//!
//! The ack comes only after the outcome event is stored.
//!
//! A topic or condition notification has a single [`TopicJob`]; it goes through the same steps
//! and its outcome is one `delivery.topic` event.
//!
//! Effectively once: right after FCM accepts a push, a sent-marker
//! (`XIBAAR_SENT/<notification>.<customer>.<device>` → FCM's message name) is stored. A redelivered job
//! (the sender died before its ack) whose marker exists is not pushed again; its outcome is
//! recorded from the marker. Duplicates after a hard crash are thus limited to pushes FCM
//! accepted in the instant before their marker was stored.
//!
//! Attempts are FCM's answers, not JetStream deliveries: the same key holds the number of failed
//! attempts so far, written before each retry's NAK. A job handed back because its project's
//! circuit is open, or redelivered after a crash, keeps its retries.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, AckKind, kv};
use chrono::{DateTime, Utc};
use rand::Rng;
use xibaar_core::{
    Actor, DeliveryJob, Event, EventEnvelope, TopicJob, event::DeliveryFailure, job::TOPIC_JOB_TYPE,
};
use xibaar_fcm::{FcmClient, FcmClientError};

use xibaar_streams::publish_event;

use crate::{job::Job, slots::Slot};

/// How long a sent-marker's or an outcome event's store is retried: past a bucket leader's election (4–10 s), well
/// within the delivery consumers' ack wait (30 s).
const STORE_RETRY_FOR: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Full-jitter exponential backoff, never shorter than the server's `Retry-After`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        let jittered = exp.mul_f64(rand::rng().random_range(0.5..=1.0));
        jittered.max(retry_after.unwrap_or_default())
    }
}

pub struct Sender {
    pub js: jetstream::Context,
    pub fcm: Arc<FcmClient>,
    pub retry: RetryPolicy,
    /// The sent-marker bucket.
    pub sent: kv::Store,
    /// How often a page in hand has its record brought up to date: as often as it is said to
    /// be in progress.
    pub progress_every: Duration,
}

/// The value under `XIBAAR_SENT/<notification>.<customer>.<device>`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Marker {
    /// FCM accepted the push at this attempt; its message name.
    Sent {
        fcm_message_id: String,
        attempt: u32,
    },
    /// This many attempts failed and a retry is scheduled.
    Failed { attempts: u32 },
}

impl Marker {
    pub fn decode(bytes: &[u8]) -> Self {
        serde_json::from_slice(bytes)
            // Markers written before attempts were recorded hold the bare message name.
            .unwrap_or_else(|_| Marker::Sent {
                fcm_message_id: String::from_utf8_lossy(bytes).into_owned(),
                attempt: 1,
            })
    }

    pub fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .expect("a marker always serializes")
            .into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// A redelivered job whose push had already gone out.
    AlreadySent,
    Invalid,
    Failed,
    Retrying,
    /// Handed back untried: the project's circuit is open.
    Paused,
    Expired,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::AlreadySent => "already_sent",
            Outcome::Invalid => "invalid_token",
            Outcome::Failed => "failed",
            Outcome::Retrying => "retrying",
            Outcome::Paused => "paused",
            Outcome::Expired => "expired",
        }
    }
}

impl Sender {
    /// Handles one job to the end (ack, NAK with delay, or dead letter). Errors are returned
    /// only when nothing could be recorded; the job is then redelivered after the ack wait.
    ///
    /// `fcm_slot` is one of the sender's places at FCM; it is given up as soon as FCM has
    /// answered, so recording the outcome never keeps the next job from FCM.
    pub async fn handle(
        &self,
        message: &jetstream::Message,
        fcm_slot: Slot,
    ) -> anyhow::Result<Outcome> {
        let kind = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Xibaar-Type"))
            .map(|v| v.as_str());
        if kind == Some(TOPIC_JOB_TYPE) {
            self.handle_job::<TopicJob>(message, fcm_slot).await
        } else {
            self.handle_job::<DeliveryJob>(message, fcm_slot).await
        }
    }

    async fn handle_job<J: Job>(
        &self,
        message: &jetstream::Message,
        fcm_slot: Slot,
    ) -> anyhow::Result<Outcome> {
        let redelivered = message.info().map(|i| i.delivered > 1).unwrap_or(false);
        let job: J = match serde_json::from_slice(&message.payload) {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(error = %e, kind = J::KIND, "undecodable job; parked in XIBAAR_DLQ");
                xibaar_streams::dlq::dead_letter(
                    &self.js,
                    message,
                    &format!("undecodable {}: {e}", J::KIND),
                )
                .await?;
                ack(message, AckKind::Term).await;
                return Ok(Outcome::Failed);
            }
        };
        let marker = job.marker();
        let mut failed_before = 0;
        if redelivered && let Some(value) = self.sent.get(marker.as_str()).await? {
            match Marker::decode(&value) {
                Marker::Sent {
                    fcm_message_id,
                    attempt,
                } => {
                    self.record(&job, message, job.succeeded(attempt, fcm_message_id))
                        .await?;
                    ack(message, AckKind::Ack).await;
                    return Ok(Outcome::AlreadySent);
                }
                Marker::Failed { attempts } => failed_before = attempts,
            }
        }
        let attempt = failed_before + 1;
        let expires_at = job.delivery().expires_at;
        if expires_at.is_some_and(|at| at <= Utc::now()) {
            self.expire(&job, message, failed_before).await?;
            return Ok(Outcome::Expired);
        }
        let answer = self.fcm.send(job.app_id(), &job.message()).await;
        drop(fcm_slot);
        let verdict = self.judge(
            job.app_id(),
            expires_at,
            attempt,
            failed_before,
            answer,
            J::HAS_TOKEN,
        );
        let outcome = verdict.outcome();
        match verdict {
            Verdict::Sent { fcm_message_id } => {
                tracing::debug!(attempt, %fcm_message_id, "pushed");
                // Marker and outcome event are stored side by side; both before the ack.
                let marker_value = Marker::Sent {
                    fcm_message_id: fcm_message_id.clone(),
                    attempt,
                }
                .encode();
                // Retried through an election of the bucket's leader: the push is out, and
                // without its marker a crash before the ack would repeat it.
                let store_marker = xibaar_streams::retry::within(
                    STORE_RETRY_FOR,
                    |_: &kv::PutError| true,
                    || self.sent.put(marker.as_str(), marker_value.clone()),
                );
                let (stored, recorded) = tokio::join!(
                    store_marker,
                    self.record(&job, message, job.succeeded(attempt, fcm_message_id))
                );
                if let Err(e) = stored {
                    let error = e.map_or_else(|| "timed out".to_owned(), |e| e.to_string());
                    tracing::warn!(%error, "storing a sent-marker failed; a crash before the ack would repeat this push");
                }
                recorded?;
            }
            Verdict::Final {
                reason,
                code,
                detail,
                dead_letter,
            } => {
                if reason == DeliveryFailure::InvalidToken
                    && let Some(invalidated) = job.token_invalidated(code.as_deref().unwrap_or(""))
                {
                    self.record(&job, message, invalidated).await?;
                }
                if dead_letter {
                    xibaar_streams::dlq::dead_letter(
                        &self.js,
                        message,
                        &format!("{}: {detail}", reason.as_str()),
                    )
                    .await?;
                }
                self.record(
                    &job,
                    message,
                    job.failed(attempt, reason, code.as_deref(), &detail),
                )
                .await?;
            }
            Verdict::Expired { attempt } => {
                self.record(&job, message, job.expired(attempt)).await?;
            }
            Verdict::Retry { delay, detail } => {
                if let Err(e) = self
                    .sent
                    .put(
                        marker.as_str(),
                        Marker::Failed { attempts: attempt }.encode(),
                    )
                    .await
                {
                    // The retry still happens; it may get one attempt more than configured.
                    tracing::warn!(error = %e, "recording a failed attempt failed");
                }
                tracing::info!(error = %detail, attempt, ?delay, "FCM send failed; will retry");
                ack(message, AckKind::Nak(Some(delay))).await;
                return Ok(outcome);
            }
            Verdict::Pause { delay } => {
                ack(message, AckKind::Nak(Some(delay))).await;
                return Ok(outcome);
            }
        }
        ack(message, AckKind::Ack).await;
        Ok(outcome)
    }

    /// What FCM's `answer` to attempt `attempt` means for a device or topic of `app_id`.
    /// `has_token`: a dead token is reported as such (a topic has none).
    pub(crate) fn judge(
        &self,
        app_id: &str,
        expires_at: Option<DateTime<Utc>>,
        attempt: u32,
        failed_before: u32,
        answer: Result<xibaar_fcm::SentMessage, FcmClientError>,
        has_token: bool,
    ) -> Verdict {
        match answer {
            Ok(sent) => Verdict::Sent {
                fcm_message_id: sent.name,
            },
            Err(FcmClientError::Fcm(e)) if e.token_is_invalid() && has_token => Verdict::Final {
                reason: DeliveryFailure::InvalidToken,
                code: Some(e.code.as_str().to_owned()),
                detail: e.to_string(),
                dead_letter: false,
            },
            Err(e)
                if e.is_transient()
                    || matches!(&e, FcmClientError::Fcm(f) if f.is_credential_failure()) =>
            {
                // A failure that opened the project's circuit (or a failed probe) is the
                // project's fault, not this job's: it waits with the others, attempts intact.
                if let Some(retry_in) = self.fcm.paused_for_app(app_id) {
                    return pause(retry_in, expires_at, failed_before);
                }
                let reason = match &e {
                    FcmClientError::Fcm(f) if f.is_credential_failure() => {
                        DeliveryFailure::ThirdPartyAuth
                    }
                    _ => DeliveryFailure::RetriesExhausted,
                };
                if attempt >= self.retry.max_attempts {
                    return Verdict::Final {
                        reason,
                        code: fcm_code(&e),
                        detail: e.to_string(),
                        dead_letter: true,
                    };
                }
                let retry_after = match &e {
                    FcmClientError::Fcm(f) => f.retry_after,
                    _ => None,
                };
                let delay = self.retry.delay(attempt, retry_after);
                if expires_past(expires_at, delay) {
                    return Verdict::Expired { attempt };
                }
                Verdict::Retry {
                    delay,
                    detail: e.to_string(),
                }
            }
            Err(FcmClientError::CircuitOpen { retry_in, .. }) => {
                pause(retry_in, expires_at, failed_before)
            }
            Err(e) => Verdict::Final {
                reason: DeliveryFailure::Rejected,
                code: fcm_code(&e),
                detail: e.to_string(),
                dead_letter: true,
            },
        }
    }

    /// Records `delivery.expired` and acks: the push would arrive stale.
    async fn expire(
        &self,
        job: &impl Job,
        message: &jetstream::Message,
        attempt: u32,
    ) -> anyhow::Result<()> {
        self.record(job, message, job.expired(attempt)).await?;
        ack(message, AckKind::Ack).await;
        Ok(())
    }

    async fn record(
        &self,
        job: &impl Job,
        message: &jetstream::Message,
        event: Event,
    ) -> anyhow::Result<()> {
        self.store_event(job.correlation_id(), message, event).await
    }

    /// Stores an outcome `event` of a job taken from `message`.
    pub(crate) async fn store_event(
        &self,
        correlation_id: &str,
        message: &jetstream::Message,
        event: Event,
    ) -> anyhow::Result<()> {
        let causation = message
            .info()
            .ok()
            .map(|i| format!("{}:{}", i.stream, i.stream_sequence));
        let actor = Actor::system("sender");
        let envelope = EventEnvelope::new(event, correlation_id, causation, actor);
        // Retried through an election of the event stream's leader (the event's id makes a
        // retry of a store whose answer was lost a duplicate JetStream drops), rather than
        // leaving the job to come back after its ack wait.
        xibaar_streams::retry::within(
            STORE_RETRY_FOR,
            |_: &async_nats::jetstream::context::PublishError| true,
            || publish_event(&self.js, &envelope),
        )
        .await
        .map_err(|e| {
            e.map_or_else(
                || anyhow::anyhow!("storing an outcome event timed out"),
                anyhow::Error::from,
            )
        })?;
        Ok(())
    }
}

/// What an FCM answer means for one device (or topic).
#[derive(Debug)]
pub(crate) enum Verdict {
    Sent {
        fcm_message_id: String,
    },
    /// No retry: the outcome is `delivery.failed` with `reason` (for a dead token also
    /// `device.token_invalidated`), and a dead letter when `dead_letter`.
    Final {
        reason: DeliveryFailure,
        code: Option<String>,
        detail: String,
        dead_letter: bool,
    },
    /// The push would arrive stale: `delivery.expired` after `attempt` attempts.
    Expired {
        attempt: u32,
    },
    /// A failed attempt; the next after `delay`.
    Retry {
        delay: Duration,
        detail: String,
    },
    /// Not an attempt: the project's circuit is open; back after `delay`.
    Pause {
        delay: Duration,
    },
}

impl Verdict {
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            Verdict::Sent { .. } => Outcome::Sent,
            Verdict::Final {
                reason: DeliveryFailure::InvalidToken,
                ..
            } => Outcome::Invalid,
            Verdict::Final { .. } => Outcome::Failed,
            Verdict::Expired { .. } => Outcome::Expired,
            Verdict::Retry { .. } => Outcome::Retrying,
            Verdict::Pause { .. } => Outcome::Paused,
        }
    }
}

/// Whether a notification expiring at `expires_at` would be stale `delay` from now.
pub(crate) fn expires_past(expires_at: Option<DateTime<Utc>>, delay: Duration) -> bool {
    let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
    expires_at.is_some_and(|expires| expires <= at)
}

/// Hands the work back for when the circuit lets a probe through. The jitter spreads the
/// returning jobs so they do not all meet the probe at once.
fn pause(retry_in: Duration, expires_at: Option<DateTime<Utc>>, failed_before: u32) -> Verdict {
    let delay = retry_in + retry_in.mul_f64(rand::rng().random_range(0.0..0.5));
    if expires_past(expires_at, delay) {
        Verdict::Expired {
            attempt: failed_before,
        }
    } else {
        Verdict::Pause { delay }
    }
}

fn fcm_code(e: &FcmClientError) -> Option<String> {
    match e {
        FcmClientError::Fcm(f) => Some(f.code.as_str().to_owned()),
        FcmClientError::UnknownApp(_) => Some("UNKNOWN_APP".into()),
        _ => None,
    }
}

pub(crate) async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        // The outcome is recorded; a lost ack means a redelivery, bounded by the ack wait.
        tracing::warn!(error = %e, "acknowledging a delivery job failed");
    }
}

pub(crate) fn count(outcome: Outcome, priority: xibaar_core::Priority) {
    metrics::counter!("xibaar_sender_jobs_total", "priority" => priority.as_str(), "outcome" => outcome.as_str())
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        };
        for _ in 0..50 {
            let d1 = p.delay(1, None);
            assert!(d1 >= Duration::from_millis(500) && d1 <= Duration::from_secs(1));
            let d4 = p.delay(4, None);
            assert!(d4 >= Duration::from_secs(4) && d4 <= Duration::from_secs(8));
            assert!(p.delay(30, None) <= Duration::from_secs(60));
            assert!(p.delay(1, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
        }
    }
}

//! The projector: folds `XIBAAR_EVENTS` into the Postgres read models.
//!
//! Contract (each point is tested):
//! - events are applied in stream order, in batches bounded by size and time, each batch in one
//!   transaction together with the checkpoint (the last stream sequence applied);
//! - the checkpoint advances by compare-and-set, so a second runner's batch is rolled back
//!   instead of applied twice;
//! - messages are acked only after the commit (ack-all on the batch's last message);
//! - a redelivered event whose sequence is at or below the checkpoint is skipped;
//! - an event of an unknown type is skipped and counted; one that cannot be decoded is parked
//!   in `XIBAAR_DLQ` with the reason and skipped, never a stuck projection.

mod apply;

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use xibaar_core::{Decoded, EventEnvelope};
use xibaar_streams::{consumers, names};

/// The read models this runner maintains, as named in `projection_checkpoints`.
pub const READ_MODELS: &str = "read_models";

#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    pub batch_size: usize,
    pub batch_wait: Duration,
}

impl From<&xibaar_config::ProjectorConfig> for ProjectorSettings {
    fn from(c: &xibaar_config::ProjectorConfig) -> Self {
        Self {
            batch_size: c.batch_size,
            batch_wait: c.batch_wait,
        }
    }
}

pub struct Projector {
    js: jetstream::Context,
    pool: PgPool,
    settings: ProjectorSettings,
}

/// What a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct BatchOutcome {
    applied: u64,
    redelivered: u64,
    unknown: u64,
    dead_lettered: u64,
}

impl Projector {
    pub fn new(js: jetstream::Context, pool: PgPool, settings: ProjectorSettings) -> Self {
        Self { js, pool, settings }
    }

    /// Runs until `shutdown` is cancelled; the batch in progress is finished first.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let consumer: PullConsumer = self
            .js
            .get_stream(names::EVENTS)
            .await
            .context("opening XIBAAR_EVENTS")?
            .get_consumer(consumers::PROJECTOR)
            .await
            .map_err(|e| anyhow::anyhow!("opening the projector consumer: {e}"))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.settings.batch_size.max(1))
            .messages()
            .await
            .context("pulling from XIBAAR_EVENTS")?;
        tracing::info!("projector running");
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = messages.next() => next,
            };
            let Some(first) = first else { break };
            let mut batch = match first {
                Ok(m) => vec![m],
                Err(e) => {
                    tracing::warn!(error = %e, "pull from XIBAAR_EVENTS failed; retrying");
                    continue;
                }
            };
            let deadline = tokio::time::Instant::now() + self.settings.batch_wait;
            while batch.len() < self.settings.batch_size {
                match tokio::time::timeout_at(deadline, messages.next()).await {
                    Ok(Some(Ok(m))) => batch.push(m),
                    Ok(Some(Err(e))) => tracing::warn!(error = %e, "pull from XIBAAR_EVENTS failed"),
                    Ok(None) | Err(_) => break,
                }
            }
            self.commit_batch(&batch).await;
        }
        tracing::info!("projector stopped");
        Ok(())
    }

    /// Applies the batch, retrying until it commits (Postgres may be away for a while), then
    /// acks it. While retrying, the messages' ack deadline is extended.
    async fn commit_batch(&self, batch: &[jetstream::Message]) {
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        let outcome = loop {
            match self.apply_batch(batch).await {
                Ok(outcome) => break outcome,
                Err(e) => {
                    metrics::counter!("xibaar_projector_batch_failures_total").increment(1);
                    tracing::warn!(error = format!("{e:#}"), retry_in = ?delay, "projecting a batch failed");
                    if let Some(last) = batch.last() {
                        let _ = last.ack_with(AckKind::Progress).await;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        if let Some(last) = batch.last()
            && let Err(e) = last.ack().await
        {
            // Harmless: the batch is committed, so its redelivery is skipped by sequence.
            tracing::warn!(error = %e, "acking a projected batch failed");
        }
        metrics::counter!("xibaar_projector_events_applied_total").increment(outcome.applied);
        metrics::counter!("xibaar_projector_events_skipped_total", "reason" => "redelivered")
            .increment(outcome.redelivered);
        metrics::counter!("xibaar_projector_events_skipped_total", "reason" => "unknown_type")
            .increment(outcome.unknown);
        metrics::counter!("xibaar_projector_events_dead_lettered_total").increment(outcome.dead_lettered);
        metrics::histogram!("xibaar_projector_batch_seconds").record(started.elapsed().as_secs_f64());
    }

    async fn apply_batch(&self, batch: &[jetstream::Message]) -> anyhow::Result<BatchOutcome> {
        let mut outcome = BatchOutcome::default();
        let mut tx = self.pool.begin().await.context("starting a transaction")?;
        let checkpoint: i64 = sqlx::query_scalar(include_str!("../sql/checkpoint_read.sql"))
            .bind(READ_MODELS)
            .fetch_optional(&mut *tx)
            .await
            .context("reading the checkpoint")?
            .unwrap_or(0);
        let mut last = checkpoint;
        for message in batch {
            let sequence = message
                .info()
                .map_err(|e| anyhow::anyhow!("message without JetStream metadata: {e}"))?
                .stream_sequence;
            let sequence = i64::try_from(sequence).context("sequence out of range")?;
            if sequence <= last {
                outcome.redelivered += 1;
                continue;
            }
            match EventEnvelope::decode(&message.payload) {
                Ok(Decoded::Known(envelope)) => {
                    apply::apply(&mut tx, &envelope)
                        .await
                        .with_context(|| format!("applying {} at sequence {sequence}", envelope.event.event_type()))?;
                    outcome.applied += 1;
                }
                Ok(Decoded::Unknown { event_type, version }) => {
                    tracing::debug!(%event_type, version, sequence, "skipping an event type this build does not know");
                    outcome.unknown += 1;
                }
                Err(e) => {
                    tracing::error!(sequence, subject = %message.subject, error = %e, "event cannot be decoded; parked in XIBAAR_DLQ");
                    xibaar_streams::dlq::dead_letter(&self.js, message, &e.to_string())
                        .await
                        .context("parking an undecodable event in XIBAAR_DLQ")?;
                    outcome.dead_lettered += 1;
                }
            }
            last = sequence;
        }
        if last != checkpoint {
            let advanced = sqlx::query(include_str!("../sql/checkpoint_advance.sql"))
                .bind(READ_MODELS)
                .bind(checkpoint)
                .bind(last)
                .execute(&mut *tx)
                .await
                .context("advancing the checkpoint")?;
            anyhow::ensure!(
                advanced.rows_affected() == 1,
                "the checkpoint moved under us (another projector is running); batch rolled back"
            );
        }
        tx.commit().await.context("committing the batch")?;
        metrics::gauge!("xibaar_projector_checkpoint_sequence").set(last as f64);
        Ok(outcome)
    }
}

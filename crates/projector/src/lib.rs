//! The projector: folds `XIBAAR_EVENTS` into the Postgres read models.
//!
//! Contract (each point is tested):
//! - events are applied in stream order, in batches bounded by size and time, each batch in one
//!   transaction together with the checkpoint (the last stream sequence applied);
//! - the checkpoint in Postgres is the position: the runner reads the stream with an ordered
//!   consumer starting after it. (A durable consumer redelivers a crashed runner's unacked
//!   events only after their ack wait, behind newer ones, and acking the newer ones would skip
//!   them; see docs/decisions.md.)
//! - the checkpoint advances by compare-and-set, so a second runner's batch is rolled back
//!   instead of applied twice;
//! - an event whose sequence is at or below the checkpoint is skipped;
//! - an event of an unknown type is skipped and counted; one that cannot be decoded is parked
//!   in `XIBAAR_DLQ` with the reason and skipped, never a stuck projection;
//! - an event that Postgres refuses (a poison event: bad data, a broken constraint) fails its
//!   batch, which is retried; after [`POISON_ATTEMPTS`] refusals of the same event it is parked
//!   in `XIBAAR_DLQ` with the error and the batch goes on without it. Other failures (Postgres
//!   away, a lost connection) are retried for as long as they last.

mod apply;
mod outcomes;
pub mod rebuild;

use std::{collections::HashSet, time::Duration};

use anyhow::Context;
use async_nats::jetstream;
use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use xibaar_core::{Decoded, Event, EventEnvelope};
use xibaar_streams::names;

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

/// How many times Postgres may refuse one event before it is parked.
pub const POISON_ATTEMPTS: u32 = 3;

pub struct Projector {
    js: jetstream::Context,
    pool: PgPool,
    settings: ProjectorSettings,
    /// The event that failed the last attempts of the current batch, and how often.
    refused: Option<(i64, u32)>,
    /// Poison events parked in `XIBAAR_DLQ`, skipped when their batch is retried.
    parked: HashSet<i64>,
    /// Set when a bulk statement (outcomes, device registrations) was refused: the batch is
    /// retried applying each event on its own, so the refused event can be named (and parked).
    isolate: bool,
    /// Whether committed batches wake the api's live inbox streams (not for a rebuild's
    /// shadow tables, which nobody reads yet).
    announce: bool,
    /// The checkpoint this runner committed last: the next batch starts from it without
    /// reading it again. Forgotten when a batch fails, so a checkpoint moved by someone else (a
    /// second runner, a rebuild's swap) is read again; until then the compare-and-set refuses
    /// the batch.
    committed: Option<i64>,
}

/// An event of a batch, read and decoded ahead of its transaction.
struct Item {
    message: jetstream::Message,
    sequence: i64,
    decoded: Result<Decoded, xibaar_core::event::DecodeError>,
    /// The delivery outcome it records, if it is one.
    /// The delivery outcomes it records (a page of successes records several).
    pending: Vec<outcomes::PendingOutcome>,
}

/// Reads `messages` into batches bounded by size and time, decodes them, and hands them over
/// one at a time; catching up stops after the batch that reaches `until`.
async fn read_batches<E: std::fmt::Display>(
    mut messages: impl futures::Stream<Item = Result<jetstream::Message, E>> + Unpin,
    settings: ProjectorSettings,
    until: Option<u64>,
    batches: tokio::sync::mpsc::Sender<Vec<Item>>,
) {
    let item = |message: jetstream::Message| -> Option<Item> {
        let Ok(info) = message.info() else {
            tracing::error!(subject = %message.subject, "message without JetStream metadata; skipped");
            return None;
        };
        let sequence = i64::try_from(info.stream_sequence).ok()?;
        let decoded = EventEnvelope::decode(&message.payload);
        let pending = match &decoded {
            Ok(Decoded::Known(envelope)) => outcomes::pending(envelope, sequence),
            _ => Vec::new(),
        };
        Some(Item {
            message,
            sequence,
            decoded,
            pending,
        })
    };
    // While NATS refuses (a node lost, a leader being elected), read again after a growing,
    // jittered wait, and say so once a second.
    let mut backoff = xibaar_streams::retry::Backoff::for_nats();
    let mut warn = xibaar_streams::retry::WarnEvery::second();
    loop {
        let mut batch = match messages.next().await {
            None => return,
            Some(Ok(m)) => {
                backoff.reset();
                item(m).into_iter().collect::<Vec<_>>()
            }
            Some(Err(e)) => {
                let wait = backoff.next_delay();
                if let Some(held_back) = warn.allow() {
                    tracing::warn!(error = %e, retry_in = ?wait, held_back, "pull from XIBAAR_EVENTS failed; retrying");
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + settings.batch_wait;
        let reached = |batch: &[Item]| {
            until.is_some_and(|u| batch.last().is_some_and(|i| i.sequence as u64 >= u))
        };
        // A page of successes weighs its devices: a batch is as large a transaction whatever
        // the log's shape.
        let weight = |item: &Item| item.pending.len().max(1);
        let mut size: usize = batch.iter().map(weight).sum();
        while size < settings.batch_size && !reached(&batch) {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(m))) => {
                    if let Some(item) = item(m) {
                        size += weight(&item);
                        batch.push(item);
                    }
                }
                Ok(Some(Err(e))) => {
                    if let Some(held_back) = warn.allow() {
                        tracing::warn!(error = %e, held_back, "pull from XIBAAR_EVENTS failed");
                    }
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        let done = reached(&batch);
        if !batch.is_empty() && batches.send(batch).await.is_err() {
            return;
        }
        if done {
            return;
        }
    }
}

/// What a failed bulk statement over a run of `len` events of `event_type` from `first` on
/// means for the batch.
fn run_refused(
    source: sqlx::Error,
    first: i64,
    len: usize,
    event_type: &'static str,
) -> BatchError {
    match source {
        source if refused_for_its_data(&source) && len == 1 => BatchError::Refused {
            sequence: first,
            event_type,
            source,
        },
        source if refused_for_its_data(&source) => BatchError::RefusedRun { first, source },
        e => anyhow::Error::new(e)
            .context(format!(
                "applying {event_type} events from sequence {first}"
            ))
            .into(),
    }
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    /// Postgres refused a bulk statement over the events from `first` on (outcomes or device
    /// registrations); which one is not known.
    #[error("applying a run of events from sequence {first}: {source}")]
    RefusedRun { first: i64, source: sqlx::Error },
    /// Postgres refused the event at `sequence`: retrying the same data cannot succeed forever.
    #[error("applying {event_type} at sequence {sequence}: {source}")]
    Refused {
        sequence: i64,
        event_type: &'static str,
        source: sqlx::Error,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Whether Postgres refused the statement because of its data (SQLSTATE classes 22, data
/// exception, and 23, integrity constraint violation), as opposed to being unavailable, busy
/// or in conflict with another transaction.
///
/// A unique violation (23505) is such a conflict: every statement of the projector settles
/// conflicts itself (`ON CONFLICT`) except the insert of new `deliveries` rows, whose absence
/// its own transaction has just read, so only another runner writing the same rows meanwhile
/// makes it fail. The batch is retried (and the compare-and-set on the checkpoint then sorts
/// the two runners out); the event is not to blame.
fn refused_for_its_data(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code != "23505" && (code.starts_with("22") || code.starts_with("23"))
        }),
        _ => false,
    }
}

/// What a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct BatchOutcome {
    /// The checkpoint after the batch.
    checkpoint: i64,
    applied: u64,
    already_applied: u64,
    unknown: u64,
    dead_lettered: u64,
}

/// The sequence of the last event in `XIBAAR_EVENTS`: where a projection caught up is.
pub async fn events_head(js: &jetstream::Context) -> anyhow::Result<u64> {
    Ok(js
        .get_stream(names::EVENTS)
        .await
        .context("opening XIBAAR_EVENTS")?
        .get_info()
        .await
        .context("reading XIBAAR_EVENTS")?
        .state
        .last_sequence)
}

/// A span per event, in the event's trace, only at debug level: a broadcast is millions of
/// events.
fn debug_applied(message: &jetstream::Message, envelope: &EventEnvelope, sequence: i64) {
    let span = tracing::debug_span!("project", sequence);
    if span.is_disabled() {
        return;
    }
    xibaar_streams::trace::continue_from_headers(&span, message.headers.as_ref());
    span.in_scope(|| {
        tracing::debug!(
            event = envelope.event.event_type(),
            correlation_id = %envelope.meta.correlation_id,
            "applied; commits with its batch"
        )
    });
}

/// Customer ids joined by newlines in payloads under Postgres's 8,000-byte notification limit.
fn notify_payloads(customers: &[&str]) -> Vec<String> {
    const MAX: usize = 7_900;
    let mut payloads = Vec::new();
    let mut current = String::new();
    for customer in customers {
        if !current.is_empty() && current.len() + customer.len() + 1 > MAX {
            payloads.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(customer);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

impl Projector {
    pub fn new(js: jetstream::Context, pool: PgPool, settings: ProjectorSettings) -> Self {
        Self {
            js,
            pool,
            settings,
            refused: None,
            parked: HashSet::new(),
            isolate: false,
            announce: true,
            committed: None,
        }
    }

    /// Runs until `shutdown` is cancelled; the batch in progress is finished first.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.drive(&shutdown, None, &mut |_| {}).await?;
        tracing::info!("projector stopped");
        Ok(())
    }

    /// Applies events until the checkpoint reaches `until` (a stream sequence), reporting the
    /// checkpoint after every batch; returns the checkpoint reached.
    pub async fn catch_up(
        &mut self,
        until: u64,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> anyhow::Result<u64> {
        self.drive(&CancellationToken::new(), Some(until), progress)
            .await
    }

    /// The loop of [`Projector::run`] and [`Projector::catch_up`].
    async fn drive(
        &mut self,
        shutdown: &CancellationToken,
        until: Option<u64>,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> anyhow::Result<u64> {
        let checkpoint = loop {
            match self.checkpoint().await {
                Ok(c) => {
                    self.committed = Some(c);
                    break u64::try_from(c).unwrap_or(0);
                }
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "reading the checkpoint failed; retrying"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(0),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let reached = checkpoint;
        if until.is_some_and(|u| reached >= u) {
            return Ok(reached);
        }
        let start_sequence = checkpoint + 1;
        let messages = xibaar_streams::replay::events_from(&self.js, start_sequence).await?;
        tracing::info!(start_sequence, "projector running");
        self.consume(messages, shutdown, until, reached, progress)
            .await
    }

    /// Applies messages read from the archive (as [`xibaar_archive::segment::Record::as_stream_message`]
    /// gives them), in order, up to `until`; those at or below the checkpoint are skipped.
    /// For a rebuild reaching back past what `XIBAAR_EVENTS` still holds.
    pub async fn apply_archived(
        &mut self,
        messages: Vec<jetstream::Message>,
        until: u64,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> anyhow::Result<u64> {
        let checkpoint = u64::try_from(self.checkpoint().await?).unwrap_or(0);
        self.committed = i64::try_from(checkpoint).ok();
        if checkpoint >= until {
            return Ok(checkpoint);
        }
        let messages =
            futures::stream::iter(messages.into_iter().map(Ok::<_, std::convert::Infallible>));
        self.consume(
            messages,
            &CancellationToken::new(),
            Some(until),
            checkpoint,
            progress,
        )
        .await
    }

    /// Commits the batches read from `messages` until `until`, the end of `messages` or
    /// `shutdown`; returns the checkpoint reached.
    async fn consume<E: std::fmt::Display + Send + 'static>(
        &mut self,
        messages: impl futures::Stream<Item = Result<jetstream::Message, E>> + Unpin + Send + 'static,
        shutdown: &CancellationToken,
        until: Option<u64>,
        mut reached: u64,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> anyhow::Result<u64> {
        // The next batch is read and decoded while this one is in Postgres.
        let (batches, mut ready) = tokio::sync::mpsc::channel(1);
        let reader = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(read_batches(
            messages,
            self.settings.clone(),
            until,
            batches,
        )));
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                batch = ready.recv() => batch,
            };
            let Some(batch) = batch else { break };
            reached = self.commit_batch(&batch).await;
            // Freeing a batch (its messages and decoded events) took a quarter of this loop's
            // CPU time in a profile; another thread does it while the next batch is in Postgres.
            tokio::task::spawn_blocking(move || drop(batch));
            progress(reached);
            if until.is_some_and(|u| reached >= u) {
                break;
            }
        }
        drop(reader);
        Ok(reached)
    }

    /// Folds the pending outcomes, in one go or, after a refusal, one at a time.
    async fn fold<'b>(
        &self,
        tx: &mut sqlx::PgConnection,
        run: &mut Vec<&'b outcomes::PendingOutcome>,
        woken: &mut Vec<&'b str>,
    ) -> Result<(), BatchError> {
        let Some(first) = run.first().map(|o| o.sequence()) else {
            return Ok(());
        };
        let customers = outcomes::apply(tx, run)
            .await
            .map_err(|e| run_refused(e, first, run.len(), "a delivery outcome"))?;
        woken.extend(customers);
        run.clear();
        Ok(())
    }

    /// Applies the pending device registrations in one call, or, after a refusal, one at a
    /// time.
    async fn register(
        &self,
        tx: &mut sqlx::PgConnection,
        run: &mut Vec<(i64, &EventEnvelope)>,
    ) -> Result<(), BatchError> {
        let Some(&(first, _)) = run.first() else {
            return Ok(());
        };
        let envelopes: Vec<&EventEnvelope> = run.iter().map(|(_, e)| *e).collect();
        apply::devices_registered(tx, &envelopes)
            .await
            .map_err(|e| run_refused(e, first, run.len(), "device.registered"))?;
        run.clear();
        Ok(())
    }

    async fn checkpoint(&self) -> anyhow::Result<i64> {
        let checkpoint = sqlx::query_scalar(include_str!("../sql/checkpoint_read.sql"))
            .bind(READ_MODELS)
            .fetch_optional(&self.pool)
            .await?;
        Ok(checkpoint.unwrap_or(0))
    }

    /// Applies the batch, retrying until it commits (Postgres may be away for a while); a
    /// poison event is parked after [`POISON_ATTEMPTS`] refusals.
    async fn commit_batch(&mut self, batch: &[Item]) -> u64 {
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut parked_now = 0;
        let outcome = loop {
            let result = self.apply_batch(batch).await;
            if result.is_err() {
                self.committed = None;
            }
            match result {
                Ok(outcome) => break outcome,
                Err(BatchError::Refused {
                    sequence,
                    event_type,
                    source,
                }) => {
                    metrics::counter!("xibaar_projector_batch_failures_total").increment(1);
                    let attempts = match self.refused {
                        Some((s, n)) if s == sequence => n + 1,
                        _ => 1,
                    };
                    self.refused = Some((sequence, attempts));
                    if attempts < POISON_ATTEMPTS {
                        tracing::warn!(sequence, event = event_type, attempts, error = %source, retry_in = ?delay, "Postgres refused an event; retrying its batch");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        continue;
                    }
                    let reason = format!(
                        "the projector could not apply {event_type} (refused {attempts} times): {source}"
                    );
                    let Some(item) = batch.iter().find(|i| i.sequence == sequence) else {
                        continue;
                    };
                    match xibaar_streams::dlq::dead_letter(&self.js, &item.message, &reason).await {
                        Ok(()) => {
                            tracing::error!(sequence, event = event_type, error = %source, "poison event parked in XIBAAR_DLQ; the projection goes on without it");
                            self.parked.insert(sequence);
                            self.refused = None;
                            parked_now += 1;
                        }
                        Err(e) => {
                            tracing::warn!(sequence, error = %e, "parking a poison event failed; retrying");
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
                Err(BatchError::RefusedRun { first, source }) => {
                    metrics::counter!("xibaar_projector_batch_failures_total").increment(1);
                    tracing::warn!(first, error = %source, "Postgres refused a bulk statement; retrying the batch one event at a time");
                    self.isolate = true;
                }
                Err(BatchError::Other(e)) => {
                    metrics::counter!("xibaar_projector_batch_failures_total").increment(1);
                    tracing::warn!(error = format!("{e:#}"), retry_in = ?delay, "projecting a batch failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        // Committed: the parked events are behind the checkpoint now.
        self.committed = Some(outcome.checkpoint);
        self.refused = None;
        self.isolate = false;
        self.parked.clear();
        metrics::counter!("xibaar_projector_poison_events_total").increment(parked_now);
        metrics::counter!("xibaar_projector_events_applied_total").increment(outcome.applied);
        metrics::counter!("xibaar_projector_events_skipped_total", "reason" => "already_applied")
            .increment(outcome.already_applied);
        metrics::counter!("xibaar_projector_events_skipped_total", "reason" => "unknown_type")
            .increment(outcome.unknown);
        metrics::counter!("xibaar_projector_events_dead_lettered_total")
            .increment(outcome.dead_lettered);
        metrics::histogram!("xibaar_projector_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        u64::try_from(outcome.checkpoint).unwrap_or(0)
    }

    async fn apply_batch(&self, batch: &[Item]) -> Result<BatchOutcome, BatchError> {
        let mut outcome = BatchOutcome::default();
        let mut tx = self.pool.begin().await.context("starting a transaction")?;
        let checkpoint: i64 = match self.committed {
            Some(checkpoint) => checkpoint,
            None => sqlx::query_scalar(include_str!("../sql/checkpoint_read.sql"))
                .bind(READ_MODELS)
                .fetch_optional(&mut *tx)
                .await
                .context("reading the checkpoint")?
                .unwrap_or(0),
        };
        // Every event of the batch past the checkpoint is applied, skipped or parked: the batch
        // ends at its last sequence. The checkpoint is advanced first, so that the batch, like
        // a rebuild's swap, takes the checkpoint before the tables (the two cannot wait for
        // each other) and a second runner is refused before any work.
        let end = batch.iter().map(|i| i.sequence).fold(checkpoint, i64::max);
        if end != checkpoint {
            let advanced = sqlx::query(include_str!("../sql/checkpoint_advance.sql"))
                .bind(READ_MODELS)
                .bind(checkpoint)
                .bind(end)
                .execute(&mut *tx)
                .await
                .context("advancing the checkpoint")?;
            if advanced.rows_affected() != 1 {
                return Err(anyhow::anyhow!(
                    "the checkpoint moved under us (another projector is running); batch rolled back"
                )
                .into());
            }
        }
        let mut last = checkpoint;
        // Customers whose inbox gained items in this batch (and some who had them already).
        let mut woken: Vec<&str> = Vec::new();
        // Consecutive outcomes not yet folded, or consecutive device registrations not yet
        // applied (never both: each kind flushes the other first).
        let mut run: Vec<&outcomes::PendingOutcome> = Vec::new();
        let mut registrations: Vec<(i64, &EventEnvelope)> = Vec::new();
        for item in batch {
            let (message, sequence) = (&item.message, item.sequence);
            if sequence <= last {
                outcome.already_applied += 1;
                continue;
            }
            // Every path below applies, skips or parks the event, or fails the whole batch.
            last = sequence;
            if self.parked.contains(&sequence) {
                outcome.dead_lettered += 1;
                continue;
            }
            let (decoded, pending) = (&item.decoded, &item.pending);
            let registration = match decoded {
                Ok(Decoded::Known(envelope))
                    if !self.isolate && matches!(envelope.event, Event::DeviceRegistered(_)) =>
                {
                    Some(envelope.as_ref())
                }
                _ => None,
            };
            // Anything else is applied after the outcomes or registrations before it.
            if pending.is_empty() || self.isolate {
                self.fold(&mut tx, &mut run, &mut woken).await?;
            }
            if registration.is_none() {
                self.register(&mut tx, &mut registrations).await?;
            }
            if let Some(envelope) = registration {
                debug_applied(message, envelope, sequence);
                registrations.push((sequence, envelope));
                outcome.applied += 1;
                continue;
            }
            if !pending.is_empty() {
                if let Ok(Decoded::Known(envelope)) = decoded {
                    debug_applied(message, envelope, sequence);
                }
                run.extend(pending);
                outcome.applied += 1;
                continue;
            }
            match decoded {
                Ok(Decoded::Known(envelope)) => {
                    match apply::apply(&mut tx, envelope).await {
                        Ok(()) => {}
                        Err(source) if refused_for_its_data(&source) => {
                            return Err(BatchError::Refused {
                                sequence,
                                event_type: envelope.event.event_type(),
                                source,
                            });
                        }
                        Err(e) => {
                            return Err(anyhow::Error::new(e)
                                .context(format!(
                                    "applying {} at sequence {sequence}",
                                    envelope.event.event_type()
                                ))
                                .into());
                        }
                    };
                    outcome.applied += 1;
                    debug_applied(message, envelope, sequence);
                }
                Ok(Decoded::Unknown {
                    event_type,
                    version,
                }) => {
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
        }
        self.fold(&mut tx, &mut run, &mut woken).await?;
        self.register(&mut tx, &mut registrations).await?;
        // Delivered by Postgres at commit, never for a batch rolled back: the api's live streams
        // wake and read the new items from the table.
        woken.sort_unstable();
        woken.dedup();
        if !self.announce {
            woken.clear();
        }
        let payloads = notify_payloads(&woken);
        if !payloads.is_empty() {
            sqlx::query("SELECT pg_notify($1, payload) FROM UNNEST($2::text[]) payload")
                .bind(xibaar_store::INBOX_CHANNEL)
                .bind(payloads)
                .execute(&mut *tx)
                .await
                .context("announcing new inbox items")?;
        }
        tx.commit().await.context("committing the batch")?;
        if self.announce {
            metrics::gauge!("xibaar_projector_checkpoint_sequence").set(end as f64);
        }
        outcome.checkpoint = end;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::notify_payloads;

    #[test]
    fn customer_lists_are_split_under_the_notification_limit_and_none_is_lost() {
        let customers: Vec<String> = (0..3_000).map(|i| format!("customer-{i:06}")).collect();
        let customers: Vec<&str> = customers.iter().map(String::as_str).collect();
        let payloads = notify_payloads(&customers);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() < 8_000));
        let back: Vec<&str> = payloads.iter().flat_map(|p| p.split('\n')).collect();
        assert_eq!(back, customers);
        assert!(notify_payloads(&[]).is_empty());
    }
}

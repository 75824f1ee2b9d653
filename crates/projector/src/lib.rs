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

/// The checkpoint's compare-and-set, from `$from` to `$to` for projection `$projection` (SQL
/// text: literals or parameters), as the sub-statement `advanced` of a `WITH`. Shared by a
/// batch's `BEGIN` ([`checkpoint_begin`]) and the one-statement batch
/// (`deliveries::WRITES_COMMITTING`).
macro_rules! checkpoint_advanced {
    ($projection:literal, $from:literal, $to:literal) => {
        concat!(
            "advanced AS ( \
                 INSERT INTO projection_checkpoints AS c (projection, last_sequence, updated_at) \
                 VALUES (",
            $projection,
            ", ",
            $to,
            ", now()) \
                 ON CONFLICT (projection) DO UPDATE \
                 SET last_sequence = EXCLUDED.last_sequence, updated_at = now() \
                 WHERE c.last_sequence = ",
            $from,
            " RETURNING 1)"
        )
    };
}

/// The text a statement fails with when the checkpoint moved under its compare-and-set
/// ([`refusal::CHECKPOINT_MOVED`]).
macro_rules! checkpoint_moved {
    () => {
        "the checkpoint moved"
    };
}

/// What a statement with [`checkpoint_advanced!`] selects to fail when the checkpoint moved:
/// the cast of a text that is no number (the text depends on the row count, so Postgres cannot
/// evaluate it while planning).
macro_rules! checkpoint_moved_fails {
    () => {
        concat!(
            "SELECT CASE WHEN count(*) = 1 THEN 1 ELSE ('",
            checkpoint_moved!(),
            ": ' || count(*))::int END FROM advanced"
        )
    };
}

mod apply;
mod deliveries;
mod outcomes;
mod read;
pub mod rebuild;
mod refusal;
mod speculate;

use std::{collections::HashSet, sync::Arc, time::Duration};

use anyhow::Context;
use async_nats::jetstream;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use xibaar_core::{Decoded, Event, EventEnvelope};
use xibaar_streams::names;

use read::{Item, read_batches};
use refusal::{BatchError, refused_for_its_data, run_refused};

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
    /// The connection batches are written through, kept while they commit: taking one from
    /// the pool for every batch costs a round trip more (the pool checks it first). A batch
    /// that fails gives it back to the pool.
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
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
    /// Whether every run of outcomes was written as folded ahead of the transaction.
    as_folded: bool,
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

/// `BEGIN` and the checkpoint's compare-and-set from `from` to `to` in one simple query, one
/// round trip instead of two. A simple query takes no parameters: the values are integers and
/// the projection's name a constant. When the checkpoint moved, the query fails, which rolls
/// the transaction back.
fn checkpoint_begin(from: i64, to: i64) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!(
        concat!(
            "BEGIN; WITH ",
            checkpoint_advanced!("'{projection}'", "{from}", "{to}"),
            " ",
            checkpoint_moved_fails!()
        ),
        projection = READ_MODELS,
        from = from,
        to = to
    ))
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
            conn: None,
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
        // A batch read already, and its outcomes folded while the batch before it was in
        // Postgres (module `speculate`), if that fold holds.
        let mut next: Option<(Arc<Vec<Item>>, Option<speculate::Speculation>)> = None;
        loop {
            let (batch, folded) = match next.take() {
                Some(next) if !shutdown.is_cancelled() => next,
                Some(_) => break,
                None => {
                    let batch = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        batch = ready.recv() => batch,
                    };
                    let Some(batch) = batch else { break };
                    (Arc::new(batch), None)
                }
            };
            // Folded now, after the batch before committed, if it was not then: nothing is in
            // flight to lay over what is read.
            let folded = match folded {
                Some(folded) => Some(folded),
                None if self.isolate => None,
                None => speculate::fold(self.pool.clone(), batch.clone(), None).await,
            }
            .map(Arc::new);
            // The next batch, if it is read already, is folded while this one is in Postgres.
            let ahead = match (&folded, ready.try_recv()) {
                (Some(folded), Ok(following)) => {
                    let following = Arc::new(following);
                    let task = tokio::spawn(speculate::fold(
                        self.pool.clone(),
                        following.clone(),
                        Some(folded.clone()),
                    ));
                    Some((following, Some(task)))
                }
                (None, Ok(following)) => Some((Arc::new(following), None)),
                (_, Err(_)) => None,
            };
            let exact;
            (reached, exact) = self.commit_batch(&batch, folded.as_deref()).await;
            next = match ahead {
                Some((following, Some(task))) if exact => {
                    Some((following, task.await.ok().flatten()))
                }
                Some((following, _)) => Some((following, None)),
                None => None,
            };
            // Freeing a batch (its messages and decoded events) took a quarter of this loop's
            // CPU time in a profile; another thread does it while the next batch is in Postgres.
            tokio::task::spawn_blocking(move || drop((batch, folded)));
            progress(reached);
            if until.is_some_and(|u| reached >= u) {
                break;
            }
        }
        drop(reader);
        Ok(reached)
    }

    /// Writes the pending outcomes, in one go or, after a refusal, one at a time: as folded
    /// ahead if `ahead`'s next run is this one, else read and folded now (and nothing after
    /// is taken from `ahead`).
    async fn fold(
        &self,
        tx: &mut sqlx::PgConnection,
        run: &mut Vec<&outcomes::PendingOutcome>,
        ahead: &mut Option<std::slice::Iter<'_, outcomes::Folded>>,
    ) -> Result<(), BatchError> {
        let Some(span) = outcomes::span(run) else {
            return Ok(());
        };
        let folded = ahead
            .as_mut()
            .and_then(Iterator::next)
            .filter(|f| f.span == span);
        if folded.is_none() {
            *ahead = None;
        }
        match folded {
            Some(folded) => deliveries::write(tx, run, folded, self.announce, None).await,
            None => deliveries::apply(tx, run, self.announce).await,
        }
        .map_err(|e| run_refused(e, span.0, run.len(), "a delivery outcome"))?;
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
    /// poison event is parked after [`POISON_ATTEMPTS`] refusals. Its first attempt writes the
    /// runs `folded` ahead, the others read and fold in their transaction. Returns the
    /// checkpoint, and whether the batch committed at its first attempt with every run as
    /// folded ahead: what `deliveries` holds now is then what that fold says.
    async fn commit_batch(
        &mut self,
        batch: &[Item],
        mut folded: Option<&speculate::Speculation>,
    ) -> (u64, bool) {
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut parked_now = 0;
        let outcome = loop {
            let mut conn = self.conn.take();
            let result = self.apply_batch(&mut conn, batch, folded.take()).await;
            self.conn = match (&result, conn) {
                (Ok(_), conn) => conn,
                // A failed `BEGIN` with its compare-and-set leaves its transaction open and
                // aborted, which sqlx does not end (it does end a transaction it began). A
                // connection that cannot even roll back is dropped.
                (Err(_), Some(mut conn)) => {
                    let rolled_back = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                    rolled_back.is_ok().then_some(conn)
                }
                (Err(_), None) => None,
            };
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
        (
            u64::try_from(outcome.checkpoint).unwrap_or(0),
            outcome.as_folded,
        )
    }

    async fn apply_batch(
        &self,
        conn: &mut Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
        batch: &[Item],
        folded: Option<&speculate::Speculation>,
    ) -> Result<BatchOutcome, BatchError> {
        let mut outcome = BatchOutcome::default();
        // The runs folded ahead, taken in order while each is the run met (module `speculate`).
        let mut ahead = folded.filter(|_| !self.isolate).map(|f| f.runs().iter());
        let conn = match conn {
            Some(conn) => conn,
            None => conn.insert(
                self.pool
                    .acquire()
                    .await
                    .context("connecting to Postgres")?,
            ),
        };
        // Every event of the batch past the checkpoint is applied, skipped or parked: the batch
        // ends at its last sequence. The checkpoint is advanced first, so that the batch, like
        // a rebuild's swap, takes the checkpoint before the tables (the two cannot wait for
        // each other) and a second runner is refused before any work.
        let checkpoint: i64 = match self.committed {
            Some(checkpoint) => checkpoint,
            None => sqlx::query_scalar(include_str!("../sql/checkpoint_read.sql"))
                .bind(READ_MODELS)
                .fetch_optional(&mut **conn)
                .await
                .context("reading the checkpoint")?
                .unwrap_or(0),
        };
        let end = batch.iter().map(|i| i.sequence).fold(checkpoint, i64::max);
        // A batch of outcomes alone, folded ahead past the checkpoint this runner committed:
        // one statement, committed on its own (one round trip instead of three).
        let sole = match (folded, self.committed) {
            (Some(folded), Some(_)) if !self.isolate => {
                folded.sole_run(batch, checkpoint, &self.parked)
            }
            _ => None,
        };
        if let Some((run, folded)) = sole {
            deliveries::write(
                conn,
                &run,
                folded,
                self.announce,
                Some((READ_MODELS, checkpoint, end)),
            )
            .await
            .map_err(|e| run_refused(e, folded.span.0, run.len(), "a delivery outcome"))?;
            for item in batch {
                if let Ok(Decoded::Known(envelope)) = &item.decoded {
                    debug_applied(&item.message, envelope, item.sequence);
                }
            }
            outcome.applied = batch.len() as u64;
            outcome.as_folded = true;
            return Ok(self.committed_at(outcome, end));
        }
        let mut tx = if end == checkpoint {
            sqlx::Connection::begin(&mut **conn)
                .await
                .context("starting a transaction")?
        } else {
            sqlx::Connection::begin_with(&mut **conn, checkpoint_begin(checkpoint, end))
                .await
                .context("advancing the checkpoint (another projector may be running)")?
        };
        let mut last = checkpoint;
        // Consecutive outcomes not yet folded, or consecutive device registrations not yet
        // applied (never both: each kind flushes the other first).
        let mut run: Vec<&outcomes::PendingOutcome> = Vec::new();
        let mut registrations: Vec<(i64, &EventEnvelope)> = Vec::new();
        for item in batch {
            let (message, sequence) = (&item.message, item.sequence);
            if sequence <= last {
                outcome.already_applied += 1;
                ahead = None;
                continue;
            }
            // Every path below applies, skips or parks the event, or fails the whole batch.
            last = sequence;
            if self.parked.contains(&sequence) {
                outcome.dead_lettered += 1;
                ahead = None;
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
                self.fold(&mut tx, &mut run, &mut ahead).await?;
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
        self.fold(&mut tx, &mut run, &mut ahead).await?;
        self.register(&mut tx, &mut registrations).await?;
        tx.commit().await.context("committing the batch")?;
        outcome.as_folded = ahead.is_some_and(|mut a| a.next().is_none());
        Ok(self.committed_at(outcome, end))
    }

    /// A batch's outcome once it committed with the checkpoint at `end`.
    fn committed_at(&self, mut outcome: BatchOutcome, end: i64) -> BatchOutcome {
        if self.announce {
            metrics::gauge!("xibaar_projector_checkpoint_sequence").set(end as f64);
        }
        outcome.checkpoint = end;
        outcome
    }
}

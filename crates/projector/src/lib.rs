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
/// batch's `BEGIN` ([`batch::checkpoint_begin`]) and the one-statement batch
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
mod batch;
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
use xibaar_streams::names;

use read::{Item, read_batches};

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

    async fn checkpoint(&self) -> anyhow::Result<i64> {
        let checkpoint = sqlx::query_scalar(include_str!("../sql/checkpoint_read.sql"))
            .bind(READ_MODELS)
            .fetch_optional(&self.pool)
            .await?;
        Ok(checkpoint.unwrap_or(0))
    }
}

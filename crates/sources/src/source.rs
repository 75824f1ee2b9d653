//! One source at work: poll, turn rows into notifications and events, store them, then move
//! the watermark. The next batch is read while one is being stored.
//!
//! Exactly once across crashes: before a batch is published its range is recorded as in
//! flight (compare-and-set on the position); the watermark moves past it only after JetStream
//! has acknowledged every message. A crash in between reads the same rows again on restart and
//! pages them the same way; the pages carry the same ids, so JetStream's duplicate window drops
//! the repeats, and since the window (24 h) can pass before a restart, the pages of the
//! in-flight range are also looked up in their command stream, which keeps them 35 days, and
//! skipped when found (`batch.rs`). A batch in flight for longer than that stream's retention
//! cannot be told apart: the source pauses and says so.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use xibaar_config::{SqlConnection, SqlLogin};
use xibaar_streams::retry::Backoff;

use crate::{
    emit::{self, Origin},
    plan::Plan,
    row::Row,
    sql::{self, Connection, ErrorClass, SqlError},
    state::{self, InFlight, Position, SourceStatus},
};

pub struct Runner {
    /// Shared with the tasks that build a batch's rows.
    pub plan: std::sync::Arc<Plan>,
    pub connection: SqlConnection,
    pub login: SqlLogin,
    pub js: jetstream::Context,
    pub store: kv::Store,
    pub stop: CancellationToken,
}

/// How often a source reading through a backlog looks for a pause and writes its status.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The batch read while the one before it was stored, from where that one left the position.
pub(crate) struct Prefetched {
    read: Result<Read, SqlError>,
    /// The position the batch before it left (its watermark is where this batch starts), and
    /// its revision.
    position: (Position, u64),
}

/// A batch's rows, and what each becomes when that was built as it was read (empty: read
/// through without sending, at a first start).
pub(crate) type Read = (Vec<Row>, Vec<Built>);
pub(crate) type Built = Result<emit::Emitted, String>;

/// Rows built together by one task while the read goes on.
const BUILD_CHUNK: usize = 250;

/// Rows a building task builds before it lets other tasks run: about 40 µs of work.
const BUILD_TURN: usize = 32;

/// Up to a batch of rows above `after`. When `build`, what each becomes is built as the rows
/// arrive, a chunk at a time by tasks of their own, so that building (templates, validation,
/// JSON: more than reading a row costs) runs on the other core while the read goes on.
///
/// The tasks run on the runtime's workers, yielding every [`BUILD_TURN`] rows, not on the
/// blocking pool: there up to ten threads built at once, crowding the read and the stores of
/// the same two cores, and the source turned 10 % fewer rows a second into notifications
/// (docs/benchmarks.md).
async fn read(
    plan: &std::sync::Arc<Plan>,
    client: &mut Connection,
    after: &[i64],
    timeout: Duration,
    build: bool,
) -> Result<Read, SqlError> {
    let now = Utc::now();
    let mut rows = Vec::new();
    let mut chunk = Vec::new();
    let mut building = Vec::new();
    let mut hand_over = |chunk: Vec<Row>| {
        let plan = plan.clone();
        building.push(tokio::spawn(async move {
            let mut built = Vec::with_capacity(chunk.len());
            for rows in chunk.chunks(BUILD_TURN) {
                built.extend(rows.iter().map(|row| emit::emit(&plan, row, now)));
                tokio::task::yield_now().await;
            }
            (chunk, built)
        }));
    };
    sql::fetch_each(
        client,
        &plan.statement,
        plan.batch_size,
        after,
        timeout,
        |row| {
            if !build {
                rows.push(row);
                return;
            }
            chunk.push(row);
            if chunk.len() == BUILD_CHUNK {
                hand_over(std::mem::take(&mut chunk));
            }
        },
    )
    .await?;
    if !build {
        return Ok((rows, Vec::new()));
    }
    if !chunk.is_empty() {
        hand_over(chunk);
    }
    let mut built = Vec::new();
    for part in building {
        let (part_rows, part_built) = match part.await {
            Ok(part) => part,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only when the runtime is shutting down.
            Err(e) => {
                return Err(SqlError::io(
                    "building rows",
                    std::io::Error::new(std::io::ErrorKind::Interrupted, e),
                ));
            }
        };
        rows.extend(part_rows);
        built.extend(part_built);
    }
    Ok((rows, built))
}

/// Why a poll stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PollError {
    #[error("{0}")]
    Sql(#[from] SqlError),
    /// NATS failed or the position changed under us: try again.
    #[error("{0}")]
    Nats(String),
    /// Needs an operator: the source pauses with this reason.
    #[error("{0}")]
    Pause(String),
}

impl Runner {
    pub async fn run(mut self) {
        let name = self.plan.name.clone();
        let mut status = SourceStatus {
            state: "starting".into(),
            kind: format!("{:?}", self.plan.kind).to_lowercase(),
            ..Default::default()
        };
        let mut client: Option<Connection> = None;
        let mut prefetched = None;
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        // While reading through a backlog (one full batch after another) the pause and the
        // status are looked at and written once every `REPORT_EVERY`, not every batch.
        let mut reported_at: Option<tokio::time::Instant> = None;
        while !self.stop.is_cancelled() {
            let draining = reported_at.is_some_and(|at| at.elapsed() < REPORT_EVERY);
            match if draining {
                Ok(None)
            } else {
                state::paused(&self.store, &name).await
            } {
                Ok(Some(reason)) => {
                    client = None;
                    prefetched = None;
                    status.state = "paused".into();
                    status.last_error = Some(reason);
                    self.publish(&mut status, true).await;
                    self.sleep(self.plan.poll_interval.min(Duration::from_secs(2)))
                        .await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    self.failed(&mut status, "nats", e).await;
                    self.sleep(backoff.next_delay()).await;
                    continue;
                }
            }
            let result = if client.is_some() {
                self.poll(&mut client, &mut status, &mut prefetched).await
            } else {
                match self.open().await {
                    Ok(c) => {
                        client = Some(c);
                        continue;
                    }
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(full) => {
                    backoff.reset();
                    status.state = "running".into();
                    if !full || !draining {
                        self.publish(&mut status, false).await;
                        reported_at = full.then(tokio::time::Instant::now);
                    }
                    if !full {
                        self.sleep(self.plan.poll_interval).await;
                    }
                }
                Err(PollError::Sql(e)) if e.class == ErrorClass::Transient => {
                    // The connection may be mid-answer: open another.
                    client = None;
                    prefetched = None;
                    self.failed(&mut status, e.class.as_str(), e.message).await;
                    self.sleep(backoff.next_delay()).await;
                }
                Err(PollError::Sql(e)) => {
                    client = None;
                    prefetched = None;
                    let reason = format!("{} error: {}", e.class.as_str(), e.message);
                    self.failed(&mut status, e.class.as_str(), reason.clone())
                        .await;
                    self.pause(&mut status, &reason).await;
                }
                Err(PollError::Pause(reason)) => {
                    self.failed(&mut status, "guard", reason.clone()).await;
                    self.pause(&mut status, &reason).await;
                }
                Err(PollError::Nats(e)) => {
                    self.failed(&mut status, "nats", e).await;
                    self.sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Connects and, the first time, binds the plan to the query's columns.
    async fn open(&mut self) -> Result<Connection, PollError> {
        let mut client = sql::connect(&self.connection, &self.login).await?;
        if self.plan.columns.is_none() {
            let columns =
                sql::columns(&mut client, &self.plan.statement, self.plan.watermark.len()).await?;
            std::sync::Arc::make_mut(&mut self.plan)
                .bind(&columns)
                .map_err(|e| PollError::Pause(e.to_string()))?;
        }
        Ok(client)
    }

    async fn pause(&self, status: &mut SourceStatus, reason: &str) {
        tracing::error!(source = %self.plan.name, reason, "source paused; `xibaar sources resume` after the cause is fixed");
        if let Err(e) = state::set_paused(&self.store, &self.plan.name, Some(reason)).await {
            tracing::warn!(source = %self.plan.name, error = %e, "could not record the pause");
        }
        status.state = "paused".into();
        self.publish(status, true).await;
    }

    async fn failed(&self, status: &mut SourceStatus, class: &str, message: String) {
        let name = self.plan.name.clone();
        tracing::warn!(source = %name, class, error = %message, "source poll failed");
        metrics::counter!("xibaar_source_errors_total", "source" => name, "class" => class.to_owned())
            .increment(1);
        *status.errors.entry(class.to_owned()).or_default() += 1;
        status.last_error = Some(message);
        status.state = "waiting".into();
        self.publish(status, false).await;
    }

    async fn publish(&self, status: &mut SourceStatus, paused: bool) {
        status.updated_at = Some(Utc::now());
        metrics::gauge!("xibaar_source_paused", "source" => self.plan.name.clone())
            .set(if paused { 1.0 } else { 0.0 });
        if let Some(lag) = status.lag_seconds {
            metrics::gauge!("xibaar_source_lag_seconds", "source" => self.plan.name.clone())
                .set(lag);
        }
        state::publish_status(&self.store, &self.plan.name, status).await;
    }

    async fn sleep(&self, duration: Duration) {
        tokio::select! {
            () = self.stop.cancelled() => {}
            () = tokio::time::sleep(duration) => {}
        }
    }

    /// One batch: `true` when it was full (more rows are waiting).
    /// `client`: open when called; `None` after, when the next batch's read could not give
    /// the connection back.
    async fn poll(
        &self,
        client: &mut Option<Connection>,
        status: &mut SourceStatus,
        prefetched_slot: &mut Option<Prefetched>,
    ) -> Result<bool, PollError> {
        let plan = &self.plan;
        let columns = plan.columns.as_ref().expect("bound when connected");
        // Right after a batch of its own, the source knows its position (any other writer
        // makes the compare-and-set below fail, and the next poll reads it again).
        let (prefetched, (position, revision)) = match prefetched_slot.take() {
            Some(Prefetched { read, position }) => (Some(read), position),
            None => (
                None,
                state::position(&self.store, &plan.name)
                    .await
                    .map_err(PollError::Nats)?,
            ),
        };
        let after = position
            .watermark
            .clone()
            .unwrap_or_else(|| vec![i64::MIN; plan.watermark.len()]);
        let skipping = position.skipping
            || position.watermark.is_none() && plan.start == xibaar_config::SourceStart::Latest;
        let (rows, built) = match prefetched {
            Some(read) => read?,
            None => {
                read(
                    plan,
                    client.as_mut().expect("open when polled"),
                    &after,
                    self.connection.query_timeout,
                    !skipping,
                )
                .await?
            }
        };
        let name = plan.name.clone();
        metrics::counter!("xibaar_source_rows_read_total", "source" => name.clone())
            .increment(rows.len() as u64);
        status.rows_read += rows.len() as u64;
        let full = rows.len() >= plan.batch_size as usize;
        if skipping {
            // A first start after the latest row: what is there is read through and not sent.
            let through = through(&ordered(&rows, columns, &after)?, &after);
            let moved = Position {
                watermark: Some(through),
                in_flight: None,
                skipping: full,
            };
            state::record(&self.store, &plan.name, &moved, revision)
                .await
                .map_err(PollError::Nats)?;
            status.watermark = moved.watermark;
            return Ok(full);
        }
        let Some(last) = rows.last() else {
            // Caught up: nothing is older than now.
            status.lag_seconds = status.newest_row_at.map(|_| 0.0);
            status.watermark = position.watermark;
            return Ok(false);
        };
        let origins = ordered(&rows, columns, &after)?;
        let through = through(&origins, &after);
        if let Some(at) = emit::row_time(columns, last) {
            status.newest_row_at = Some(at);
            status.lag_seconds =
                Some(((Utc::now() - at).num_milliseconds() as f64 / 1000.0).max(0.0));
        }
        // The next batch is read while this one is stored, on a task of its own so that
        // decoding and building it use another core: it starts where this one ends, as soon
        // as this one's end is known.
        let reading = full.then(|| {
            let mut connection = client.take().expect("open when polled");
            let (next_plan, from, timeout) =
                (plan.clone(), through.clone(), self.connection.query_timeout);
            tokio::spawn(async move {
                let read = read(&next_plan, &mut connection, &from, timeout, true).await;
                (connection, read)
            })
        });
        let stored = async {
            let recovering = position.in_flight.clone();
            if let Some(in_flight) = &recovering {
                self.guard_retention(in_flight).await?;
            }
            let revision = state::record(
                &self.store,
                &plan.name,
                &Position {
                    watermark: position.watermark.clone(),
                    skipping: false,
                    in_flight: Some(InFlight {
                        through: through.clone(),
                        rows: rows.len() as u32,
                        started_at: recovering.as_ref().map_or_else(Utc::now, |f| f.started_at),
                    }),
                },
                revision,
            )
            .await
            .map_err(PollError::Nats)?;
            let written = self.write_batch(&rows, built, &origins, recovering).await?;
            let moved = Position {
                watermark: Some(through.clone()),
                in_flight: None,
                skipping: false,
            };
            let revision = state::record(&self.store, &plan.name, &moved, revision)
                .await
                .map_err(PollError::Nats)?;
            Ok::<_, PollError>((written, (moved, revision)))
        }
        .await;
        // The connection comes back whatever happened to this batch (the read is bounded by
        // its own timeout).
        let next = match reading {
            Some(reading) => match reading.await {
                Ok((connection, read)) => {
                    *client = Some(connection);
                    Some(read)
                }
                Err(_) => None,
            },
            None => None,
        };
        let (written, position) = stored?;
        metrics::counter!("xibaar_source_emitted_total", "source" => name.clone())
            .increment(written.emitted);
        metrics::counter!("xibaar_source_rejected_total", "source" => name)
            .increment(written.rejected);
        status.emitted += written.emitted;
        status.rejected += written.rejected;
        *prefetched_slot = next.map(|read| Prefetched { read, position });
        status.watermark = Some(through);
        Ok(full)
    }

    /// A batch in flight longer than its command stream keeps commands cannot be checked.
    async fn guard_retention(&self, in_flight: &InFlight) -> Result<(), PollError> {
        let Some(n) = &self.plan.notifications else {
            return Ok(());
        };
        let stream = self
            .js
            .get_stream(n.priority.command_stream())
            .await
            .map_err(|e| PollError::Nats(e.to_string()))?;
        let max_age = stream.cached_info().config.max_age;
        let age = (Utc::now() - in_flight.started_at)
            .to_std()
            .unwrap_or_default();
        if !max_age.is_zero() && age >= max_age {
            return Err(PollError::Pause(format!(
                "a batch (rows through watermark {:?}) has been in flight since {}, longer than \
                 {} keeps commands: which of its rows were sent cannot be told. Resume with \
                 `xibaar sources resume {} --forget-in-flight` to send them again",
                in_flight.through,
                in_flight.started_at,
                n.priority.command_stream(),
                self.plan.name,
            )));
        }
        Ok(())
    }
}

/// Each row's place, after checking the rows come above `after` in watermark order (a query
/// that does not filter or order by its watermark would repeat or skip rows).
fn ordered(
    rows: &[Row],
    columns: &crate::plan::Columns,
    after: &[i64],
) -> Result<Vec<Origin>, PollError> {
    let mut origins: Vec<Origin> = Vec::with_capacity(rows.len());
    for row in rows {
        let origin = Origin::of(row, columns).map_err(PollError::Pause)?;
        let previous = origins.last().map_or(after, |o| o.watermark.as_slice());
        if origin.watermark.as_slice() <= previous {
            return Err(PollError::Pause(format!(
                "the query returned row {} at watermark {:?}, not above {:?}: it must select \
                 rows above @watermark, ORDER BY the watermark columns",
                origin.key, origin.watermark, previous
            )));
        }
        origins.push(origin);
    }
    Ok(origins)
}

/// The watermark a batch moves to: its last row's, or where it started when empty.
fn through(origins: &[Origin], after: &[i64]) -> Vec<i64> {
    origins
        .last()
        .map_or_else(|| after.to_vec(), |o| o.watermark.clone())
}

//! One source at work: poll, turn rows into notifications and events, store them, then move
//! the watermark. The next batches are read while one is being stored.
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
    read::{Read, ReadAhead, read},
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
    /// Whether pages go out whole, for dispatchers of an earlier version.
    pub dispatchers: crate::dispatchers::Dispatchers,
}

/// How often a source reading through a backlog looks for a pause and writes its status.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The batch read while the one before it was stored, from where that one left the position.
pub(crate) struct Prefetched {
    batch: Result<Read, SqlError>,
    /// Its rows' places, when the write that moved the watermark past the batch before it
    /// also recorded it in flight.
    in_flight: Option<Vec<Origin>>,
    /// Reading the batch after it (when it was full).
    ahead: Option<ReadAhead>,
    /// The position the batch before it left (its watermark is where this batch starts), and
    /// its revision.
    position: (Position, u64),
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
            // While batches are read ahead, their reader holds the connection.
            let result = if client.is_some() || prefetched.is_some() {
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
    /// `client`: open when called without batches read ahead; `None` after while a reader
    /// holds it, or when the reader could not give it back.
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
            Some(Prefetched {
                batch,
                in_flight,
                ahead,
                position,
            }) => (Some((batch, in_flight, ahead)), position),
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
        let (rows, built, recorded, mut ahead) = match prefetched {
            Some((batch, in_flight, ahead)) => {
                let (rows, built) = batch?;
                (rows, built, in_flight, ahead)
            }
            None => read(
                plan,
                client.as_mut().expect("open when polled"),
                &after,
                self.connection.query_timeout,
                !skipping,
            )
            .await
            .map(|(rows, built)| (rows, built, None, None))?,
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
        let recorded_in_flight = recorded.is_some();
        let origins = match recorded {
            Some(origins) => origins,
            None => ordered(&rows, columns, &after)?,
        };
        let through = through(&origins, &after);
        if let Some(at) = emit::row_time(columns, last) {
            status.newest_row_at = Some(at);
            status.lag_seconds =
                Some(((Utc::now() - at).num_milliseconds() as f64 / 1000.0).max(0.0));
        }
        // The next batches are read while this one is stored, by a task of their own so that
        // decoding and building them use another core: they start where this one ends, as
        // soon as this one's end is known.
        if full && ahead.is_none() {
            ahead = Some(ReadAhead::start(
                plan.clone(),
                client.take().expect("open when polled"),
                through.clone(),
                self.connection.query_timeout,
            ));
        }
        let recovering = position.in_flight.clone();
        let revision = if recorded_in_flight {
            revision
        } else {
            if let Some(in_flight) = &recovering {
                self.guard_retention(in_flight).await?;
            }
            state::record(
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
            .map_err(PollError::Nats)?
        };
        // On an error the batches read ahead go with their reader and its connection: the
        // next poll starts again from the stored position, on a new connection.
        let written = self.write_batch(&rows, built, &origins, recovering).await?;
        // The watermark moves past this batch. The next one is taken first when it was read
        // ahead, so that the same compare-and-set records it in flight: one write of the
        // position a batch, not two.
        let next = match ahead {
            Some(ahead) => Some(ahead.take(plan.batch_size, client).await),
            None => None,
        };
        let next_origins = match &next {
            Some((Ok((next_rows, _)), _)) if !next_rows.is_empty() => {
                ordered(next_rows, columns, &through).ok()
            }
            _ => None,
        };
        let moved = Position {
            watermark: Some(through.clone()),
            in_flight: next_origins.as_ref().map(|origins| InFlight {
                through: origins.last().expect("not empty").watermark.clone(),
                rows: origins.len() as u32,
                started_at: Utc::now(),
            }),
            skipping: false,
        };
        let revision = state::record(&self.store, &plan.name, &moved, revision)
            .await
            .map_err(PollError::Nats)?;
        let position = Position {
            in_flight: None,
            ..moved
        };
        metrics::counter!("xibaar_source_emitted_total", "source" => name.clone())
            .increment(written.emitted);
        metrics::counter!("xibaar_source_rejected_total", "source" => name)
            .increment(written.rejected);
        status.emitted += written.emitted;
        status.rejected += written.rejected;
        *prefetched_slot = next.map(|(batch, ahead)| Prefetched {
            batch,
            in_flight: next_origins,
            ahead,
            position: (position, revision),
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{plan::Columns, row::Value};

    #[test]
    fn rows_are_placed_only_above_where_the_batch_starts_in_watermark_order() {
        let columns = Columns {
            names: ["ID"].map(String::from).to_vec(),
            watermark: vec![0],
            key: 0,
            time: None,
            customer: None,
            attributes: Default::default(),
        };
        let rows =
            |ids: &[i64]| -> Vec<Row> { ids.iter().map(|i| Row(vec![Value::Int(*i)])).collect() };
        let placed = ordered(&rows(&[3, 5, 9]), &columns, &[2]).unwrap();
        assert_eq!(
            placed.iter().map(|o| o.watermark[0]).collect::<Vec<_>>(),
            [3, 5, 9]
        );
        assert_eq!(through(&placed, &[2]), [9]);
        assert_eq!(through(&[], &[2]), [2]);
        for (ids, after) in [(&[3, 5, 5][..], 2), (&[3, 4][..], 3), (&[6, 4][..], 0)] {
            match ordered(&rows(ids), &columns, &[after]) {
                Err(PollError::Pause(e)) => {
                    assert!(
                        e.contains("not above") && e.contains("ORDER BY"),
                        "{ids:?}: {e}"
                    )
                }
                other => panic!("{ids:?} after {after}: {:?}", other.map(|o| o.len())),
            }
        }
    }
}

//! One batch applied: its runs of outcomes and registrations written in one transaction with
//! the checkpoint's compare-and-set (or, for a lone folded run, one statement), retried until it
//! commits, a poison event parked after [`POISON_ATTEMPTS`] refusals.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use xibaar_core::{Decoded, Event, EventEnvelope};

use crate::{
    POISON_ATTEMPTS, Projector, READ_MODELS, apply, deliveries, outcomes,
    read::Item,
    refusal::{BatchError, refused_for_its_data, run_refused},
    speculate,
};

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

    /// Applies the batch, retrying until it commits (Postgres may be away for a while); a
    /// poison event is parked after [`POISON_ATTEMPTS`] refusals. Its first attempt writes the
    /// runs `folded` ahead, the others read and fold in their transaction. Returns the
    /// checkpoint, and whether the batch committed at its first attempt with every run as
    /// folded ahead: what `deliveries` holds now is then what that fold says.
    pub(crate) async fn commit_batch(
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

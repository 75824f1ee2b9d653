//! A batch's outcomes folded ahead of its transaction, while the batch before it is in
//! Postgres: the fold's CPU then overlaps Postgres's work instead of following it.
//!
//! The fold needs what `deliveries` holds for the batch's keys. Read while the batch before is
//! still being written, that is the state after the batch before the one in flight, or after
//! the one in flight if it committed meanwhile: the one in flight's own writes, known to this
//! process, are laid over what was read, which gives the same view either way. That view is
//! exact only if nobody else wrote `deliveries` meanwhile and the batch in flight wrote just
//! what its own fold said, so a folded batch is used only when:
//! - the batch before it committed at its first attempt, every run of it written from its own
//!   folding (else the next batch is folded again after that commit);
//! - no other writer came between: every batch advances the checkpoint by compare-and-set, so
//!   a second runner's commit fails this one's transaction, and the retry reads everything in
//!   its transaction as before;
//! - each run the transaction meets is the run folded (same first and last sequence, same
//!   length); from the first that is not, or an event skipped or parked, the rest of the batch
//!   is read and folded in its transaction.
//!
//! The notifications' counters are not folded ahead: their rows are read in the transaction,
//! which also sees the events applied earlier in the same batch.

use std::sync::Arc;

use sqlx::PgPool;

use crate::{
    Item, deliveries,
    outcomes::{self, Folded, PendingOutcome, View},
};

/// A batch with its runs of outcomes folded ahead of its transaction.
pub(crate) struct Speculation {
    batch: Arc<Vec<Item>>,
    runs: Vec<Folded>,
}

impl Speculation {
    /// The batch's runs, folded, in order.
    pub(crate) fn runs(&self) -> &[Folded] {
        &self.runs
    }

    /// `batch`'s outcomes as one run, and its fold, when the batch is nothing else: every
    /// event past `checkpoint` and not parked records outcomes, and this fold is of exactly
    /// that run. Such a batch is one statement, which also moves the checkpoint
    /// (`deliveries::write` with the checkpoint's advance).
    pub(crate) fn sole_run<'a>(
        &'a self,
        batch: &'a [Item],
        checkpoint: i64,
        parked: &std::collections::HashSet<i64>,
    ) -> Option<(Vec<&'a PendingOutcome>, &'a Folded)> {
        let [folded] = self.runs.as_slice() else {
            return None;
        };
        if batch.iter().any(|item| {
            item.sequence <= checkpoint
                || parked.contains(&item.sequence)
                || item.pending.is_empty()
        }) {
            return None;
        }
        let run: Vec<&PendingOutcome> = batch.iter().flat_map(|item| &item.pending).collect();
        (outcomes::span(&run) == Some(folded.span)).then_some((run, folded))
    }
}

/// The batch's runs of consecutive outcomes, as its transaction meets them when no event is
/// skipped: any other event ends a run.
fn runs(batch: &[Item]) -> Vec<Vec<&PendingOutcome>> {
    let mut runs = Vec::new();
    let mut run: Vec<&PendingOutcome> = Vec::new();
    for item in batch {
        if item.pending.is_empty() {
            if !run.is_empty() {
                runs.push(std::mem::take(&mut run));
            }
        } else {
            run.extend(&item.pending);
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// Folds `batch`'s outcomes over what `deliveries` holds for them, read through `pool`, with
/// the writes of `before` (the batch in flight, if any) laid over it; `None` if that read
/// fails (the batch's transaction then reads and folds them itself).
pub(crate) async fn fold(
    pool: PgPool,
    batch: Arc<Vec<Item>>,
    before: Option<Arc<Speculation>>,
) -> Option<Speculation> {
    let folded = {
        let runs = runs(&batch);
        let all: Vec<&PendingOutcome> = runs.iter().flatten().copied().collect();
        let rows = if all.is_empty() {
            Vec::new()
        } else {
            match read(&pool, &all).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::debug!(error = %e, "folding a batch ahead failed; it is folded in its transaction");
                    return None;
                }
            }
        };
        let mut view = View::of_rows(&rows);
        if let Some(before) = &before {
            for (run, folded) in self::runs(&before.batch).iter().zip(&before.runs) {
                view.overlay(run, folded);
            }
        }
        runs.iter()
            .map(|run| outcomes::fold(run, &mut view))
            .collect()
    };
    Some(Speculation {
        batch,
        runs: folded,
    })
}

async fn read(
    pool: &PgPool,
    outcomes: &[&PendingOutcome],
) -> Result<Vec<outcomes::HeldRow>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    deliveries::read(&mut conn, outcomes).await
}

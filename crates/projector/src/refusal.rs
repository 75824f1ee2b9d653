//! Why a batch did not commit, and whether Postgres refused an event for its data.

/// What a failed bulk statement over a run of `len` events of `event_type` from `first` on
/// means for the batch.
pub(crate) fn run_refused(
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
pub(crate) enum BatchError {
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
///
/// A failed compare-and-set on the checkpoint ([`CHECKPOINT_MOVED`], a cast error of class 22
/// by construction) is such a conflict too: another runner or a rebuild's swap moved it.
pub(crate) fn refused_for_its_data(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            !db.message().contains(CHECKPOINT_MOVED)
                && db.code().is_some_and(|code| {
                    code != "23505" && (code.starts_with("22") || code.starts_with("23"))
                })
        }
        _ => false,
    }
}

/// The text of the error a statement with the checkpoint's compare-and-set fails with when the
/// checkpoint moved (`checkpoint_moved_fails!`).
pub(crate) const CHECKPOINT_MOVED: &str = checkpoint_moved!();

//! One archiver works at a time: it holds the `lease` key of `XIBAAR_ARCHIVE` and renews it
//! (compare-and-set on its revision) every third of `archive.lease`. Others stand by and take
//! over when the key's revision has not moved for a whole lease, as measured by their own
//! monotonic clock, so clocks that disagree between servers do not matter.
//!
//! The lease keeps archivers from doing the same work; it is not what keeps the archive
//! whole. That is the write-once puts and the compare-and-set of the position: an archiver
//! that lost its lease without knowing it (paused, cut off) can only fail to write.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const LEASE_KEY: &str = "lease";

/// A held lease; `lost` is cancelled when a renewal is refused or has not succeeded for a
/// whole lease.
#[derive(Debug)]
pub struct Held {
    pub lost: CancellationToken,
    /// The lease's revision as last renewed.
    revision: Arc<AtomicU64>,
    renewer: tokio_util::task::AbortOnDropHandle<()>,
}

impl Held {
    /// Gives the lease up at a clean stop, so a standby takes over at once instead of after
    /// a whole lease. Only this holder's revision is deleted.
    pub async fn release(self, kv: &kv::Store) {
        self.renewer.abort();
        let revision = self.revision.load(Ordering::SeqCst);
        if let Err(e) = kv.delete_expect_revision(LEASE_KEY, Some(revision)).await {
            tracing::debug!(error = %e, "the archiver lease was not released; it runs out instead");
        }
    }
}

fn claim(holder: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "holder": holder }).to_string())
}

/// Waits for the lease and takes it; `None` when `shutdown` comes first.
pub async fn acquire(
    kv: &kv::Store,
    holder: &str,
    lease: Duration,
    shutdown: &CancellationToken,
) -> Option<Held> {
    // The revision last seen held by someone else, and since when.
    let mut seen: Option<(u64, Instant)> = None;
    let poll = lease / 5;
    loop {
        let taken = match kv.entry(LEASE_KEY).await {
            Ok(None) => kv.create(LEASE_KEY, claim(holder)).await.ok(),
            Ok(Some(entry)) => {
                let stale = match seen {
                    Some((revision, since)) if revision == entry.revision => {
                        since.elapsed() >= lease
                    }
                    _ => {
                        seen = Some((entry.revision, Instant::now()));
                        false
                    }
                };
                let ours = serde_json::from_slice::<serde_json::Value>(&entry.value)
                    .is_ok_and(|v| v["holder"] == holder);
                if stale || ours || entry.operation != kv::Operation::Put {
                    kv.update(LEASE_KEY, claim(holder), entry.revision)
                        .await
                        .ok()
                } else {
                    None
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the archiver lease failed; retrying");
                None
            }
        };
        if let Some(revision) = taken {
            tracing::info!(holder, "archiver lease taken");
            let lost = CancellationToken::new();
            let revision = Arc::new(AtomicU64::new(revision));
            let renewer = tokio::spawn(renew(
                kv.clone(),
                holder.to_owned(),
                revision.clone(),
                lease,
                lost.clone(),
            ));
            return Some(Held {
                lost,
                revision,
                renewer: tokio_util::task::AbortOnDropHandle::new(renewer),
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

async fn renew(
    kv: kv::Store,
    holder: String,
    revision: Arc<AtomicU64>,
    lease: Duration,
    lost: CancellationToken,
) {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(lease / 3).await;
        let current = revision.load(Ordering::SeqCst);
        match kv.update(LEASE_KEY, claim(&holder), current).await {
            Ok(r) => {
                revision.store(r, Ordering::SeqCst);
                renewed = Instant::now();
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                tracing::warn!("another archiver took the lease; this one stops");
                lost.cancel();
                return;
            }
            Err(e) => {
                // Standbys may take over a whole lease after the last renewal they saw.
                if renewed.elapsed() >= lease / 2 {
                    tracing::warn!(error = %e, "the archiver lease could not be renewed in time; this one stops");
                    lost.cancel();
                    return;
                }
                tracing::warn!(error = %e, "renewing the archiver lease failed; retrying");
            }
        }
    }
}

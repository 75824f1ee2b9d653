//! Sealing a segment: its upload (segment, then manifest, written once), the new position
//! by compare-and-set, and adopting what a stopped run left at the next sequence.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use xibaar_streams::retry::Backoff;

use crate::{
    archiver::{POSITION_KEY, Position, Stop},
    segment::Writer,
    store::{ArchiveStore, IndexEntry, Put, StoreError},
};

/// A segment's upload in flight; the position and revision it leaves. Dropped (aborted) when
/// the run ends: an upload cut short is a crash mid-upload, which the next run adopts.
pub(crate) type Upload = tokio_util::task::AbortOnDropHandle<Result<(Position, u64), Stop>>;

/// Where sealing stands in a run: the upload in flight (sealing overlaps reading the next
/// segment) and the position recorded by the last finished one, with its revision.
pub(crate) struct Sealed {
    pub(crate) uploading: Option<Upload>,
    pub(crate) position: Position,
    /// The position's revision in `XIBAAR_ARCHIVE` (0: never written).
    pub(crate) revision: u64,
}

impl Sealed {
    /// Waits for the upload in flight, if any, and takes the position it recorded.
    pub(crate) async fn settle(&mut self) -> Result<(), Stop> {
        let Some(upload) = self.uploading.take() else {
            return Ok(());
        };
        let (position, revision) = upload
            .await
            .map_err(|e| Stop::Failed(anyhow::anyhow!("the upload task failed: {e}")))??;
        self.position = position;
        self.revision = revision;
        Ok(())
    }
}

/// Writes a segment, its manifest and the new position, retrying while S3 is away.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn upload(
    store: ArchiveStore,
    kv: kv::Store,
    lost: CancellationToken,
    shutdown: CancellationToken,
    body: Bytes,
    manifest: crate::segment::Manifest,
    mut position: Position,
    revision: u64,
) -> Result<(Position, u64), Stop> {
    let started = std::time::Instant::now();
    let segment_key = store.segment_key(manifest.first_sequence);
    let entry = IndexEntry::of(&manifest);
    let manifest_body =
        Bytes::from(serde_json::to_vec_pretty(&manifest).expect("a manifest serializes"));
    let mut backoff = Backoff::for_nats();
    // Segment first, then manifest: a manifest never names a missing segment.
    let mut segment_done = false;
    loop {
        if lost.is_cancelled() {
            return Err(Stop::LeaseLost);
        }
        let attempt = async {
            if !segment_done {
                if store
                    .put_new(&segment_key, body.clone(), "application/gzip")
                    .await?
                    == Put::AlreadyThere
                {
                    return Ok::<_, StoreError>(false);
                }
                segment_done = true;
            }
            store
                .put_new(
                    &store.manifest_key(&entry),
                    manifest_body.clone(),
                    "application/json",
                )
                .await?;
            Ok(true)
        };
        match attempt.await {
            Ok(true) => break,
            Ok(false) => {
                // Someone wrote this segment already: adopt it and read on after it.
                tracing::warn!(
                    first = manifest.first_sequence,
                    "the segment was written by another archiver; adopting it"
                );
                return match adopt(&store, manifest.first_sequence).await {
                    Ok(Some(last)) => {
                        position.last_sequence = last;
                        record(&kv, position, revision).await?;
                        Err(Stop::Moved)
                    }
                    Ok(None) => Err(Stop::Failed(anyhow::anyhow!(
                        "segment {segment_key} vanished"
                    ))),
                    Err(e) => Err(Stop::Failed(e.into())),
                };
            }
            Err(e) => {
                metrics::counter!("xibaar_archive_upload_failures_total").increment(1);
                let wait = backoff.next_delay().max(Duration::from_millis(250));
                tracing::warn!(error = %e, retry_in = ?wait, "writing a segment failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(Stop::Shutdown),
                    _ = lost.cancelled() => return Err(Stop::LeaseLost),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    position.last_sequence = manifest.last_sequence;
    let revision = record(&kv, position, revision).await?;
    metrics::counter!("xibaar_archive_segments_total").increment(1);
    metrics::counter!("xibaar_archive_events_total").increment(manifest.count);
    metrics::counter!("xibaar_archive_bytes_total").increment(manifest.compressed_bytes);
    metrics::gauge!("xibaar_archive_position").set(manifest.last_sequence as f64);
    metrics::histogram!("xibaar_archive_seal_seconds").record(started.elapsed().as_secs_f64());
    tracing::info!(
        first = manifest.first_sequence,
        last = manifest.last_sequence,
        bytes = manifest.compressed_bytes,
        "segment sealed"
    );
    Ok((position, revision))
}

/// The segment starting at `first`, if one is there: its manifest, or a manifest written now
/// from the segment itself. Returns its last sequence.
pub(crate) async fn adopt(store: &ArchiveStore, first: u64) -> Result<Option<u64>, StoreError> {
    if let Some(manifest) = store.manifest_starting_at(first).await? {
        return Ok(Some(manifest.last_sequence));
    }
    let Some((body, records)) = store.unsealed(first).await? else {
        return Ok(None);
    };
    let mut writer = Writer::default();
    for r in &records {
        writer.push(r);
    }
    let Some((_, mut manifest)) = writer.finish() else {
        return Ok(None);
    };
    // The manifest describes the object as it is stored, not as re-encoded here.
    manifest.compressed_bytes = body.len() as u64;
    manifest.sha256 = crate::segment::sha256_hex(&body);
    let key = store.manifest_key(&IndexEntry::of(&manifest));
    let manifest_body =
        Bytes::from(serde_json::to_vec_pretty(&manifest).expect("a manifest serializes"));
    store
        .put_new(&key, manifest_body, "application/json")
        .await?;
    tracing::info!(
        first,
        last = manifest.last_sequence,
        "sealed a segment a previous run had uploaded"
    );
    Ok(Some(manifest.last_sequence))
}

/// Stores the position by compare-and-set on `revision` (0: create); returns the new
/// revision.
pub(crate) async fn record(kv: &kv::Store, position: Position, revision: u64) -> Result<u64, Stop> {
    let value = Bytes::from(serde_json::to_vec(&position).expect("a position serializes"));
    let mut backoff = Backoff::for_nats();
    for _ in 0..20 {
        let result = if revision == 0 {
            kv.create(POSITION_KEY, value.clone()).await.map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    e.to_string(),
                )
            })
        } else {
            kv.update(POSITION_KEY, value.clone(), revision)
                .await
                .map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                })
        };
        match result {
            Ok(r) => return Ok(r),
            Err((true, _)) => return Err(Stop::LeaseLost),
            Err((false, e)) => {
                tracing::warn!(error = %e, "storing the archived position failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    Err(Stop::Failed(anyhow::anyhow!(
        "storing the archived position kept failing"
    )))
}

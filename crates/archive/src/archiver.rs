//! The `archiver` role: reads `XIBAAR_EVENTS` in order from the archived position, seals the
//! messages into segments (by count, bytes or age, whichever first) and writes each segment,
//! then its manifest, then the new position.
//!
//! - The position (`position` in `XIBAAR_ARCHIVE`) moves by compare-and-set, only after the
//!   segment and its manifest are durable. A crash before that leaves an object that the next
//!   run finds at the next sequence and adopts (a segment without a manifest gets one written
//!   from its own content); the events are never archived twice, because segments are keyed
//!   by their first sequence and written once.
//! - While S3 is away the open segment waits in memory and the stream keeps the events; the
//!   archiver retries with backoff and catches up when S3 is back. A segment never has a gap
//!   that the stream did not have.
//! - If the stream dropped events before they were archived (retention shorter than an
//!   outage), the archive says so: an error, `xibaar_archive_gaps_total`, and a gap between
//!   two manifests that `xibaar archive verify` reports.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, kv};
use chrono::Utc;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use xibaar_config::ArchiveConfig;
use xibaar_streams::{names, retry::Backoff};

use crate::{
    lease,
    seal::{Sealed, adopt, record, upload},
    segment::{Record, Writer},
    store::{ArchiveStore, StoreError},
};

pub const POSITION_KEY: &str = "position";

#[derive(Debug, Clone)]
pub struct ArchiverSettings {
    pub max_events: u64,
    pub max_bytes: u64,
    pub max_age: Duration,
    pub lease: Duration,
}

impl From<&ArchiveConfig> for ArchiverSettings {
    fn from(c: &ArchiveConfig) -> Self {
        Self {
            max_events: c.segment_max_events,
            max_bytes: c.segment_max_bytes,
            max_age: c.segment_max_age,
            lease: c.lease,
        }
    }
}

/// The archived position: every event up to `last_sequence` is in a sealed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub last_sequence: u64,
}

/// The position and its revision in the bucket (0: never written).
pub async fn read_position(kv: &kv::Store) -> anyhow::Result<(Position, u64)> {
    match kv
        .entry(POSITION_KEY)
        .await
        .context("reading the archived position")?
    {
        Some(entry) if entry.operation == kv::Operation::Put => Ok((
            serde_json::from_slice(&entry.value).context("decoding the archived position")?,
            entry.revision,
        )),
        _ => Ok((Position { last_sequence: 0 }, 0)),
    }
}

pub async fn archive_bucket(js: &jetstream::Context) -> anyhow::Result<kv::Store> {
    js.get_key_value(names::ARCHIVE_BUCKET)
        .await
        .with_context(|| {
            format!(
                "opening the {} bucket (run `xibaar streams apply`)",
                names::ARCHIVE_BUCKET
            )
        })
}

/// Why a run of the work loop ended.
#[derive(Debug)]
pub(crate) enum Stop {
    Shutdown,
    /// Another archiver holds the lease or moved the position.
    LeaseLost,
    /// The position moved by adopting an existing segment: read the stream again from it.
    Moved,
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Self {
        Stop::Failed(e)
    }
}

pub struct Archiver {
    js: jetstream::Context,
    store: ArchiveStore,
    settings: ArchiverSettings,
    holder: String,
}

impl Archiver {
    pub fn new(js: jetstream::Context, store: ArchiveStore, settings: ArchiverSettings) -> Self {
        let holder = format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "archiver".into()),
            uuid::Uuid::new_v4().simple()
        );
        Self {
            js,
            store,
            settings,
            holder,
        }
    }

    /// Archives until `shutdown`. Fails only when the bucket is missing or refuses these
    /// credentials; everything else is retried.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut backoff = Backoff::for_nats();
        loop {
            match self.store.check_bucket().await {
                Ok(()) => break,
                Err(StoreError::Config(message)) => anyhow::bail!("archive: {message}"),
                Err(e) => {
                    let wait = backoff.next_delay().max(Duration::from_millis(500));
                    tracing::warn!(error = %e, retry_in = ?wait, "the archive bucket is not reachable; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        let kv = xibaar_streams::retry::until_ok(
            "the XIBAAR_ARCHIVE bucket is not there yet",
            Backoff::for_nats(),
            Duration::from_secs(5),
            shutdown.cancelled(),
            || archive_bucket(&self.js),
        )
        .await;
        let Some(kv) = kv else { return Ok(()) };
        loop {
            let Some(held) =
                lease::acquire(&kv, &self.holder, self.settings.lease, &shutdown).await
            else {
                return Ok(());
            };
            metrics::gauge!("xibaar_archive_lease_held").set(1.0);
            loop {
                match self.work(&kv, &held.lost, &shutdown).await {
                    Stop::Shutdown => {
                        held.release(&kv).await;
                        metrics::gauge!("xibaar_archive_lease_held").set(0.0);
                        return Ok(());
                    }
                    Stop::Moved => continue,
                    Stop::LeaseLost => break,
                    Stop::Failed(e) => {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "archiving failed; starting again from the archived position"
                        );
                        tokio::select! {
                            _ = shutdown.cancelled() => {
                                held.release(&kv).await;
                                return Ok(());
                            }
                            _ = held.lost.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
            metrics::gauge!("xibaar_archive_lease_held").set(0.0);
        }
    }

    /// From the archived position: adopt what a previous run left, then read and seal.
    async fn work(
        &self,
        kv: &kv::Store,
        lost: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Stop {
        let (mut position, mut revision) = match read_position(kv).await {
            Ok(p) => p,
            Err(e) => return Stop::Failed(e),
        };
        // What a previous run sealed (or only uploaded) but did not record.
        loop {
            match adopt(&self.store, position.last_sequence + 1).await {
                Ok(Some(last)) => {
                    position.last_sequence = last;
                    revision = match record(kv, position, revision).await {
                        Ok(r) => r,
                        Err(stop) => return stop,
                    };
                }
                Ok(None) => break,
                Err(e) => return Stop::Failed(e.into()),
            }
        }
        metrics::gauge!("xibaar_archive_position").set(position.last_sequence as f64);
        let start_sequence = position.last_sequence + 1;
        let mut messages = match xibaar_streams::replay::events_from(&self.js, start_sequence).await
        {
            Ok(m) => m,
            Err(e) => return Stop::Failed(e.into()),
        };
        tracing::info!(start_sequence, "archiver running");
        let mut sealed = Sealed {
            uploading: None,
            position,
            revision,
        };
        let mut writer = Writer::default();
        let mut expected = start_sequence;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            // Biased: the tick wins only when no message is ready, that is when the archiver has
            // caught up with the stream.
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // A clean stop lets the segment being written finish (a crash would not,
                    // and the next run adopts it; this saves it the work).
                    let _ = tokio::time::timeout(Duration::from_secs(10), sealed.settle()).await;
                    return Stop::Shutdown;
                }
                _ = lost.cancelled() => return Stop::LeaseLost,
                m = messages.next() => match m {
                    Some(Ok(m)) => Some(m),
                    Some(Err(e)) => return Stop::Failed(anyhow::anyhow!("reading XIBAAR_EVENTS: {e}")),
                    None => return Stop::Failed(anyhow::anyhow!("XIBAAR_EVENTS ended")),
                },
                _ = tick.tick() => None,
            };
            // A segment's age counts in wall-clock time once caught up; while catching up it
            // counts in stream time (the span it covers), or every backlog event would be old
            // enough to seal a segment alone.
            let idle = message.is_none();
            if let Some(message) = message {
                let record = match Record::from_stream(&message) {
                    Ok(r) => r,
                    Err(e) => return Stop::Failed(anyhow::anyhow!("{e}")),
                };
                if record.sequence > expected {
                    tracing::error!(
                        from = expected,
                        to = record.sequence - 1,
                        "XIBAAR_EVENTS dropped these events before they were archived; the archive has a gap here"
                    );
                    metrics::counter!("xibaar_archive_gaps_total").increment(1);
                    // The gap falls between two segments, where `verify` reports it.
                    if writer.count() > 0
                        && let Err(stop) = self
                            .seal(std::mem::take(&mut writer), &mut sealed, kv, lost, shutdown)
                            .await
                    {
                        return stop;
                    }
                }
                expected = record.sequence + 1;
                writer.push(&record);
                metrics::counter!("xibaar_archive_events_read_total").increment(1);
            }
            let full = writer.count() >= self.settings.max_events
                || writer.uncompressed_bytes() >= self.settings.max_bytes;
            let old = writer.first_time().is_some_and(|first| {
                let until = if idle {
                    Utc::now()
                } else {
                    writer.last_time().unwrap_or(first)
                };
                (until - first).to_std().unwrap_or_default() >= self.settings.max_age
            });
            if (full || old)
                && let Err(stop) = self
                    .seal(std::mem::take(&mut writer), &mut sealed, kv, lost, shutdown)
                    .await
            {
                return stop;
            }
            // An upload that finished while reading: its position is the current one.
            if sealed.uploading.as_ref().is_some_and(|u| u.is_finished())
                && let Err(stop) = sealed.settle().await
            {
                return stop;
            }
        }
    }

    /// Hands a full segment to its upload, once the previous upload is done (positions move
    /// in order); reading goes on meanwhile.
    async fn seal(
        &self,
        writer: Writer,
        sealed: &mut Sealed,
        kv: &kv::Store,
        lost: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let Some((body, manifest)) = writer.finish() else {
            return Ok(());
        };
        sealed.settle().await?;
        sealed.uploading = Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            upload(
                self.store.clone(),
                kv.clone(),
                lost.clone(),
                shutdown.clone(),
                body,
                manifest,
                sealed.position,
                sealed.revision,
            ),
        )));
        Ok(())
    }
}

//! How far the archive is behind `XIBAAR_EVENTS`, and how long before the stream's retention
//! would drop an event the archive does not hold yet.

use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use serde::Serialize;
use xibaar_streams::names;

use crate::archiver::{archive_bucket, read_position};

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ArchiveLag {
    /// The last sequence held by a sealed segment.
    pub archived_through: u64,
    /// The stream's last sequence.
    pub head: u64,
    pub events_behind: u64,
    /// Age of the oldest event not archived yet; 0 when none is waiting.
    pub seconds_behind: f64,
    /// Seconds before the stream's `max_age` drops the oldest event not archived yet; `None`
    /// when the stream keeps events without an age limit or none is waiting. Negative: events
    /// were already dropped unarchived.
    pub retention_margin_seconds: Option<f64>,
    /// Events the stream no longer holds that were never archived.
    pub lost: u64,
}

pub async fn archive_lag(js: &jetstream::Context) -> anyhow::Result<ArchiveLag> {
    let kv = archive_bucket(js).await?;
    let (position, _) = read_position(&kv).await?;
    let mut stream = js.get_stream(names::EVENTS).await?;
    let info = stream.info().await?.clone();
    let (head, first) = (info.state.last_sequence, info.state.first_sequence);
    let archived_through = position.last_sequence.min(head);
    let events_behind = head - archived_through;
    let lost = first.saturating_sub(archived_through + 1);
    let oldest: Option<DateTime<Utc>> = if events_behind == 0 {
        None
    } else {
        let start = (archived_through + 1).max(first);
        stream
            .direct_get_next_for_subject(xibaar_core::subject::EVENTS_ALL, Some(start))
            .await
            .ok()
            .map(|m| {
                DateTime::from_timestamp_nanos(
                    i64::try_from(m.time.unix_timestamp_nanos()).unwrap_or(0),
                )
            })
    };
    let age = oldest.map(|t| (Utc::now() - t).to_std().unwrap_or_default());
    let max_age = info.config.max_age;
    let retention_margin_seconds = match age {
        _ if lost > 0 => Some(-1.0),
        Some(age) if max_age > Duration::ZERO => Some(max_age.as_secs_f64() - age.as_secs_f64()),
        _ => None,
    };
    Ok(ArchiveLag {
        archived_through,
        head,
        events_behind,
        seconds_behind: age.map_or(0.0, |a| a.as_secs_f64()),
        retention_margin_seconds,
        lost,
    })
}

/// Publishes [`ArchiveLag`] as gauges every `every` until `shutdown` (the archiver does this,
/// so the figures exist wherever an archiver runs).
pub async fn report_lag(
    js: jetstream::Context,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match archive_lag(&js).await {
            Ok(lag) => {
                metrics::gauge!("xibaar_archive_events_behind").set(lag.events_behind as f64);
                metrics::gauge!("xibaar_archive_seconds_behind").set(lag.seconds_behind);
                metrics::gauge!("xibaar_archive_lost_events").set(lag.lost as f64);
                // No age limit, or nothing waiting: as much margin as the stream's retention.
                let margin = lag.retention_margin_seconds.unwrap_or(f64::from(u32::MAX));
                metrics::gauge!("xibaar_archive_retention_margin_seconds").set(margin);
            }
            Err(e) => tracing::debug!(error = format!("{e:#}"), "archive lag not measured"),
        }
    }
}

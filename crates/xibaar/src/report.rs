//! What a running process reports of itself, in the background: the lag gauges (consumers,
//! dead letters, projections) and the ops page's heartbeats.

use std::time::Duration;

use async_nats::jetstream;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use xibaar_streams::Definitions;

/// How often the lag gauges are refreshed.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

pub(crate) async fn collect_lag(
    js: jetstream::Context,
    pool: Option<PgPool>,
    shutdown: CancellationToken,
) {
    let definitions = Definitions::builtin();
    loop {
        // With NATS away each request waits for its timeout, a round of them for minutes: a
        // shutdown does not wait for the round to end.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = collect_lag_once(&js, pool.as_ref(), &definitions) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(LAG_INTERVAL) => {}
        }
    }
}

/// One refresh of the lag gauges.
async fn collect_lag_once(
    js: &jetstream::Context,
    pool: Option<&PgPool>,
    definitions: &Definitions,
) {
    match xibaar_streams::lag::consumer_lag(js, definitions).await {
        Ok(report) => xibaar_streams::lag::export(&report),
        Err(e) => tracing::debug!(error = %e, "collecting consumer lag failed"),
    }
    match js.get_stream(xibaar_streams::names::DLQ).await {
        Ok(dlq) => match dlq.get_info().await {
            Ok(info) => metrics::gauge!("xibaar_dlq_depth").set(info.state.messages as f64),
            Err(e) => tracing::debug!(error = %e, "reading the DLQ depth failed"),
        },
        Err(e) => tracing::debug!(error = %e, "reading the DLQ depth failed"),
    }
    if let Some(pool) = pool {
        match crate::commands::lag::projection_lag(js, pool).await {
            Ok(lags) => {
                for lag in lags {
                    metrics::gauge!("xibaar_projection_gap_events", "projection" => lag.projection)
                        .set(lag.gap as f64);
                }
            }
            Err(e) => tracing::debug!(
                error = format!("{e:#}"),
                "reading projection checkpoints failed"
            ),
        }
    }
}

/// How often a process tells the ops page its figures.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// Publishes this process's `xibaar_*` counters and gauges for the ops page, on core NATS.
pub(crate) async fn publish_heartbeats(
    client: async_nats::Client,
    role: &str,
    shutdown: CancellationToken,
) {
    use xibaar_telemetry::heartbeat::{Heartbeat, heartbeat_subject, samples};
    let instance = format!(
        "{role}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let subject = heartbeat_subject(&instance);
    loop {
        let heartbeat = Heartbeat {
            instance: instance.clone(),
            role: role.to_owned(),
            at: chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
            samples: samples(&["xibaar_"]),
        };
        match serde_json::to_vec(&heartbeat) {
            Ok(payload) => {
                // A publish waits for room in the client's buffer, which fills while NATS is
                // away: a shutdown does not wait for it.
                let published = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    published = client.publish(subject.clone(), payload.into()) => published,
                };
                if let Err(e) = published {
                    tracing::debug!(error = %e, "publishing the ops heartbeat failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "encoding the ops heartbeat failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
        }
    }
}

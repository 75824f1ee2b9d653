//! The ops page's figures. One collector per api process folds what JetStream says about every
//! stream and consumer together with the heartbeats every role publishes (its own `xibaar_*`
//! counters and gauges) into one [`OpsSnapshot`] every [`INTERVAL`]; `/v1/ops/snapshot` returns
//! the latest, `/v1/ops/stream` pushes each new one as a Server-Sent Event, and `/ops` is the page
//! that shows them. Rates are per process between its last two heartbeats, summed over processes.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream;
use axum::{
    Json,
    extract::State,
    http::header,
    response::{
        Html, IntoResponse,
        sse::{Event, KeepAlive, Sse},
    },
};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use xibaar_core::Priority;
use xibaar_streams::{Definitions, consumers, lag::ConsumerLag, names};
use xibaar_telemetry::heartbeat::{HEARTBEAT_SUBJECTS, Heartbeat};

use crate::{AppState, auth::Caller, problem::ApiError, scopes};

/// How often the figures are refreshed.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// A process silent this long is no longer shown.
const SILENT_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct OpsSnapshot {
    pub at: Option<DateTime<Utc>>,
    /// Processes whose heartbeat arrived within the last 10 s.
    pub processes: Vec<Process>,
    /// Per priority: commands waiting for fan-out and delivery jobs waiting for FCM.
    pub priorities: Vec<PriorityLag>,
    pub consumers: Vec<ConsumerLag>,
    pub streams: Vec<StreamFigures>,
    pub throughput: Throughput,
    pub fcm: FcmFigures,
    pub dlq_depth: u64,
    /// Events in `XIBAAR_EVENTS` not yet in the read models; `None` while no projector reports.
    pub projection_gap: Option<u64>,
    /// The archive's distance from the event stream's head; `None` without an archive.
    pub archive: Option<xibaar_archive::ArchiveLag>,
    /// Each SQL Server source's state, figures and lag, by name; empty without sources.
    pub sources: BTreeMap<String, xibaar_sources::SourceStatus>,
    /// What could not be read this round (JetStream away, …).
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Process {
    pub instance: String,
    pub role: String,
    pub seconds_since_heartbeat: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PriorityLag {
    pub priority: Priority,
    pub commands_pending: u64,
    pub jobs_pending: u64,
    /// Age of the oldest unfinished command or job of this priority.
    pub seconds_behind: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StreamFigures {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub last_sequence: u64,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Throughput {
    pub accepted_per_second: f64,
    pub pushes_per_second: f64,
    pub events_per_second: f64,
    /// Delivery jobs finished per second by outcome (`sent`, `retrying`, `failed`, …).
    pub jobs_per_second: BTreeMap<String, f64>,
    /// Since the reporting processes started.
    pub accepted_total: f64,
    pub pushes_total: f64,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct FcmFigures {
    /// FCM's answers per second by error class (`OK`, `UNAVAILABLE`, `QUOTA_EXCEEDED`, …).
    pub responses_per_second: BTreeMap<String, f64>,
    /// Share of FCM's answers in the last interval that were errors; `None` without answers.
    pub error_rate: Option<f64>,
    /// Sends waiting for the project rate limit, on average over the interval (seconds waited
    /// per second).
    pub rate_limit_waiting: f64,
    pub circuits: Vec<Circuit>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Circuit {
    pub project: String,
    /// `closed`, `half_open` or `open`.
    pub state: &'static str,
}

/// The latest snapshot, for handlers.
pub type OpsView = watch::Receiver<Arc<OpsSnapshot>>;

/// A view that never changes, for an app without a collector (tests of other endpoints).
pub fn idle_view() -> OpsView {
    watch::channel(Arc::new(OpsSnapshot::default())).1
}

struct Reporting {
    seen: Instant,
    previous: Option<Heartbeat>,
    latest: Heartbeat,
}

/// Starts the collector; it runs until `shutdown`.
pub fn spawn_collector(
    client: async_nats::Client,
    js: jetstream::Context,
    archive_enabled: bool,
    shutdown: CancellationToken,
) -> OpsView {
    let (tx, rx) = watch::channel(Arc::new(OpsSnapshot::default()));
    tokio::spawn(async move {
        let mut heartbeats = loop {
            match client.subscribe(HEARTBEAT_SUBJECTS).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "subscribing to heartbeats failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(INTERVAL) => {}
                    }
                }
            }
        };
        let definitions = Definitions::builtin();
        let mut reporting: HashMap<String, Reporting> = HashMap::new();
        let mut last_events: Option<(Instant, u64)> = None;
        let mut tick = tokio::time::interval(INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                message = heartbeats.next() => {
                    let Some(message) = message else { return };
                    match serde_json::from_slice::<Heartbeat>(&message.payload) {
                        Ok(beat) => receive(&mut reporting, beat),
                        Err(e) => tracing::debug!(error = %e, "an undecodable heartbeat"),
                    }
                }
                _ = tick.tick() => {
                    reporting.retain(|_, r| r.seen.elapsed() < SILENT_AFTER);
                    let mut snapshot = from_heartbeats(&reporting);
                    jetstream_figures(&js, &definitions, &mut snapshot, &mut last_events).await;
                    if archive_enabled {
                        match xibaar_archive::archive_lag(&js).await {
                            Ok(lag) => snapshot.archive = Some(lag),
                            Err(e) => snapshot.problems.push(format!("archive lag: {e:#}")),
                        }
                    }
                    match xibaar_sources::state::statuses(&js).await {
                        Ok(sources) => snapshot.sources = sources,
                        Err(e) => snapshot.problems.push(format!("sources: {e}")),
                    }
                    snapshot.at = Some(Utc::now());
                    tx.send_replace(Arc::new(snapshot));
                }
            }
        }
    });
    rx
}

fn receive(reporting: &mut HashMap<String, Reporting>, beat: Heartbeat) {
    match reporting.get_mut(&beat.instance) {
        Some(r) => {
            r.seen = Instant::now();
            r.previous = Some(std::mem::replace(&mut r.latest, beat));
        }
        None => {
            reporting.insert(
                beat.instance.clone(),
                Reporting {
                    seen: Instant::now(),
                    previous: None,
                    latest: beat,
                },
            );
        }
    }
}

/// Per-second rates of every counter named `name` of one process, keyed by `label`'s value.
fn rates(r: &Reporting, name: &str, label: &str, into: &mut BTreeMap<String, f64>) {
    let Some(previous) = &r.previous else { return };
    let elapsed = r.latest.at - previous.at;
    if elapsed <= 0.0 {
        return;
    }
    for now in r.latest.samples.iter().filter(|s| s.name == name) {
        let before = previous
            .samples
            .iter()
            .find(|s| s.name == name && s.labels == now.labels)
            .map_or(0.0, |s| s.value);
        let key = now.labels.get(label).cloned().unwrap_or_default();
        *into.entry(key).or_default() += ((now.value - before) / elapsed).max(0.0);
    }
}

fn total(r: &Reporting, name: &str) -> f64 {
    r.latest
        .samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

fn from_heartbeats(reporting: &HashMap<String, Reporting>) -> OpsSnapshot {
    let mut snapshot = OpsSnapshot::default();
    let (mut accepted, mut responses, mut jobs, mut waited) = (
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
    );
    let mut circuits: BTreeMap<String, f64> = BTreeMap::new();
    for (instance, r) in reporting {
        snapshot.processes.push(Process {
            instance: instance.clone(),
            role: r.latest.role.clone(),
            seconds_since_heartbeat: r.seen.elapsed().as_secs_f64(),
        });
        rates(
            r,
            "xibaar_api_notifications_accepted_total",
            "",
            &mut accepted,
        );
        rates(r, "xibaar_fcm_responses_total", "code", &mut responses);
        rates(r, "xibaar_sender_jobs_total", "outcome", &mut jobs);
        rates(
            r,
            "xibaar_fcm_rate_limit_wait_microseconds_total",
            "",
            &mut waited,
        );
        snapshot.throughput.accepted_total += total(r, "xibaar_api_notifications_accepted_total");
        snapshot.throughput.pushes_total += total(r, "xibaar_fcm_responses_total");
        for s in r.latest.samples.iter() {
            match s.name.as_str() {
                "xibaar_fcm_circuit_state" => {
                    // Several dispatchers: the worst state of a project shows.
                    let project = s.labels.get("project").cloned().unwrap_or_default();
                    let worst = circuits.entry(project).or_default();
                    *worst = worst.max(s.value);
                }
                "xibaar_projection_gap_events" => {
                    let gap = s.value.max(0.0) as u64;
                    snapshot.projection_gap = Some(snapshot.projection_gap.unwrap_or(0).max(gap));
                }
                _ => {}
            }
        }
    }
    snapshot
        .processes
        .sort_by(|a, b| a.instance.cmp(&b.instance));
    snapshot.throughput.accepted_per_second = accepted.values().sum();
    let answered: f64 = responses.values().sum();
    snapshot.throughput.pushes_per_second = answered;
    snapshot.throughput.jobs_per_second = jobs;
    snapshot.fcm.error_rate = (answered > 0.0)
        .then(|| (answered - responses.get("OK").copied().unwrap_or(0.0)) / answered);
    snapshot.fcm.responses_per_second = responses;
    snapshot.fcm.rate_limit_waiting = waited.values().sum::<f64>() / 1_000_000.0;
    snapshot.fcm.circuits = circuits
        .into_iter()
        .map(|(project, state)| Circuit {
            project,
            state: match state as u8 {
                0 => "closed",
                1 => "half_open",
                _ => "open",
            },
        })
        .collect();
    snapshot
}

async fn jetstream_figures(
    js: &jetstream::Context,
    definitions: &Definitions,
    snapshot: &mut OpsSnapshot,
    last_events: &mut Option<(Instant, u64)>,
) {
    match xibaar_streams::lag::consumer_lag(js, definitions).await {
        Ok(report) => snapshot.consumers = report,
        Err(e) => snapshot.problems.push(format!("consumer lag: {e}")),
    }
    for priority in Priority::ALL {
        let find = |stream: &str, consumer: &str| {
            snapshot
                .consumers
                .iter()
                .find(|c| c.stream == stream && c.consumer == consumer)
        };
        let commands = find(priority.command_stream(), consumers::DISPATCHER);
        let jobs = find(names::DELIVERIES, &consumers::sender(priority));
        snapshot.priorities.push(PriorityLag {
            priority,
            commands_pending: commands.map_or(0, ConsumerLag::backlog),
            jobs_pending: jobs.map_or(0, ConsumerLag::backlog),
            seconds_behind: commands
                .map_or(0.0, |c| c.seconds_behind)
                .max(jobs.map_or(0.0, |c| c.seconds_behind)),
        });
    }
    for def in &definitions.streams {
        let name = def.config.name.clone();
        let info = match js.get_stream(&name).await {
            Ok(mut stream) => stream.info().await.map(|i| i.state.clone()),
            Err(e) => {
                snapshot.problems.push(format!("stream {name}: {e}"));
                continue;
            }
        };
        match info {
            Ok(state) => {
                if name == names::DLQ {
                    snapshot.dlq_depth = state.messages;
                }
                if name == names::EVENTS {
                    let now = Instant::now();
                    if let Some((then, sequence)) = *last_events {
                        let elapsed = now.duration_since(then).as_secs_f64();
                        if elapsed > 0.0 {
                            snapshot.throughput.events_per_second =
                                state.last_sequence.saturating_sub(sequence) as f64 / elapsed;
                        }
                    }
                    *last_events = Some((now, state.last_sequence));
                }
                snapshot.streams.push(StreamFigures {
                    name,
                    messages: state.messages,
                    bytes: state.bytes,
                    last_sequence: state.last_sequence,
                });
            }
            Err(e) => snapshot.problems.push(format!("stream {name}: {e}")),
        }
    }
}

/// The latest operational figures.
#[utoipa::path(get, path = "/v1/ops/snapshot", operation_id = "getOpsSnapshot", tag = "ops",
    responses((status = 200, description = "Throughput, FCM answers, lag, DLQ depth and processes, refreshed every 2 s", body = OpsSnapshot)),
    security(("bearer" = ["ops:read"])))]
pub async fn snapshot(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Arc<OpsSnapshot>>, ApiError> {
    caller.require(scopes::OPS)?;
    Ok(Json(state.ops.borrow().clone()))
}

/// Every new snapshot as Server-Sent Events (`event: snapshot`, data: an `OpsSnapshot`).
#[utoipa::path(get, path = "/v1/ops/stream", operation_id = "streamOps", tag = "ops",
    responses((status = 200, description = "An endless stream of `snapshot` events", content_type = "text/event-stream", body = String)),
    security(("bearer" = ["ops:read"])))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require(scopes::OPS)?;
    let updates = tokio_stream::wrappers::WatchStream::new(state.ops.clone()).map(|snapshot| {
        Ok(Event::default()
            .event("snapshot")
            .json_data(&*snapshot)
            .unwrap_or_else(|e| Event::default().event("error").data(e.to_string())))
    });
    Ok(Sse::new(updates).keep_alive(KeepAlive::default()))
}

/// The ops page.
///
/// It holds no figures itself; its script reads them from
/// `/v1/ops/stream` with the operator's token, so the page can be public.
#[utoipa::path(get, path = "/ops", operation_id = "getOpsPage", tag = "ops",
    responses((status = 200, description = "The ops page (HTML); it asks for a token with `ops:read`", content_type = "text/html", body = String)),
    security(()))]
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
            ),
        ],
        Html(include_str!("../assets/ops.html")),
    )
}

#[cfg(test)]
mod tests {
    use xibaar_telemetry::heartbeat::Sample;

    use super::*;

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        }
    }

    fn beat(instance: &str, at: f64, ok: f64, unavailable: f64, circuit: f64) -> Heartbeat {
        Heartbeat {
            instance: instance.into(),
            role: "xibaar-dispatcher".into(),
            at,
            samples: vec![
                sample(
                    "xibaar_fcm_responses_total",
                    &[("project", "p"), ("code", "OK")],
                    ok,
                ),
                sample(
                    "xibaar_fcm_responses_total",
                    &[("project", "p"), ("code", "UNAVAILABLE")],
                    unavailable,
                ),
                sample("xibaar_fcm_circuit_state", &[("project", "p")], circuit),
            ],
        }
    }

    #[test]
    fn rates_are_per_process_between_its_heartbeats_and_summed_and_the_worst_circuit_shows() {
        let mut reporting = HashMap::new();
        receive(&mut reporting, beat("a", 100.0, 1_000.0, 0.0, 0.0));
        receive(&mut reporting, beat("a", 102.0, 3_000.0, 100.0, 0.0));
        receive(&mut reporting, beat("b", 50.0, 500.0, 0.0, 0.0));
        receive(&mut reporting, beat("b", 54.0, 900.0, 0.0, 2.0));
        // A process seen once has no rate yet, but its totals count.
        receive(&mut reporting, beat("c", 10.0, 7.0, 0.0, 0.0));
        let s = from_heartbeats(&reporting);
        // a: 2,000 OK + 100 errors in 2 s; b: 400 OK in 4 s.
        assert_eq!(s.fcm.responses_per_second["OK"], 1_000.0 + 100.0);
        assert_eq!(s.fcm.responses_per_second["UNAVAILABLE"], 50.0);
        assert_eq!(s.throughput.pushes_per_second, 1_150.0);
        assert!((s.fcm.error_rate.unwrap() - 50.0 / 1_150.0).abs() < 1e-12);
        assert_eq!(s.throughput.pushes_total, 3_100.0 + 900.0 + 7.0);
        assert_eq!(s.fcm.circuits.len(), 1);
        assert_eq!(s.fcm.circuits[0].state, "open");
        assert_eq!(s.processes.len(), 3);
    }

    #[test]
    fn a_restarted_counter_never_gives_a_negative_rate() {
        let mut reporting = HashMap::new();
        receive(&mut reporting, beat("a", 100.0, 1_000.0, 0.0, 0.0));
        receive(&mut reporting, beat("a", 102.0, 10.0, 0.0, 0.0));
        let s = from_heartbeats(&reporting);
        assert_eq!(s.throughput.pushes_per_second, 0.0);
        assert_eq!(s.fcm.error_rate, None);
    }
}

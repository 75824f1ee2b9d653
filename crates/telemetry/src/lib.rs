//! Logs, metrics and health probes, the same for every role.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};
use xibaar_config::LogFormat;

/// Installs the global subscriber: JSON lines (or text) filtered by `RUST_LOG`, else `filter`.
/// Only the first call in a process takes effect.
pub fn init_tracing(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer()).try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .expect("static buckets are valid")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawning the metrics upkeep thread");
            handle
        })
        .clone()
}

/// One readiness check: `Ok` or why not.
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What `/health/*` answers from.
#[derive(Clone, Default)]
pub struct Health {
    started: Arc<AtomicBool>,
    /// (name, check, required): a failing optional check reports "degraded" but stays 200.
    checks: Vec<(&'static str, Check, bool)>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn check(mut self, name: &'static str, required: bool, check: Check) -> Self {
        self.checks.push((name, check, required));
        self
    }

    /// Marks start-up (streams applied, migrations run) as finished.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }
}

/// `/health/live`, `/health/ready`, `/health/startup` and `/metrics`.
pub fn ops_router(health: Health) -> Router {
    let handle = metrics_handle();
    Router::new()
        .route(
            "/health/live",
            get(|| async { Json(json!({ "status": "live" })) }),
        )
        .route("/health/startup", get(startup))
        .route("/health/ready", get(ready))
        .with_state(health)
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        handle.render(),
                    )
                }
            }),
        )
}

async fn startup(State(health): State<Health>) -> impl IntoResponse {
    if health.is_started() {
        (StatusCode::OK, Json(json!({ "status": "started" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "starting" })),
        )
    }
}

async fn ready(State(health): State<Health>) -> impl IntoResponse {
    let results = futures::future::join_all(health.checks.iter().map(|(name, check, required)| {
        let check = check.clone();
        async move {
            let outcome = tokio::time::timeout(Duration::from_secs(2), check())
                .await
                .unwrap_or_else(|_| Err("timed out after 2s".into()));
            (*name, *required, outcome)
        }
    }))
    .await;
    let mut checks = serde_json::Map::new();
    let (mut unready, mut degraded) = (!health.is_started(), false);
    for (name, required, outcome) in results {
        let shown = match outcome {
            Ok(()) => "ok".to_owned(),
            Err(e) => {
                if required {
                    unready = true;
                } else {
                    degraded = true;
                }
                e
            }
        };
        checks.insert(name.into(), shown.into());
    }
    let (status, word) = match (unready, degraded) {
        (true, _) => (StatusCode::SERVICE_UNAVAILABLE, "unready"),
        (false, true) => (StatusCode::OK, "degraded"),
        (false, false) => (StatusCode::OK, "ready"),
    };
    (status, Json(json!({ "status": word, "checks": checks })))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

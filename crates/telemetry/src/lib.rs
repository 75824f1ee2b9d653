//! Logs, metrics and health probes, the same for every role.

pub mod heartbeat;

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
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use serde_json::json;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};
use xibaar_config::{LogConfig, LogFormat};

/// What [`init_tracing`] installed; [`Tracing::shutdown`] sends the spans still buffered.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Flushes and stops the span exporter (a no-op when spans are not exported).
    pub fn shutdown(self) {
        // The OTLP exporter's blocking HTTP client must not be used or dropped on an async
        // runtime's thread.
        let provider = self.provider;
        let _ = std::thread::spawn(move || {
            if let Err(e) = provider.shutdown() {
                eprintln!("flushing spans failed: {e}");
            }
        })
        .join();
    }
}

/// Installs the global subscriber: JSON lines (or text) filtered by `RUST_LOG`, else
/// `log.filter`, with OpenTelemetry spans underneath so every JSON line carries `trace_id`
/// and `span_id`. Spans go to `log.otlp_traces_endpoint` (or the standard `OTEL_EXPORTER_OTLP_*`
/// endpoint) when one is configured. Only the first call in a process takes effect.
pub fn init_tracing(log: &LogConfig, service: &str) -> Tracing {
    let exporting = log.otlp_traces_endpoint.is_some()
        || [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    let mut export_error = None;
    if exporting {
        // Built on a thread of its own: the blocking HTTP client panics when it is created on
        // an async runtime's thread.
        let endpoint = log.otlp_traces_endpoint.clone();
        let exporter = std::thread::spawn(move || {
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
            if let Some(endpoint) = endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            builder.build()
        })
        .join()
        .expect("building the span exporter does not panic");
        match exporter {
            Ok(exporter) => provider = provider.with_batch_exporter(exporter),
            Err(e) => export_error = Some(e),
        }
    }
    let provider = provider.build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("xibaar"));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let _ = match log.format {
        LogFormat::Json => registry
            .with(
                json_subscriber::fmt::layer()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_opentelemetry_ids(true),
            )
            .try_init(),
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer()).try_init(),
    };
    if let Some(e) = export_error {
        tracing::error!(error = %e, "spans cannot be exported; check log.otlp_traces_endpoint");
    }
    Tracing { provider }
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
pub async fn serve<L>(
    listener: L,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    // Served as a `Router`, axum binds its state again for every connection, which copies the
    // route table (about 10 KB for the api's): an idle keep-alive connection or an open inbox
    // stream carried that copy. Bound once here, each connection shares the bound router.
    let router: Router = router.with_state(());
    axum::serve(listener, router.into_make_service())
        .with_graceful_shutdown(shutdown)
        .await
}

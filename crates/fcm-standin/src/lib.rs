//! The FCM stand-in: the endpoints Xibaar uses at Google, served locally with the same request
//! and response shapes, so the production client is the code under test.
//!
//! - `POST /token`: the OAuth2 JWT-bearer exchange. The assertion's RS256 signature is checked
//!   against the configured service accounts' public keys, and `iss`, `aud`, `scope`, `iat`
//!   and `exp` are checked as Google does.
//! - `POST /v1/projects/{project}/messages:send`: bearer token, project access, exactly one of
//!   token/topic/condition, string data values, the 4096-byte payload limit (2048 for topics),
//!   the per-project per-minute quota (errors count too), then the scripted answer.
//! - `/__standin/...`: what was received, and scripting (latency, quota, error rules).

mod errors;
mod oauth;
mod send;
mod state;

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Query, State},
    routing::{get, post},
};
pub use errors::ScriptedError;
use serde::Deserialize;
use state::Shared;
pub use state::{ErrorRule, Received};

/// The key pair shipped for local use and tests (see testdata/README.md).
pub const TEST_SERVICE_ACCOUNT: &str = include_str!("../testdata/service-account.json");
pub const TEST_PUBLIC_KEY: &str = include_str!("../testdata/service-account.pub.pem");

/// A service account the stand-in accepts assertions from.
#[derive(Debug, Clone)]
pub struct Account {
    pub client_email: String,
    pub public_key_pem: String,
    /// The Firebase project its tokens may send to.
    pub project_id: String,
}

impl Account {
    /// The shipped test account (project `xibaar-local`).
    pub fn test_account() -> Self {
        let json: serde_json::Value =
            serde_json::from_str(TEST_SERVICE_ACCOUNT).expect("the shipped key is JSON");
        Self {
            client_email: json["client_email"].as_str().unwrap_or_default().to_owned(),
            public_key_pem: TEST_PUBLIC_KEY.to_owned(),
            project_id: json["project_id"].as_str().unwrap_or_default().to_owned(),
        }
    }
}

#[derive(Clone)]
pub struct StandInConfig {
    pub accounts: Vec<Account>,
    /// FCM's default is 600,000 per project per minute.
    pub quota_per_minute: u64,
    pub latency: Duration,
    /// Each answer's latency is drawn uniformly from `latency ± latency_jitter`.
    pub latency_jitter: Duration,
    /// Concurrent streams each HTTP/2 connection allows (`SETTINGS_MAX_CONCURRENT_STREAMS`);
    /// FCM's front ends allow 100.
    pub streams_per_connection: u32,
    pub token_lifetime: Duration,
    /// Keep every received message (tests); off for million-message benchmarks, which only
    /// need the counts.
    pub record_messages: bool,
    /// With recording off, still keep the messages this accepts (a benchmark's probes).
    pub record_only: Option<RecordFilter>,
}

/// Chooses the messages to keep when recording is off.
pub type RecordFilter = std::sync::Arc<dyn Fn(&serde_json::Value) -> bool + Send + Sync>;

impl Default for StandInConfig {
    fn default() -> Self {
        Self {
            accounts: vec![Account::test_account()],
            quota_per_minute: 600_000,
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            streams_per_connection: 100,
            token_lifetime: Duration::from_secs(3600),
            record_messages: true,
            record_only: None,
        }
    }
}

/// Writes a copy of the test key whose `token_uri` is this stand-in's.
pub fn write_service_account(path: &Path, token_uri: &str) -> std::io::Result<()> {
    let mut json: serde_json::Value =
        serde_json::from_str(TEST_SERVICE_ACCOUNT).expect("the shipped key is JSON");
    json["token_uri"] = token_uri.into();
    std::fs::write(path, serde_json::to_vec_pretty(&json)?)
}

/// A running stand-in. Dropping it stops the server.
pub struct StandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl StandIn {
    /// Serves on an ephemeral loopback port.
    pub async fn start(config: StandInConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::serve(listener, config)
    }

    pub fn serve(
        listener: tokio::net::TcpListener,
        config: StandInConfig,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let streams = config.streams_per_connection;
        let shared = Arc::new(Shared::new(config, format!("http://{addr}/token")));
        let app = router(shared.clone());
        let task = tokio::spawn(serve_connections(listener, app, streams, shared.clone()));
        Ok(Self { addr, shared, task })
    }

    /// TCP connections accepted so far (each an HTTP/2 connection for a client that speaks it).
    pub fn connections(&self) -> u64 {
        self.shared.connections()
    }

    /// How long the stand-in took to answer its requests so far, at `percentile` (0–100): its
    /// configured latency as it turned out on this machine, with its own work. What a client
    /// adds to a push is measured above this.
    pub fn answer_time(&self, percentile: f64) -> std::time::Duration {
        self.shared.answer_time(percentile)
    }

    /// The most requests this stand-in has held at once.
    pub fn peak_in_flight(&self) -> u64 {
        self.shared.peak_in_flight()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Every accepted message, in arrival order (when recording is on).
    pub fn received(&self) -> Vec<Received> {
        self.shared.received()
    }

    /// Messages accepted (sent successfully) so far.
    pub fn accepted_count(&self) -> u64 {
        self.shared.accepted_count()
    }

    /// Requests answered with an error so far.
    pub fn error_count(&self) -> u64 {
        self.shared.error_count()
    }

    /// Access tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.tokens_issued()
    }

    pub fn add_rule(&self, rule: ErrorRule) {
        self.shared.add_rule(rule);
    }

    pub fn clear_rules(&self) {
        self.shared.clear_rules();
    }

    pub fn set_latency(&self, latency: Duration) {
        self.shared.set_latency(latency);
    }

    /// Answers take `latency ± jitter`, uniformly drawn.
    pub fn set_latency_jitter(&self, jitter: Duration) {
        self.shared.set_jitter(jitter);
    }

    pub fn set_quota_per_minute(&self, quota: u64) {
        self.shared.set_quota(quota);
    }

    /// Forgets every access token issued, as if they had been revoked: the next send gets 401.
    pub fn revoke_tokens(&self) {
        self.shared.revoke_tokens();
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge), allowing `streams` concurrent streams per
/// HTTP/2 connection as FCM does; a client wanting more must open more connections.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    streams: u32,
    shared: Arc<Shared>,
) {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo},
        server::conn::auto::Builder,
        service::TowerToHyperService,
    };
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(streams);
    let builder = Arc::new(builder);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        shared.count_connection();
        let (builder, service) = (builder.clone(), TowerToHyperService::new(app.clone()));
        tokio::spawn(async move {
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "a client connection ended with an error");
            }
        });
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/token", post(oauth::token))
        .route("/v1/projects/{project}/messages:send", post(send::send))
        .route("/__standin/messages", get(messages))
        .route("/__standin/rules", post(add_rule).delete(clear_rules))
        .route("/__standin/settings", post(settings))
        .with_state(shared)
}

/// `GET /__standin/messages?after=N&limit=M`: a cursor over every recorded message.
#[derive(Deserialize)]
struct Page {
    /// Messages already read: the page starts with the message numbered `after + 1`.
    #[serde(default)]
    after: usize,
    #[serde(default = "default_page")]
    limit: usize,
}

fn default_page() -> usize {
    1000
}

const MAX_PAGE: usize = 10_000;

/// The recorded messages after the cursor (each with its number `seq`, from 1), the cursor to
/// ask with next, how many are recorded, and the counts of accepted messages and errors.
async fn messages(
    State(shared): State<Arc<Shared>>,
    Query(page): Query<Page>,
) -> Json<serde_json::Value> {
    let (messages, recorded) = shared.received_page(page.after, page.limit.min(MAX_PAGE));
    let next = page.after.min(recorded) + messages.len();
    let messages: Vec<serde_json::Value> = messages
        .into_iter()
        .zip(page.after + 1..)
        .map(|(m, seq)| {
            let mut value = serde_json::to_value(m).unwrap_or_default();
            value["seq"] = seq.into();
            value
        })
        .collect();
    Json(serde_json::json!({
        "accepted": shared.accepted_count(),
        "errors": shared.error_count(),
        "recorded": recorded,
        "next": next,
        "messages": messages,
    }))
}

async fn add_rule(State(shared): State<Arc<Shared>>, Json(rule): Json<ErrorRule>) -> Json<()> {
    shared.add_rule(rule);
    Json(())
}

async fn clear_rules(State(shared): State<Arc<Shared>>) -> Json<()> {
    shared.clear_rules();
    Json(())
}

#[derive(Deserialize)]
struct Settings {
    latency_ms: Option<u64>,
    latency_jitter_ms: Option<u64>,
    quota_per_minute: Option<u64>,
}

async fn settings(State(shared): State<Arc<Shared>>, Json(s): Json<Settings>) -> Json<()> {
    if let Some(ms) = s.latency_ms {
        shared.set_latency(Duration::from_millis(ms));
    }
    if let Some(ms) = s.latency_jitter_ms {
        shared.set_jitter(Duration::from_millis(ms));
    }
    if let Some(q) = s.quota_per_minute {
        shared.set_quota(q);
    }
    Json(())
}

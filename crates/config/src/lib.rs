//! Xibaar's configuration: one TOML file, overridden by `XIBAAR_<SECTION>__<KEY>` environment
//! variables (e.g. `XIBAAR_API__LISTEN=0.0.0.0:8080`). Unknown keys and invalid values fail at
//! start with the key named. Secrets are read from the file, the environment or a `*_file`
//! path, and never printed.

mod archive;
mod secret;
mod sources;

use std::{
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use serde::Deserialize;

pub use archive::{ArchiveConfig, ArchiveCredentials};
pub use secret::Secret;
pub use sources::{
    Encrypt, MAX_SOURCE_BATCH, SourceConfig, SourceKind, SourceStart, SqlConnection, SqlLogin,
    TextTemplates,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    /// A key whose name holds a name from the configuration (`sources.<name>.query`).
    #[error("configuration key `{key}`: {message}")]
    InvalidKey { key: String, message: String },
    #[error("configuration key `{key}`: cannot read {path}: {source}")]
    SecretFile {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub postgres: PostgresConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub ops: OpsConfig,
    #[serde(default)]
    pub fcm: FcmConfig,
    #[serde(default)]
    pub dispatcher: DispatcherConfig,
    #[serde(default)]
    pub projector: ProjectorConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// The SQL Server databases sources read, by name.
    #[serde(default)]
    pub sql: std::collections::BTreeMap<String, SqlConnection>,
    /// Notifications and customer attributes read from SQL Server, by name.
    #[serde(default)]
    pub sources: std::collections::BTreeMap<String, SourceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// A server URL, or several separated by commas (the seeds of a cluster): a role starts
    /// while any of them answers, and learns the rest of the cluster from it.
    pub url: String,
    /// A `.creds` file (JWT + nkey seed) for NATS accounts.
    pub credentials_file: Option<PathBuf>,
    /// Replicas of every stream: 1 for a single server, 3 for a cluster.
    pub stream_replicas: usize,
    /// Create or update the streams when a role starts.
    pub apply_streams_on_start: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            credentials_file: None,
            stream_replicas: 1,
            apply_streams_on_start: true,
        }
    }
}

/// The Postgres of a local development machine, when neither `postgres.url` nor
/// `postgres.url_file` is given.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/xibaar";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// May hold a password, so it is a secret; or give `url_file`.
    pub url: Option<Secret>,
    pub url_file: Option<PathBuf>,
    pub max_connections: u32,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            // Neither set: the local default of `postgres_url`. A default here would make
            // `url_file` alone (the way a deployment names a secret file) two urls.
            url: None,
            url_file: None,
            max_connections: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Requests per minute per customer (tokens without scopes); more get 429.
    pub customer_requests_per_minute: NonZeroU32,
    /// Requests per minute per back-office client (tokens with scopes); more get 429.
    pub client_requests_per_minute: NonZeroU32,
    /// How long a request may wait for JetStream to store what it writes, retrying through a
    /// stream leader's election (about 5 s after a node is lost), before answering 503. Keep it
    /// under the load balancer's and clients' request timeouts.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            max_body_bytes: 1024 * 1024,
            customer_requests_per_minute: NonZeroU32::new(120).expect("non-zero"),
            // A back office announcing an outage sends in bursts; 20,000 a second.
            client_requests_per_minute: NonZeroU32::new(1_200_000).expect("non-zero"),
            publish_timeout: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    /// HS256 shared secret; or give `hs256_secret_file`.
    pub hs256_secret: Option<Secret>,
    pub hs256_secret_file: Option<PathBuf>,
    /// A JSON Web Key Set of the identity provider's RSA (RS256) and P-256 (ES256) public keys;
    /// tokens name their key with `kid`.
    pub jwks_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "xibaar".into(),
            audience: "xibaar-api".into(),
            hs256_secret: None,
            hs256_secret_file: None,
            jwks_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Health probes and `/metrics`, apart from the public API.
    pub listen: SocketAddr,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".parse().expect("valid address"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FcmConfig {
    /// `https://fcm.googleapis.com` in production; the stand-in's address locally.
    pub endpoint: String,
    /// Requests in flight at once, spread over as many HTTP/2 connections as they need.
    pub concurrency: usize,
    /// Concurrent streams FCM allows on one HTTP/2 connection (100): a connection is opened
    /// when every open one carries this many requests.
    pub streams_per_connection: NonZeroU32,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Extra PEM certificates trusted besides the system roots (a corporate proxy's CA).
    pub ca_bundle: Option<PathBuf>,
    /// One entry per Firebase app; a device's `app_id` selects its entry.
    pub apps: Vec<FcmApp>,
    /// Messages per minute per Firebase project (FCM's quota is 600,000; errors count too).
    pub rate_limit_per_minute: NonZeroU32,
    /// Consecutive failures (429/5xx/transport) that open a project's circuit. Credential
    /// failures (THIRD_PARTY_AUTH_ERROR, 401 after a token refresh) open it at once.
    pub circuit_failure_threshold: NonZeroU32,
    /// How long an open circuit pauses sending before one probe request is let through; doubled
    /// after each failed probe, up to `circuit_max_open_for`.
    #[serde(with = "humantime_serde")]
    pub circuit_open_for: Duration,
    #[serde(with = "humantime_serde")]
    pub circuit_max_open_for: Duration,
}

impl Default for FcmConfig {
    fn default() -> Self {
        Self {
            endpoint: "https://fcm.googleapis.com".into(),
            concurrency: 256,
            streams_per_connection: NonZeroU32::new(100).expect("non-zero"),
            request_timeout: Duration::from_secs(10),
            ca_bundle: None,
            apps: Vec::new(),
            rate_limit_per_minute: NonZeroU32::new(600_000).expect("non-zero"),
            circuit_failure_threshold: NonZeroU32::new(10).expect("non-zero"),
            circuit_open_for: Duration::from_secs(30),
            circuit_max_open_for: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmApp {
    pub app_id: String,
    pub project_id: String,
    pub service_account_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherConfig {
    /// Devices read from the registry per query during fan-out.
    pub fanout_page_size: u32,
    /// Most devices a high-, normal- or low-priority fan-out lets wait in its lane (counted in
    /// whole delivery pages): past it, the fan-out publishes more only as the senders take them.
    /// Urgent fan-outs are never held back.
    pub fanout_max_backlog: u64,
    /// Delivery attempts before a job is dead-lettered.
    pub max_attempts: NonZeroU32,
    #[serde(with = "humantime_serde")]
    pub retry_base_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            fanout_page_size: 1000,
            fanout_max_backlog: 50_000,
            max_attempts: NonZeroU32::new(8).expect("non-zero"),
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectorConfig {
    /// Most facts applied in one transaction: events, each device of a page of successes
    /// counted (so a transaction stays the same size whatever shape the log has).
    pub batch_size: usize,
    /// Longest a partial batch waits for more events.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            batch_wait: Duration::from_millis(20),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info,xibaar_dispatcher=debug`; `RUST_LOG` wins when set.
    pub filter: String,
    /// Where spans are sent over OTLP/HTTP (protobuf), e.g.
    /// `http://otel-collector:4318/v1/traces`. Unset: trace ids still appear in the logs and
    /// travel with every message, but spans are not exported, unless the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set.
    pub otlp_traces_endpoint: Option<String>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            filter: "info".into(),
            otlp_traces_endpoint: None,
        }
    }
}

impl Config {
    /// Reads `path` (if given) and the `XIBAAR_<SECTION>__<KEY>` environment, then validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            figment = figment.merge(Toml::file_exact(path));
        }
        Self::from_figment(figment.merge(env_overrides()))
    }

    /// Parses a TOML document (plus the environment); used by tests and examples.
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(toml)).merge(env_overrides()))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        let servers: Vec<&str> = self.nats.url.split(',').map(str::trim).collect();
        for server in &servers {
            let parsed = url::Url::parse(server);
            let ok = parsed.as_ref().is_ok_and(|u| {
                matches!(u.scheme(), "nats" | "tls" | "ws" | "wss") && u.host_str().is_some()
            });
            if !ok {
                return Err(ConfigError::Invalid {
                    key: "nats.url",
                    message: format!(
                        "`{server}` is not a server URL: give nats://host:port, tls://, ws:// or \
                         wss://, several separated by commas"
                    ),
                });
            }
        }
        if !matches!(self.nats.stream_replicas, 1..=5) {
            return invalid("nats.stream_replicas", "must be between 1 and 5");
        }
        if self.postgres.url.is_some() && self.postgres.url_file.is_some() {
            return invalid("postgres.url", "give one of url and url_file, not both");
        }
        if self.postgres.max_connections == 0 {
            return invalid("postgres.max_connections", "must be at least 1");
        }
        if self.auth.hs256_secret.is_some() && self.auth.hs256_secret_file.is_some() {
            return invalid(
                "auth.hs256_secret",
                "give one of hs256_secret and hs256_secret_file",
            );
        }
        if let Some(secret) = &self.auth.hs256_secret
            && secret.expose().len() < 32
        {
            return invalid("auth.hs256_secret", "must be at least 32 bytes");
        }
        if let Err(e) = url::Url::parse(&self.fcm.endpoint) {
            return invalid("fcm.endpoint", &format!("not a URL: {e}"));
        }
        if self.fcm.concurrency == 0 {
            return invalid("fcm.concurrency", "must be at least 1");
        }
        if self.fcm.circuit_open_for.is_zero()
            || self.fcm.circuit_max_open_for < self.fcm.circuit_open_for
        {
            return invalid(
                "fcm.circuit_open_for",
                "must be above zero and at most fcm.circuit_max_open_for",
            );
        }
        let mut app_ids: Vec<&str> = self.fcm.apps.iter().map(|a| a.app_id.as_str()).collect();
        app_ids.sort_unstable();
        if app_ids.windows(2).any(|w| w[0] == w[1]) {
            return invalid("fcm.apps", "app_id must be unique");
        }
        if self.dispatcher.fanout_page_size == 0 {
            return invalid("dispatcher.fanout_page_size", "must be at least 1");
        }
        if self.dispatcher.fanout_max_backlog == 0 {
            return invalid("dispatcher.fanout_max_backlog", "must be at least 1");
        }
        if self.dispatcher.retry_base_delay > self.dispatcher.retry_max_delay {
            return invalid(
                "dispatcher.retry_base_delay",
                "must not exceed retry_max_delay",
            );
        }
        if self.projector.batch_size == 0 {
            return invalid("projector.batch_size", "must be at least 1");
        }
        self.archive.validate()?;
        sources::validate(&self.sql, &self.sources)
    }

    /// The Postgres URL, read from `postgres.url_file` when configured that way.
    /// `postgres.url`, or the content of `postgres.url_file`, or a local server's default.
    pub fn postgres_url(&self) -> Result<Secret, ConfigError> {
        secret::resolve(
            "postgres.url",
            self.postgres.url.as_ref(),
            self.postgres.url_file.as_deref(),
        )
        .map(|url| url.unwrap_or_else(|| Secret::new(DEFAULT_POSTGRES_URL)))
    }

    /// The HS256 secret for API tokens, if one is configured.
    pub fn jwt_secret(&self) -> Result<Option<Secret>, ConfigError> {
        secret::resolve(
            "auth.hs256_secret",
            self.auth.hs256_secret.as_ref(),
            self.auth.hs256_secret_file.as_deref(),
        )
    }
}

/// Only variables with a section separator are configuration; other `XIBAAR_*` variables (such
/// as `XIBAAR_CONFIG`) belong to the command line.
fn env_overrides() -> Env {
    Env::prefixed("XIBAAR_")
        .filter(|key| key.as_str().contains("__"))
        .split("__")
}

#[cfg(test)]
mod tests;

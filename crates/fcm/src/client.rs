use std::{collections::HashMap, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use reqwest::{StatusCode, header};
use serde::Deserialize;
use tokio::sync::Semaphore;
use xibaar_config::FcmConfig;

use crate::{
    auth::{ServiceAccountKey, TokenError, TokenSource},
    breaker::{BreakerSettings, CircuitBreaker, CircuitState, Verdict},
    error::{FcmError, FcmErrorCode},
    message::Message,
};

#[derive(Debug, thiserror::Error)]
pub enum FcmClientError {
    #[error("no Firebase app `{0}` is configured (fcm.apps)")]
    UnknownApp(String),
    #[error(transparent)]
    Fcm(#[from] FcmError),
    #[error("access token: {0}")]
    Token(#[from] TokenError),
    #[error("request to FCM failed: {0}")]
    Transport(#[source] crate::transport::TransportError),
    #[error("FCM answered with a body that is not its JSON: {0}")]
    Answer(#[source] serde_json::Error),
    #[error("cannot build the FCM client: {0}")]
    Setup(String),
    /// The project's circuit is open: nothing was sent, and this is not a delivery attempt.
    #[error("sending to Firebase project `{project}` is paused for {retry_in:?} (circuit open)")]
    CircuitOpen { project: String, retry_in: Duration },
}

impl FcmClientError {
    /// Failures that say nothing about the message and may pass: retry later.
    pub fn is_transient(&self) -> bool {
        match self {
            FcmClientError::Fcm(e) => e.is_retryable(),
            FcmClientError::Transport(_) => true,
            FcmClientError::Token(TokenError::Transport { .. }) => true,
            FcmClientError::Token(TokenError::Refused { status, .. }) => *status >= 500,
            _ => false,
        }
    }
}

/// FCM's answer to a successful send.
#[derive(Debug, Clone, Deserialize)]
pub struct SentMessage {
    /// `projects/<project>/messages/<id>`.
    pub name: String,
}

const USER_AGENT: &str = concat!("xibaar/", env!("CARGO_PKG_VERSION"));

struct App {
    /// Shared, not copied, by the answer counter's label at every push.
    project_id: metrics::SharedString,
    /// `<endpoint>/v1/projects/<project>/messages:send`, parsed once.
    send_uri: http::Uri,
    tokens: TokenSource,
    /// Shared by every app of the same project: FCM's quota and health are per project.
    project: Arc<Project>,
}

struct Project {
    breaker: Arc<CircuitBreaker>,
    /// This process's share of the project's rate: the whole rate divided by the dispatchers
    /// sending for the deployment ([`FcmClient::set_share`]). Replaced whole when the count
    /// changes; a sender holds the one it started waiting on.
    limiter: std::sync::RwLock<Arc<DefaultDirectRateLimiter>>,
    /// The project's rate for the whole deployment.
    per_minute: NonZeroU32,
    clock: governor::clock::DefaultClock,
    /// One sender at a time waits on the limiter; the others queue here (FIFO) without waking.
    /// With hundreds of senders polling the limiter on their own, each cell woke them all.
    gate: tokio::sync::Mutex<()>,
    /// Normal and low messages queue here first, so an urgent or high one waits behind at most
    /// one other message for the next cell, not behind the whole backlog.
    low_gate: tokio::sync::Mutex<()>,
}

impl Project {
    /// Takes one cell of the project's quota, urgent and high messages first.
    async fn admit(&self, urgent: bool) {
        let _low = if urgent {
            None
        } else {
            Some(self.low_gate.lock().await)
        };
        let _gate = self.gate.lock().await;
        // governor's own `until_ready` sleeps on a futures-timer thread, which cost more CPU at
        // 10,000 waits a second than the rest of the limiter; tokio's timer is free here.
        loop {
            let limiter = self.current_limiter();
            let Err(not_until) = limiter.check() else {
                return;
            };
            let now = governor::clock::Clock::now(&self.clock);
            tokio::time::sleep(not_until.wait_time_from(now)).await;
        }
    }

    fn current_limiter(&self) -> Arc<DefaultDirectRateLimiter> {
        self.limiter
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes `1 / of` of the project's rate from now on.
    fn set_share(&self, of: NonZeroU32) {
        let share = NonZeroU32::new(self.per_minute.get() / of.get()).unwrap_or(NonZeroU32::MIN);
        let limiter = Arc::new(RateLimiter::direct_with_clock(
            project_quota(share),
            self.clock.clone(),
        ));
        *self.limiter.write().unwrap_or_else(|p| p.into_inner()) = limiter;
    }
}

/// FCM's quota is per minute, but a bucket holding a whole minute would allow twice the quota in
/// a minute that starts with a full bucket. The bucket holds a tenth of a second instead, so any
/// minute sees at most the quota plus 0.17 %.
fn project_quota(per_minute: NonZeroU32) -> Quota {
    let period = Duration::from_secs(60) / per_minute.get();
    let burst = NonZeroU32::new((per_minute.get() / 600).max(1)).expect("at least one");
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .expect("a non-zero period")
        .allow_burst(burst)
}

pub struct FcmClient {
    /// For access tokens.
    http: reqwest::Client,
    /// For sends.
    connections: crate::connections::Connections,
    endpoint: String,
    apps: HashMap<String, Arc<App>>,
    in_flight: Semaphore,
}

impl std::fmt::Debug for FcmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmClient")
            .field("endpoint", &self.endpoint)
            .field("apps", &self.apps.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl FcmClient {
    pub fn new(config: &FcmConfig) -> Result<Self, FcmClientError> {
        let setup = |e: &dyn std::fmt::Display| FcmClientError::Setup(e.to_string());
        let mut pem = None;
        let mut certificates = Vec::new();
        if let Some(path) = &config.ca_bundle {
            let bundle = std::fs::read(path)
                .map_err(|e| setup(&format!("fcm.ca_bundle {}: {e}", path.display())))?;
            certificates = reqwest::Certificate::from_pem_bundle(&bundle)
                .map_err(|e| setup(&format!("fcm.ca_bundle {}: {e}", path.display())))?;
            pem = Some(bundle);
        }
        // Access tokens come through reqwest (a request an hour); sends through the pool.
        let mut tokens = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT);
        for cert in certificates {
            tokens = tokens.add_root_certificate(cert);
        }
        let http = tokens.build().map_err(|e| setup(&e))?;
        let dialer = Arc::new(
            crate::transport::Dialer::new(
                config.endpoint.trim_end_matches('/'),
                pem.as_deref(),
                config.request_timeout,
                &hyper_util::client::proxy::matcher::Matcher::from_env(),
            )
            .map_err(|e| setup(&e))?,
        );
        let streams = config.streams_per_connection.get() as usize;
        let connections = crate::connections::Connections::new(
            dialer,
            streams,
            config.concurrency.div_ceil(streams),
        );
        let breaker = BreakerSettings {
            failure_threshold: config.circuit_failure_threshold.get(),
            open_for: config.circuit_open_for,
            max_open_for: config.circuit_max_open_for,
        };
        let mut projects: HashMap<String, Arc<Project>> = HashMap::new();
        let mut apps = HashMap::new();
        for app in &config.apps {
            let key = ServiceAccountKey::from_file(&app.service_account_file)?;
            let project = projects
                .entry(app.project_id.clone())
                .or_insert_with(|| {
                    let clock = governor::clock::DefaultClock::default();
                    Arc::new(Project {
                        breaker: CircuitBreaker::new(&app.project_id, breaker),
                        limiter: std::sync::RwLock::new(Arc::new(RateLimiter::direct_with_clock(
                            project_quota(config.rate_limit_per_minute),
                            clock.clone(),
                        ))),
                        per_minute: config.rate_limit_per_minute,
                        clock,
                        gate: tokio::sync::Mutex::new(()),
                        low_gate: tokio::sync::Mutex::new(()),
                    })
                })
                .clone();
            let send_url = format!(
                "{}/v1/projects/{}/messages:send",
                config.endpoint.trim_end_matches('/'),
                app.project_id
            );
            let send_uri: http::Uri = send_url
                .parse()
                .map_err(|e| setup(&format!("fcm.endpoint {send_url}: {e}")))?;
            apps.insert(
                app.app_id.clone(),
                Arc::new(App {
                    project_id: metrics::SharedString::from_shared(Arc::from(
                        app.project_id.as_str(),
                    )),
                    send_uri,
                    tokens: TokenSource::new(key),
                    project,
                }),
            );
        }
        Ok(Self {
            http,
            connections,
            endpoint: config.endpoint.trim_end_matches('/').to_owned(),
            apps,
            in_flight: Semaphore::new(config.concurrency),
        })
    }

    /// The HTTP/2 connections open to FCM now.
    pub fn connections(&self) -> usize {
        self.connections.len()
    }

    pub fn knows_app(&self, app_id: &str) -> bool {
        self.apps.contains_key(app_id)
    }

    /// The circuit state of the project behind `app_id`.
    pub fn circuit_state(&self, app_id: &str) -> Option<CircuitState> {
        self.apps.get(app_id).map(|a| a.project.breaker.state())
    }

    /// Time left while the circuit of the project behind `app_id` is open.
    pub fn paused_for_app(&self, app_id: &str) -> Option<Duration> {
        self.apps
            .get(app_id)
            .and_then(|a| a.project.breaker.open_remaining())
    }

    /// When every project's circuit is open, the time until the first may send again: callers
    /// stop taking work for that long instead of pulling jobs only to hand them back.
    pub fn paused_for(&self) -> Option<Duration> {
        self.apps
            .values()
            .map(|a| a.project.breaker.open_remaining())
            .try_fold(Duration::MAX, |min, left| left.map(|l| min.min(l)))
            .filter(|_| !self.apps.is_empty())
    }

    /// Makes this client keep to `1 / dispatchers` of each project's configured rate: FCM's
    /// quota is the project's, shared by every dispatcher of the deployment.
    pub fn set_share(&self, dispatchers: NonZeroU32) {
        let mut done = std::collections::HashSet::new();
        for app in self.apps.values() {
            if done.insert(Arc::as_ptr(&app.project)) {
                app.project.set_share(dispatchers);
            }
        }
        metrics::gauge!("xibaar_fcm_rate_share_dispatchers").set(f64::from(dispatchers.get()));
    }

    /// Sends one message to the project of `app_id`. A 401 refreshes the access token and
    /// tries once more; every other answer is returned as it is.
    #[tracing::instrument(name = "fcm.send", skip_all, fields(app_id = %app_id, otel.kind = "client"))]
    pub async fn send(
        &self,
        app_id: &str,
        message: &Message,
    ) -> Result<SentMessage, FcmClientError> {
        let app = self
            .apps
            .get(app_id)
            .ok_or_else(|| FcmClientError::UnknownApp(app_id.to_owned()))?;
        let permit =
            app.project
                .breaker
                .admit()
                .map_err(|retry_in| FcmClientError::CircuitOpen {
                    project: app.project_id.to_string(),
                    retry_in,
                })?;
        let result = self.send_admitted(app, message).await;
        permit.record(match &result {
            Ok(_) => Verdict::Healthy,
            Err(FcmClientError::Fcm(e)) if e.is_credential_failure() => Verdict::CredentialFailure,
            Err(FcmClientError::Token(TokenError::Refused { status, .. })) if *status < 500 => {
                Verdict::CredentialFailure
            }
            Err(e) if e.is_transient() => Verdict::Failed,
            Err(_) => Verdict::Healthy,
        });
        result
    }

    async fn send_admitted(
        &self,
        app: &App,
        message: &Message,
    ) -> Result<SentMessage, FcmClientError> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|e| FcmClientError::Setup(e.to_string()))?;
        #[derive(serde::Serialize)]
        struct SendBody<'a> {
            message: &'a Message,
        }
        let body = bytes::Bytes::from(
            serde_json::to_vec(&SendBody { message })
                .map_err(|e| FcmClientError::Setup(e.to_string()))?,
        );
        let mut refreshed = false;
        loop {
            let token = app.tokens.token(&self.http).await?;
            let waiting = std::time::Instant::now();
            app.project.admit(message.is_high_priority()).await;
            let waited = waiting.elapsed();
            if !waited.is_zero() {
                metrics::counter!("xibaar_fcm_rate_limit_wait_microseconds_total")
                    .increment(waited.as_micros() as u64);
            }
            let started = std::time::Instant::now();
            let stream = self.connections.stream();
            let request = http::Request::post(app.send_uri.clone())
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::USER_AGENT, USER_AGENT)
                .body(http_body_util::Full::new(body.clone()))
                .map_err(|e| FcmClientError::Setup(e.to_string()))?;
            let answer = stream.client().send(request).await.map_err(|e| {
                answered(&app.project_id, "TRANSPORT");
                FcmClientError::Transport(e)
            })?;
            let (status, retry_after, bytes) = (answer.status, answer.retry_after, answer.body);
            drop(stream);
            metrics::histogram!("xibaar_fcm_request_seconds")
                .record(started.elapsed().as_secs_f64());
            if status.is_success() {
                answered(&app.project_id, "OK");
                let sent: SentMessage =
                    serde_json::from_slice(&bytes).map_err(FcmClientError::Answer)?;
                return Ok(sent);
            }
            let error = FcmError::from_response(status.as_u16(), retry_after, &bytes);
            answered(&app.project_id, error.code.as_str());
            if status == StatusCode::UNAUTHORIZED
                && error.code == FcmErrorCode::Unauthenticated
                && !refreshed
            {
                app.tokens.invalidate(&token).await;
                refreshed = true;
                continue;
            }
            return Err(error.into());
        }
    }
}

/// `xibaar_fcm_responses_total{project, code}`: FCM's answers by error class (`OK`,
/// `UNREGISTERED`, `QUOTA_EXCEEDED`, …, or `TRANSPORT` when no answer came). Counted at every
/// push, so its labels are a shared and a static string: no copy is made to find the counter.
fn answered(project: &metrics::SharedString, code: &'static str) {
    metrics::counter!("xibaar_fcm_responses_total", "project" => project.clone(), "code" => code)
        .increment(1);
}

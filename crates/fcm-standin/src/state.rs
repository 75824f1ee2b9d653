use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Account, StandInConfig, errors::ScriptedError};

/// "Answer requests for `token` (or any token) with `error`, `times` times (or always)."
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorRule {
    #[serde(default)]
    pub token: Option<String>,
    pub error: ScriptedError,
    #[serde(default)]
    pub times: Option<u32>,
    /// Sent as `Retry-After` on 429/500/503 answers.
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
}

impl ErrorRule {
    pub fn always(error: ScriptedError) -> Self {
        Self {
            token: None,
            error,
            times: None,
            retry_after_secs: None,
        }
    }

    pub fn for_token(token: &str, error: ScriptedError) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..Self::always(error)
        }
    }

    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }
}

/// A message the stand-in accepted.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub project: String,
    pub token: Option<String>,
    pub message: serde_json::Value,
    /// When the request reached the stand-in, before its latency.
    pub arrived_at: DateTime<Utc>,
    /// When the stand-in answered it.
    pub received_at: DateTime<Utc>,
}

struct IssuedToken {
    project_id: String,
    expires: Instant,
}

pub(crate) struct Shared {
    pub(crate) accounts: Vec<Account>,
    pub(crate) token_uri: String,
    token_lifetime: Duration,
    record: bool,
    record_only: Option<crate::RecordFilter>,
    latency: Mutex<Duration>,
    jitter: Mutex<Duration>,
    connections: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    /// How long each request took to answer, in microseconds: the latency as it turned out on
    /// this machine, with the stand-in's own work.
    answer_times: Mutex<hdrhistogram::Histogram<u64>>,
    quota: AtomicU64,
    /// Per project: (minute since the epoch, requests counted in it). FCM's quota is per
    /// minute per project and counts errors too; a fixed window reproduces that.
    windows: Mutex<HashMap<String, (u64, u64)>>,
    tokens: Mutex<HashMap<String, IssuedToken>>,
    rules: Mutex<Vec<ErrorRule>>,
    received: Mutex<Vec<Received>>,
    accepted: AtomicU64,
    errors: AtomicU64,
    issued: AtomicU64,
}

/// A request being answered.
pub(crate) struct InFlight {
    shared: std::sync::Arc<Shared>,
    started: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        let took = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        lock(&self.shared.answer_times).saturating_record(took);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn new(config: StandInConfig, token_uri: String) -> Self {
        Self {
            accounts: config.accounts,
            token_uri,
            token_lifetime: config.token_lifetime,
            record: config.record_messages,
            record_only: config.record_only.clone(),
            latency: Mutex::new(config.latency),
            jitter: Mutex::new(config.latency_jitter),
            connections: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
            answer_times: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            ),
            quota: AtomicU64::new(config.quota_per_minute),
            windows: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            rules: Mutex::new(Vec::new()),
            received: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            issued: AtomicU64::new(0),
        }
    }

    pub(crate) fn issue_token(&self, project_id: &str) -> (String, u64) {
        let token = format!("ya29.standin-{:032x}", rand::random::<u128>());
        lock(&self.tokens).insert(
            token.clone(),
            IssuedToken {
                project_id: project_id.to_owned(),
                expires: Instant::now() + self.token_lifetime,
            },
        );
        self.issued.fetch_add(1, Ordering::Relaxed);
        (token, self.token_lifetime.as_secs())
    }

    /// The project a live access token may send to.
    pub(crate) fn token_project(&self, token: &str) -> Option<String> {
        let tokens = lock(&self.tokens);
        let t = tokens.get(token)?;
        (t.expires > Instant::now()).then(|| t.project_id.clone())
    }

    pub(crate) fn revoke_tokens(&self) {
        lock(&self.tokens).clear();
    }

    /// Counts one request against the project's quota; `Err(seconds until the next window)`
    /// when it is over.
    pub(crate) fn charge_quota(&self, project: &str) -> Result<(), u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let minute = now / 60;
        let mut windows = lock(&self.windows);
        let window = windows.entry(project.to_owned()).or_insert((minute, 0));
        if window.0 != minute {
            *window = (minute, 0);
        }
        window.1 += 1;
        if window.1 > self.quota.load(Ordering::Relaxed) {
            Err(60 - now % 60)
        } else {
            Ok(())
        }
    }

    pub(crate) fn take_rule(&self, token: Option<&str>) -> Option<(ScriptedError, Option<u64>)> {
        let mut rules = lock(&self.rules);
        let index = rules
            .iter()
            .position(|r| r.token.is_none() || r.token.as_deref() == token)?;
        let rule = &mut rules[index];
        let answer = (rule.error, rule.retry_after_secs);
        if let Some(n) = rule.times.as_mut() {
            *n -= 1;
            if *n == 0 {
                rules.remove(index);
            }
        }
        Some(answer)
    }

    pub(crate) fn record(&self, received: Received) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        if self.record
            || self
                .record_only
                .as_ref()
                .is_some_and(|f| f(&received.message))
        {
            lock(&self.received).push(received);
        }
    }

    pub(crate) fn count_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// This answer's latency: the configured one, moved by up to the jitter either way.
    pub(crate) fn latency(&self) -> Duration {
        let (latency, jitter) = (*lock(&self.latency), *lock(&self.jitter));
        if jitter.is_zero() {
            return latency;
        }
        let low = latency.saturating_sub(jitter);
        let span = (latency + jitter - low).as_micros() as u64;
        low + Duration::from_micros(rand::random_range(0..=span))
    }

    pub(crate) fn set_jitter(&self, jitter: Duration) {
        *lock(&self.jitter) = jitter;
    }

    pub(crate) fn count_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts a request in until the returned guard drops.
    pub(crate) fn request_started(self: &std::sync::Arc<Self>) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight {
            shared: self.clone(),
            started: Instant::now(),
        }
    }

    /// The answer time at `percentile` (0–100) over every request answered so far.
    pub(crate) fn answer_time(&self, percentile: f64) -> Duration {
        Duration::from_micros(lock(&self.answer_times).value_at_percentile(percentile))
    }

    pub(crate) fn peak_in_flight(&self) -> u64 {
        self.peak_in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn set_latency(&self, latency: Duration) {
        *lock(&self.latency) = latency;
    }

    pub(crate) fn set_quota(&self, quota: u64) {
        self.quota.store(quota, Ordering::Relaxed);
    }

    pub(crate) fn add_rule(&self, rule: ErrorRule) {
        lock(&self.rules).push(rule);
    }

    pub(crate) fn clear_rules(&self) {
        lock(&self.rules).clear();
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        lock(&self.received).clone()
    }

    /// Up to `limit` recorded messages after the first `after`, and how many are recorded in
    /// all. Only the page is copied under the lock, so a reader can follow any rate.
    pub(crate) fn received_page(&self, after: usize, limit: usize) -> (Vec<Received>, usize) {
        let received = lock(&self.received);
        let start = after.min(received.len());
        let end = start.saturating_add(limit).min(received.len());
        (received[start..end].to_vec(), received.len())
    }

    pub(crate) fn accepted_count(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub(crate) fn error_count(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub(crate) fn tokens_issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }
}

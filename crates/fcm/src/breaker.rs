//! A circuit breaker per Firebase project.
//!
//! Closed: requests pass; consecutive failures are counted. A credential failure, or
//! `failure_threshold` consecutive 429/5xx/transport failures, opens it. Open: requests are
//! refused at once with the time left, so callers hand their jobs back (a NAK with that delay,
//! which does not count as a delivery attempt) instead of burning retries against a dead
//! project. When the time is up, one probe request is let through (half-open): success closes
//! the circuit, failure opens it again for twice as long (up to `max_open_for`).
//!
//! Written by hand: the breaker crates on crates.io wrap a future and count its errors, but here
//! the failure decision depends on FCM's error class (an UNREGISTERED token is FCM working
//! fine), open durations double per failed probe, and callers need the time left to delay
//! their NAK. That is the whole state machine below.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub open_for: Duration,
    pub max_open_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }

    /// The value of the `xibaar_fcm_circuit_state` gauge.
    fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    consecutive_failures: u32,
    open_until: Instant,
    /// The length of the current (or next) open period.
    open_for: Duration,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    project: String,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

/// Permission to send one request; report how it went with [`Permit::record`]. A permit dropped
/// without a verdict (the request was cancelled) counts as neither, and a half-open circuit
/// then lets the next probe through.
#[derive(Debug)]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    recorded: bool,
}

/// What a response says about the project's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// FCM answered for the message (sent, or refused the message or token).
    Healthy,
    /// 429, 5xx, or no answer.
    Failed,
    /// The project's credentials are refused: open at once.
    CredentialFailure,
}

impl CircuitBreaker {
    pub fn new(project: &str, settings: BreakerSettings) -> Arc<Self> {
        let breaker = Arc::new(Self {
            project: project.to_owned(),
            settings,
            inner: Mutex::new(Inner {
                state: CircuitState::Closed,
                consecutive_failures: 0,
                open_until: Instant::now(),
                open_for: settings.open_for,
            }),
        });
        breaker.publish(CircuitState::Closed);
        breaker
    }

    /// A permit to send, or the time until the circuit may let a probe through.
    pub fn admit(self: &Arc<Self>) -> Result<Permit, Duration> {
        let mut inner = self.lock();
        let now = Instant::now();
        match inner.state {
            CircuitState::Closed => Ok(self.permit(false)),
            CircuitState::Open if now >= inner.open_until => {
                inner.state = CircuitState::HalfOpen;
                drop(inner);
                self.publish(CircuitState::HalfOpen);
                tracing::info!(project = %self.project, "FCM circuit half-open: sending one probe");
                Ok(self.permit(true))
            }
            CircuitState::Open => Err(inner.open_until - now),
            // A probe is out; others wait a moment for its verdict.
            CircuitState::HalfOpen => Err(Duration::from_secs(1).min(self.settings.open_for)),
        }
    }

    pub fn state(&self) -> CircuitState {
        self.lock().state
    }

    /// Time left while open; `None` when requests (or a probe) may go.
    pub fn open_remaining(&self) -> Option<Duration> {
        let inner = self.lock();
        let now = Instant::now();
        (inner.state == CircuitState::Open && inner.open_until > now)
            .then(|| inner.open_until - now)
    }

    fn permit(self: &Arc<Self>, probe: bool) -> Permit {
        Permit {
            breaker: self.clone(),
            probe,
            recorded: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves consistent plain data; keep going.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, probe: bool, verdict: Verdict) {
        let mut inner = self.lock();
        let before = inner.state;
        match verdict {
            Verdict::Healthy => {
                inner.consecutive_failures = 0;
                // Only the probe closes the circuit: a late success of a request sent before it
                // opened says little (an Android push can pass while APNs credentials fail).
                if probe && inner.state == CircuitState::HalfOpen {
                    inner.state = CircuitState::Closed;
                    inner.open_for = self.settings.open_for;
                }
            }
            Verdict::Failed | Verdict::CredentialFailure => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                let trip = verdict == Verdict::CredentialFailure
                    || inner.consecutive_failures >= self.settings.failure_threshold;
                if probe && inner.state == CircuitState::HalfOpen {
                    inner.open_for = (inner.open_for * 2).min(self.settings.max_open_for);
                    inner.state = CircuitState::Open;
                    inner.open_until = Instant::now() + inner.open_for;
                } else if inner.state == CircuitState::Closed && trip {
                    inner.state = CircuitState::Open;
                    inner.open_until = Instant::now() + inner.open_for;
                }
            }
        }
        let after = inner.state;
        let open_for = inner.open_for;
        drop(inner);
        if before != after {
            self.publish(after);
            match after {
                CircuitState::Open => {
                    metrics::counter!("xibaar_fcm_circuit_opened_total", "project" => self.project.clone())
                        .increment(1);
                    tracing::error!(project = %self.project, ?verdict, ?open_for, "FCM circuit open: sending to this project is paused");
                }
                CircuitState::Closed => {
                    tracing::info!(project = %self.project, "FCM circuit closed: sending resumed");
                }
                CircuitState::HalfOpen => {}
            }
        }
    }

    /// A probe that ended without a verdict: allow the next one.
    fn abandon_probe(&self) {
        let mut inner = self.lock();
        if inner.state == CircuitState::HalfOpen {
            inner.state = CircuitState::Open;
            inner.open_until = Instant::now();
        }
    }

    fn publish(&self, state: CircuitState) {
        metrics::gauge!("xibaar_fcm_circuit_state", "project" => self.project.clone())
            .set(state.gauge());
    }
}

impl Permit {
    pub fn record(mut self, verdict: Verdict) {
        self.recorded = true;
        self.breaker.record(self.probe, verdict);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            self.breaker.abandon_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_for_ms: u64) -> Arc<CircuitBreaker> {
        CircuitBreaker::new(
            "p",
            BreakerSettings {
                failure_threshold: 3,
                open_for: Duration::from_millis(open_for_ms),
                max_open_for: Duration::from_millis(open_for_ms * 4),
            },
        )
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let b = breaker(10_000);
        b.admit().unwrap().record(Verdict::Failed);
        b.admit().unwrap().record(Verdict::Failed);
        b.admit().unwrap().record(Verdict::Healthy);
        b.admit().unwrap().record(Verdict::Failed);
        b.admit().unwrap().record(Verdict::Failed);
        assert_eq!(b.state(), CircuitState::Closed);
        b.admit().unwrap().record(Verdict::Failed);
        assert_eq!(b.state(), CircuitState::Open);
        let left = b.admit().unwrap_err();
        assert!(left > Duration::from_secs(9) && left <= Duration::from_secs(10));
    }

    #[test]
    fn a_credential_failure_opens_at_once() {
        let b = breaker(10_000);
        b.admit().unwrap().record(Verdict::CredentialFailure);
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.open_remaining().is_some());
    }

    #[test]
    fn one_probe_when_the_time_is_up_then_closed_or_open_for_longer() {
        let b = breaker(20);
        b.admit().unwrap().record(Verdict::CredentialFailure);
        std::thread::sleep(Duration::from_millis(30));
        let probe = b.admit().expect("a probe goes through");
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(b.admit().is_err(), "only one probe at a time");
        probe.record(Verdict::Failed);
        assert_eq!(b.state(), CircuitState::Open);
        let left = b.admit().unwrap_err();
        assert!(left > Duration::from_millis(20), "doubled: {left:?}");
        std::thread::sleep(Duration::from_millis(45));
        b.admit().expect("second probe").record(Verdict::Healthy);
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.admit().is_ok());
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_one_through() {
        let b = breaker(10);
        b.admit().unwrap().record(Verdict::CredentialFailure);
        std::thread::sleep(Duration::from_millis(15));
        drop(b.admit().expect("probe"));
        assert!(b.admit().is_ok());
    }
}

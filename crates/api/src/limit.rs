//! Per-customer and per-client request budgets (token buckets from `governor`), answered with
//! 429, `Retry-After` and the `RateLimit-Limit`/`-Remaining`/`-Reset` headers of the IETF
//! RateLimit fields draft on every authenticated response. Several apis behind a balancer keep
//! one budget per caller between them ([`share`]).

mod share;

use std::{
    num::NonZeroU32,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::Request,
    http::{HeaderMap, HeaderValue},
    middleware::Next,
    response::Response,
};
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DefaultKeyedStateStore,
};

use crate::{auth::Caller, problem::ApiError};

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// How often (in checks) buckets that are full again are forgotten, so a million customers
/// do not stay in memory.
const SWEEP_EVERY: u64 = 10_000;

/// Cheap to clone: the clones share the buckets.
#[derive(Clone)]
pub struct RateLimits(Arc<Buckets>);

struct Buckets {
    customers: Keyed,
    clients: Keyed,
    clock: DefaultClock,
    checks: AtomicU64,
    /// What this instance admitted since it last told the other apis; `None` when it runs
    /// alone.
    spent: OnceLock<share::Spent>,
}

/// Which of the two budgets a caller draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Class {
    Customer = 0,
    Client = 1,
}

impl Buckets {
    fn limiter(&self, class: Class) -> &Keyed {
        match class {
            Class::Customer => &self.customers,
            Class::Client => &self.clients,
        }
    }
}

/// What is left of a caller's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

impl RateLimits {
    /// Customers (tokens without scopes) and back-office clients (tokens with scopes) each get
    /// their own bucket of this many requests per minute.
    pub fn new(customer_per_minute: NonZeroU32, client_per_minute: NonZeroU32) -> Self {
        let clock = DefaultClock::default();
        let keyed = |per_minute| {
            RateLimiter::dashmap_with_clock(Quota::per_minute(per_minute), clock.clone())
                .with_middleware::<StateInformationMiddleware>()
        };
        Self(Arc::new(Buckets {
            customers: keyed(customer_per_minute),
            clients: keyed(client_per_minute),
            clock: clock.clone(),
            checks: AtomicU64::new(0),
            spent: OnceLock::new(),
        }))
    }

    /// Keeps one budget per caller across every api on this NATS: see [`share`].
    pub fn share_across_instances(
        &self,
        client: async_nats::Client,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let buckets = self.0.clone();
        tokio::spawn(async move { share::run(buckets, client, shutdown).await });
    }

    /// Takes one request from `caller`'s budget.
    pub fn check(&self, caller: &Caller) -> Result<Budget, ApiError> {
        let b = &self.0;
        if b.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            b.customers.retain_recent();
            b.clients.retain_recent();
        }
        let class = if caller.scopes.is_empty() {
            Class::Customer
        } else {
            Class::Client
        };
        match b.limiter(class).check_key(&caller.subject) {
            Ok(snapshot) => {
                if let Some(spent) = b.spent.get() {
                    spent.add(class, &caller.subject);
                }
                let quota = snapshot.quota();
                let limit = quota.burst_size().get();
                let remaining = snapshot.remaining_burst_capacity();
                let refill = quota.replenish_interval() * (limit - remaining);
                Ok(Budget {
                    limit,
                    remaining,
                    reset_secs: ceil_secs(refill),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(b.clock.now());
                Err(ApiError::TooManyRequests {
                    limit: not_until.quota().burst_size().get(),
                    retry_after_secs: ceil_secs(wait).max(1),
                })
            }
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

pub(crate) fn budget_headers(headers: &mut HeaderMap, limit: u32, remaining: u32, reset: u64) {
    headers.insert("ratelimit-limit", HeaderValue::from(limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(reset));
}

/// Where the `Caller` extractor leaves the budget for [`budget_layer`] to put in the response.
#[derive(Clone, Default)]
pub(crate) struct BudgetSlot(pub(crate) Arc<OnceLock<Budget>>);

/// Adds the RateLimit headers to every response of an authenticated request.
pub(crate) async fn budget_layer(mut request: Request, next: Next) -> Response {
    let slot = BudgetSlot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    if let Some(b) = slot.0.get() {
        budget_headers(response.headers_mut(), b.limit, b.remaining, b.reset_secs);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(subject: &str, scopes: &[&str]) -> Caller {
        Caller::new(
            subject.into(),
            scopes.iter().map(|s| (*s).to_owned()).collect(),
        )
    }

    #[test]
    fn customers_and_clients_have_separate_buckets() {
        let limits = RateLimits::new(NonZeroU32::new(3).unwrap(), NonZeroU32::new(5).unwrap());
        let alice = caller("alice", &[]);
        let remaining: Vec<u32> = (0..3)
            .map(|_| limits.check(&alice).unwrap().remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        match limits.check(&alice) {
            Err(ApiError::TooManyRequests {
                limit,
                retry_after_secs,
            }) => {
                assert_eq!(limit, 3);
                assert!((1..=20).contains(&retry_after_secs), "{retry_after_secs}");
            }
            other => panic!("expected 429, got {other:?}"),
        }
        assert_eq!(limits.check(&caller("bob", &[])).unwrap().remaining, 2);
        let billing = caller("billing", &["notifications:send"]);
        assert_eq!(
            limits.check(&billing).unwrap(),
            Budget {
                limit: 5,
                remaining: 4,
                reset_secs: 12,
            }
        );
    }
}

//! One budget per caller across several apis behind a balancer.
//!
//! Each api keeps its own buckets, so answering never waits for the network; every
//! [`SYNC_EVERY`] it tells the others what it admitted since it last told them
//! (`xibaar.api.budget.<instance>` on core NATS, the callers and how many requests each), and
//! takes what the others admitted out of its own buckets. A caller whose requests are spread
//! over the apis, evenly or not, thus has one budget, not one per api; the only slack is what
//! the other apis admitted in the last interval before they told this one.
//!
//! Why not a shared counter in a key-value bucket: a JetStream round trip (two, for a
//! compare-and-set) on every request, reads included, and a rate limiter that fails when
//! JetStream is electing a leader. Why not `1 / apis` of the rate each, as the dispatchers
//! share FCM's: a balancer that keeps a customer on one api (sticky sessions, or a retrying
//! client) would give that customer a fraction of its budget.
//!
//! Without NATS, or before the first interval, each api enforces the budget alone, as a single
//! api would: never stricter than configured.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Buckets, Class};

/// How often an api tells the others what it admitted.
pub(crate) const SYNC_EVERY: Duration = Duration::from_millis(100);
const SUBJECTS: &str = "xibaar.api.budget.*";

/// Requests admitted per caller since the last report, customers and clients apart (indexed
/// by [`Class`]), so that counting a request allocates nothing for a caller already counted.
#[derive(Default)]
pub(crate) struct Spent(Mutex<[HashMap<String, u32>; 2]>);

impl Spent {
    pub(crate) fn add(&self, class: Class, subject: &str) {
        let mut spent = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let counts = &mut spent[class as usize];
        match counts.get_mut(subject) {
            Some(n) => *n = n.saturating_add(1),
            None => {
                counts.insert(subject.to_owned(), 1);
            }
        }
    }

    /// What was counted since the last report, as one; empty when nothing was.
    fn take(&self) -> Report {
        let [customers, clients] =
            std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        let spent = customers
            .into_iter()
            .map(|(s, n)| (Class::Customer, s, n))
            .chain(clients.into_iter().map(|(s, n)| (Class::Client, s, n)))
            .collect();
        Report { spent }
    }
}

/// One report: what an api admitted in its last interval.
#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Report {
    spent: Vec<(Class, String, u32)>,
}

impl Buckets {
    /// Takes `n` requests that another api admitted out of `subject`'s bucket: all of them when
    /// they fit, else as many as are left (a bucket is never overdrawn, so the caller waits
    /// for its next request, not longer).
    fn debit(&self, class: Class, subject: &str, n: u32) {
        let limiter = self.limiter(class);
        let key = subject.to_owned();
        let Some(all) = NonZeroU32::new(n) else {
            return;
        };
        if let Ok(Ok(_)) = limiter.check_key_n(&key, all) {
            return;
        }
        for _ in 0..n {
            if limiter.check_key(&key).is_err() {
                break;
            }
        }
    }

    fn apply(&self, report: Report) {
        for (class, subject, n) in report.spent {
            self.debit(class, &subject, n);
        }
    }
}

pub(crate) async fn run(
    buckets: Arc<Buckets>,
    client: async_nats::Client,
    shutdown: CancellationToken,
) {
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let own = format!("xibaar.api.budget.{instance}");
    let mut reports = match client.subscribe(SUBJECTS).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hear the other apis; each enforces request budgets alone");
            return;
        }
    };
    let _ = buckets.spent.set(Spent::default());
    let Some(spent) = buckets.spent.get() else {
        return;
    };
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            message = reports.next() => {
                let Some(message) = message else { return };
                if message.subject.as_str() == own {
                    continue;
                }
                match serde_json::from_slice::<Report>(&message.payload) {
                    Ok(report) => buckets.apply(report),
                    Err(e) => tracing::debug!(error = %e, "an unreadable budget report; ignored"),
                }
            }
            _ = tick.tick() => {
                let report = spent.take();
                if report.spent.is_empty() {
                    continue;
                }
                let payload = serde_json::to_vec(&report).expect("a report serializes");
                // Fire and forget: a lost report only lets the others admit that much more.
                if let Err(e) = client.publish(own.clone(), payload.into()).await {
                    tracing::debug!(error = %e, "telling the other apis what was admitted failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{auth::Caller, limit::RateLimits};

    use super::*;

    fn customer(subject: &str) -> Caller {
        Caller::new(subject.into(), Default::default())
    }

    #[test]
    fn what_another_api_admitted_comes_out_of_the_same_budget() {
        let ten = NonZeroU32::new(10).unwrap();
        let (here, there) = (RateLimits::new(ten, ten), RateLimits::new(ten, ten));
        there.0.spent.set(Spent::default()).ok().unwrap();
        for _ in 0..7 {
            there.check(&customer("alice")).unwrap();
        }
        there.check(&customer("bob")).unwrap();
        here.0.apply(there.0.spent.get().unwrap().take());
        // Alice spent 7 of 10 elsewhere: 3 left here, then refused.
        for _ in 0..3 {
            here.check(&customer("alice")).unwrap();
        }
        assert!(here.check(&customer("alice")).is_err());
        assert_eq!(here.check(&customer("bob")).unwrap().remaining, 8);
    }

    #[test]
    fn a_report_larger_than_what_is_left_empties_the_bucket_without_overdrawing_it() {
        let five = NonZeroU32::new(5).unwrap();
        let limits = RateLimits::new(five, five);
        limits.check(&customer("alice")).unwrap();
        limits.0.apply(Report {
            spent: vec![(Class::Customer, "alice".into(), 50)],
        });
        assert!(limits.check(&customer("alice")).is_err());
        // Someone else's budget is untouched.
        assert_eq!(limits.check(&customer("carol")).unwrap().remaining, 4);
    }
}

//! Delivery outcomes, folded in bulk: a broadcast is one outcome event per device, so a batch's
//! consecutive outcomes are applied with a handful of set-based statements instead of a round
//! trip per event.
//!
//! The rules, applied to the outcomes in stream order exactly as if one at a time:
//! - one final outcome per notification and device: the first one is kept, except that a
//!   failure (other than an invalid token) is replaced by a later success or expiry (a job
//!   retried from the DLQ); a repeated event changes nothing;
//! - the notification's counters (sent, failed, invalid, expired) move with every kept or
//!   replaced outcome; it is `completed`, at the time of the outcome that makes the counted
//!   outcomes reach the targeted devices, once its fan-out is known;
//! - `daily_stats` moves the same way, per UTC day of the outcome, priority and outcome;
//! - the first outcome of a notification on a customer's device puts it in their inbox, at the
//!   event's sequence.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;
use xibaar_core::{
    Event, EventEnvelope, Priority,
    event::{DeliveryFailure, TopicOutcome},
};

/// The fold's maps. Their keys are the run's own strings, hashed a few times per outcome:
/// `foldhash` takes a fifth of the time SipHash did (the fold's largest cost in a profile),
/// and no key is chosen by a client.
type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The device id of a topic or condition notification's single delivery row.
const TOPIC_DEVICE: &str = "~topic";

/// One outcome event, as the fold needs it.
#[derive(Debug, Clone)]
pub(crate) struct PendingOutcome {
    pub(crate) sequence: i64,
    pub(crate) at: DateTime<Utc>,
    pub(crate) notification_id: Uuid,
    pub(crate) priority: Priority,
    pub(crate) device_id: String,
    /// The device's owner; topic outcomes have none (FCM knows the recipients).
    pub(crate) customer_id: Option<String>,
    pub(crate) outcome: &'static str,
    pub(crate) reason: Option<&'static str>,
    pub(crate) error_code: Option<String>,
    pub(crate) attempts: i32,
    pub(crate) fcm_message_id: Option<String>,
}

/// The outcomes `envelope` records: one for an outcome event, each device's for a page of
/// successes, none for any other event.
pub(crate) fn pending(envelope: &EventEnvelope, sequence: i64) -> Vec<PendingOutcome> {
    let outcome = |notification_id: xibaar_core::NotificationId,
                   priority: Priority,
                   (device_id, customer_id): (String, Option<String>),
                   attempt: u32,
                   (outcome, reason, error_code, fcm_message_id): Recorded| {
        PendingOutcome {
            sequence,
            at: envelope.meta.occurred_at,
            notification_id: notification_id.0,
            priority,
            device_id,
            customer_id,
            outcome,
            reason,
            error_code,
            attempts: i32::try_from(attempt).unwrap_or(i32::MAX),
            fcm_message_id,
        }
    };
    let device = |device_id: &xibaar_core::DeviceId, customer_id: &xibaar_core::CustomerId| {
        (device_id.to_string(), Some(customer_id.to_string()))
    };
    let succeeded =
        |fcm_message_id: &str| ("succeeded", None, None, Some(fcm_message_id.to_owned()));
    let one = match &envelope.event {
        Event::DeliveriesSucceeded(page) => {
            return page
                .devices
                .iter()
                .map(|d| {
                    outcome(
                        page.notification_id,
                        page.priority,
                        device(&d.device_id, &d.customer_id),
                        d.attempt,
                        succeeded(&d.fcm_message_id),
                    )
                })
                .collect();
        }
        Event::DeliverySucceeded(e) => outcome(
            e.notification_id,
            e.priority,
            device(&e.device_id, &e.customer_id),
            e.attempt,
            succeeded(&e.fcm_message_id),
        ),
        Event::DeliveryFailed(e) => outcome(
            e.notification_id,
            e.priority,
            device(&e.device_id, &e.customer_id),
            e.attempt,
            (
                "failed",
                Some(e.reason.as_str()),
                e.error_code.clone(),
                None,
            ),
        ),
        Event::DeliveryExpired(e) => outcome(
            e.notification_id,
            e.priority,
            device(&e.device_id, &e.customer_id),
            e.attempt,
            ("expired", None, None, None),
        ),
        // FCM knows a topic's recipients: one row, no owner.
        Event::TopicDelivery(e) => outcome(
            e.notification_id,
            e.priority,
            (TOPIC_DEVICE.to_owned(), None),
            e.attempt,
            match &e.outcome {
                TopicOutcome::Succeeded { fcm_message_id } => succeeded(fcm_message_id),
                TopicOutcome::Failed {
                    reason, error_code, ..
                } => ("failed", Some(reason.as_str()), error_code.clone(), None),
                TopicOutcome::Expired { .. } => ("expired", None, None, None),
            },
        ),
        _ => return Vec::new(),
    };
    vec![one]
}

/// An outcome's result: outcome, reason, error code, FCM message id.
type Recorded = (
    &'static str,
    Option<&'static str>,
    Option<String>,
    Option<String>,
);

/// What a kept outcome counts as: `succeeded`, `failed`, `invalid` or `expired`.
fn class(outcome: &str, reason: Option<&str>) -> &'static str {
    match (outcome, reason) {
        ("succeeded", _) => "succeeded",
        ("expired", _) => "expired",
        (_, Some(r)) if r == DeliveryFailure::InvalidToken.as_str() => "invalid",
        _ => "failed",
    }
}

/// A `deliveries` row as read: notification, device, customer, outcome, reason, time.
pub(crate) type HeldRow = (
    Uuid,
    String,
    Option<String>,
    String,
    Option<String>,
    DateTime<Utc>,
);

/// A `deliveries` row's key: notification, device, customer (none for a topic's row). Device
/// ids are unique within a customer only.
type Key<'a> = (Uuid, &'a str, Option<&'a str>);

fn key(o: &PendingOutcome) -> Key<'_> {
    (
        o.notification_id,
        o.device_id.as_str(),
        o.customer_id.as_deref(),
    )
}

/// The final outcome held for one notification and device.
#[derive(Debug, Clone, Copy)]
struct Held<'a> {
    outcome: &'a str,
    reason: Option<&'a str>,
    at: DateTime<Utc>,
    /// Whether `deliveries` holds a row for the key (else the run that wrote it inserts it).
    stored: bool,
}

impl Held<'_> {
    /// Whether `next` replaces this outcome.
    fn replaced_by(&self, next: &PendingOutcome) -> bool {
        self.outcome == "failed"
            && self.reason != Some(DeliveryFailure::InvalidToken.as_str())
            && next.outcome != "failed"
    }
}

/// What the fold knows `deliveries` holds: the rows read, with the writes of the runs folded
/// since laid over them. A key it does not hold has no row.
#[derive(Debug, Default)]
pub(crate) struct View<'a> {
    held: Map<Key<'a>, Held<'a>>,
}

impl<'a> View<'a> {
    /// The view of `rows`, as read from `deliveries`.
    pub(crate) fn of_rows(rows: &'a [HeldRow]) -> Self {
        let held = rows
            .iter()
            .map(|(n, d, c, outcome, reason, at)| {
                (
                    (*n, d.as_str(), c.as_deref()),
                    Held {
                        outcome,
                        reason: reason.as_deref(),
                        at: *at,
                        stored: true,
                    },
                )
            })
            .collect();
        Self { held }
    }

    /// Lays over the view the rows `folded` writes for `run`, as if read after its commit.
    pub(crate) fn overlay(&mut self, run: &[&'a PendingOutcome], folded: &Folded) {
        for &i in folded.fresh.iter().chain(&folded.replaced) {
            let o = run[i as usize];
            self.held.insert(
                key(o),
                Held {
                    outcome: o.outcome,
                    reason: o.reason,
                    at: o.at,
                    stored: true,
                },
            );
        }
    }
}

/// How a run moves one notification's counters: the change of each, and the times its
/// notification may complete at. It completes at the counted outcome with which its counted
/// outcomes first reach the targeted devices: the first one if its row counts them already,
/// else the one that adds the last missing device (one replacing another adds none).
#[derive(Debug, PartialEq)]
pub(crate) struct Counted {
    pub(crate) notification_id: Uuid,
    pub(crate) sent: i64,
    pub(crate) failed: i64,
    pub(crate) invalid: i64,
    pub(crate) expired: i64,
    /// The time of the run's first counted outcome of the notification.
    pub(crate) first_at: DateTime<Utc>,
    /// The times of those that add a device to its total, in order.
    pub(crate) adds_at: Vec<DateTime<Utc>>,
}

impl Counted {
    fn add(&mut self, class: &str, by: i64) {
        match class {
            "succeeded" => self.sent += by,
            "failed" => self.failed += by,
            "invalid" => self.invalid += by,
            _ => self.expired += by,
        }
    }
}

/// A run of outcomes folded: what it writes, as positions in the run, so that it can be folded
/// ahead of the transaction that writes it.
#[derive(Debug, PartialEq)]
pub(crate) struct Folded {
    /// Which run it is: its first and last sequences and its number of outcomes.
    pub(crate) span: (i64, i64, usize),
    /// The `deliveries` rows it gains, in key order.
    pub(crate) fresh: Vec<u32>,
    /// The `deliveries` rows it replaces, in key order.
    pub(crate) replaced: Vec<u32>,
    /// The notifications' counters, by notification id.
    pub(crate) counted: Vec<Counted>,
    /// Per UTC day, priority and class, the change of `daily_stats`.
    pub(crate) daily: Vec<((NaiveDate, Priority, &'static str), i64)>,
    /// The inbox items (the first outcome of a notification for each customer), in
    /// notification then customer order.
    pub(crate) items: Vec<u32>,
}

/// The span of `run`: its first and last sequences and its length.
pub(crate) fn span(run: &[&PendingOutcome]) -> Option<(i64, i64, usize)> {
    Some((run.first()?.sequence, run.last()?.sequence, run.len()))
}

/// Folds `run` (outcomes in stream order) over `view`, one outcome at a time, and leaves its
/// writes in the view for the runs after it.
pub(crate) fn fold<'a>(run: &[&'a PendingOutcome], view: &mut View<'a>) -> Folded {
    let mut written: Map<Key<'a>, u32> = Map::default();
    let mut counted: Map<Uuid, Counted> = Map::default();
    let mut daily: Map<(NaiveDate, Priority, &'static str), i64> = Map::default();
    let mut inbox: Map<(&str, Uuid), u32> = Map::default();
    for (i, &o) in (0u32..).zip(run) {
        if let Some(customer) = &o.customer_id {
            inbox
                .entry((customer.as_str(), o.notification_id))
                .or_insert(i);
        }
        let key = key(o);
        let previous = match view.held.get(&key) {
            None => None,
            Some(h) if h.replaced_by(o) => Some(*h),
            Some(_) => continue,
        };
        let new_class = class(o.outcome, o.reason);
        *daily
            .entry((o.at.date_naive(), o.priority, new_class))
            .or_default() += 1;
        let c = counted.entry(o.notification_id).or_insert_with(|| Counted {
            notification_id: o.notification_id,
            sent: 0,
            failed: 0,
            invalid: 0,
            expired: 0,
            first_at: o.at,
            adds_at: Vec::new(),
        });
        c.add(new_class, 1);
        if let Some(p) = &previous {
            let old_class = class(p.outcome, p.reason);
            *daily
                .entry((p.at.date_naive(), o.priority, old_class))
                .or_default() -= 1;
            c.add(old_class, -1);
        }
        if previous.is_none() {
            c.adds_at.push(o.at);
        }
        view.held.insert(
            key,
            Held {
                outcome: o.outcome,
                reason: o.reason,
                at: o.at,
                stored: previous.is_some_and(|p| p.stored),
            },
        );
        written.insert(key, i);
    }

    // The `deliveries` rows in key order, and the inbox items in key order (notification, then
    // customer): a broadcast's rows land next to each other in the indexes instead of all over
    // them.
    let mut written: Vec<(Key, u32)> = written.into_iter().collect();
    written.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let (mut fresh, mut replaced) = (Vec::new(), Vec::new());
    for (key, i) in written {
        let held = view
            .held
            .get_mut(&key)
            .expect("every written key is in the view");
        if held.stored {
            replaced.push(i);
        } else {
            fresh.push(i);
        }
        // Written by this run: the runs after it find the row.
        held.stored = true;
    }
    let mut counted: Vec<Counted> = counted.into_values().collect();
    counted.sort_unstable_by_key(|c| c.notification_id);
    let mut items: Vec<((&str, Uuid), u32)> = inbox.into_iter().collect();
    items.sort_unstable_by_key(|((customer, notification), _)| (*notification, *customer));
    let mut daily: Vec<_> = daily.into_iter().collect();
    daily.sort_unstable_by_key(|(key, _)| *key);
    Folded {
        span: span(run).unwrap_or_default(),
        fresh,
        replaced,
        counted,
        daily,
        items: items.into_iter().map(|(_, i)| i).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    type Table = BTreeMap<(Uuid, String, Option<String>), HeldRow>;

    fn random_outcome(rng: &mut StdRng, sequence: i64, notifications: &[Uuid]) -> PendingOutcome {
        let (outcome, reason) = match rng.random_range(0..4) {
            0 => ("succeeded", None),
            1 => ("failed", Some(DeliveryFailure::RetriesExhausted.as_str())),
            2 => ("failed", Some(DeliveryFailure::InvalidToken.as_str())),
            _ => ("expired", None),
        };
        let customer = rng.random_range(0..3);
        PendingOutcome {
            sequence,
            at: DateTime::from_timestamp(1_700_000_000 + sequence * 3_600, 0).unwrap(),
            notification_id: notifications[rng.random_range(0..notifications.len())],
            priority: Priority::Normal,
            device_id: format!("d{}", rng.random_range(0..4)),
            customer_id: Some(format!("c{customer}")),
            outcome,
            reason,
            error_code: None,
            attempts: 1,
            fcm_message_id: None,
        }
    }

    /// Runs of outcomes, a batch's worth.
    fn random_runs(
        rng: &mut StdRng,
        next: &mut i64,
        notifications: &[Uuid],
    ) -> Vec<Vec<PendingOutcome>> {
        (0..rng.random_range(1..4))
            .map(|_| {
                (0..rng.random_range(1..25))
                    .map(|_| {
                        *next += 1;
                        random_outcome(rng, *next, notifications)
                    })
                    .collect()
            })
            .collect()
    }

    /// What `deliveries` holds after `folded`'s writes of `run`; a gained row must be absent
    /// and a replaced one present, or a write would fail or be lost.
    fn commit(table: &mut Table, run: &[&PendingOutcome], folded: &Folded) {
        for (&i, fresh) in folded
            .fresh
            .iter()
            .map(|i| (i, true))
            .chain(folded.replaced.iter().map(|i| (i, false)))
        {
            let o = run[i as usize];
            let key = (
                o.notification_id,
                o.device_id.clone(),
                o.customer_id.clone(),
            );
            let row = (
                o.notification_id,
                o.device_id.clone(),
                o.customer_id.clone(),
                o.outcome.to_owned(),
                o.reason.map(str::to_owned),
                o.at,
            );
            assert_eq!(table.insert(key, row).is_none(), fresh);
        }
    }

    /// Each run read and folded in its transaction, after the runs before it are written.
    fn fold_in_transactions(table: &mut Table, runs: &[Vec<PendingOutcome>]) -> Vec<Folded> {
        runs.iter()
            .map(|run| {
                let run: Vec<&PendingOutcome> = run.iter().collect();
                let rows: Vec<HeldRow> = table.values().cloned().collect();
                let folded = fold(&run, &mut View::of_rows(&rows));
                commit(table, &run, &folded);
                folded
            })
            .collect()
    }

    #[test]
    fn a_batch_folded_while_the_one_before_is_in_flight_writes_what_its_transaction_would() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let notifications = [Uuid::from_u128(1), Uuid::from_u128(2)];
            let mut table = Table::new();
            let mut sequence = 0;
            let earlier = random_runs(&mut rng, &mut sequence, &notifications);
            fold_in_transactions(&mut table, &earlier);
            let before_in_flight = table.clone();
            let in_flight = random_runs(&mut rng, &mut sequence, &notifications);
            let in_flight_folded = fold_in_transactions(&mut table, &in_flight);
            let after_in_flight = table.clone();
            let batch = random_runs(&mut rng, &mut sequence, &notifications);
            let expected = fold_in_transactions(&mut table, &batch);

            // Read before or after the batch in flight committed, its writes laid over.
            for read in [&before_in_flight, &after_in_flight] {
                let rows: Vec<HeldRow> = read.values().cloned().collect();
                let mut view = View::of_rows(&rows);
                for (run, folded) in in_flight.iter().zip(&in_flight_folded) {
                    view.overlay(&run.iter().collect::<Vec<_>>(), folded);
                }
                let runs: Vec<Vec<&PendingOutcome>> =
                    batch.iter().map(|run| run.iter().collect()).collect();
                let ahead: Vec<Folded> = runs.iter().map(|run| fold(run, &mut view)).collect();
                assert_eq!(ahead, expected);
            }
        }
    }
}

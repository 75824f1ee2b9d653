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
use sqlx::PgConnection;
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
    sequence: i64,
    at: DateTime<Utc>,
    notification_id: Uuid,
    priority: Priority,
    device_id: String,
    /// The device's owner; topic outcomes have none (FCM knows the recipients).
    customer_id: Option<String>,
    outcome: &'static str,
    reason: Option<&'static str>,
    error_code: Option<String>,
    attempts: i32,
    fcm_message_id: Option<String>,
}

impl PendingOutcome {
    pub(crate) fn sequence(&self) -> i64 {
        self.sequence
    }
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

/// The final outcome held for one notification and device, and the outcome of the run that
/// is to be written for it, if any.
#[derive(Debug, Clone, Copy)]
struct Held<'a> {
    outcome: &'a str,
    reason: Option<&'a str>,
    at: DateTime<Utc>,
    /// Whether `deliveries` holds a row for the key already (else this run inserts it).
    stored: bool,
    written: Option<&'a PendingOutcome>,
}

impl Held<'_> {
    /// Whether `next` replaces this outcome.
    fn replaced_by(&self, next: &PendingOutcome) -> bool {
        self.outcome == "failed"
            && self.reason != Some(DeliveryFailure::InvalidToken.as_str())
            && next.outcome != "failed"
    }
}

/// A notification's counters as the run moves them.
#[derive(Debug, Default)]
struct Counters {
    targeted: Option<i64>,
    total: i64,
    sent: i64,
    failed: i64,
    invalid: i64,
    expired: i64,
    completed_at: Option<DateTime<Utc>>,
    completed: bool,
}

impl Counters {
    fn add(&mut self, class: &str, by: i64) {
        self.total += by;
        match class {
            "succeeded" => self.sent += by,
            "failed" => self.failed += by,
            "invalid" => self.invalid += by,
            _ => self.expired += by,
        }
    }
}

/// A run's writes, in one statement (one round trip instead of five): the `deliveries` rows it
/// gains ($1–$9) and those it replaces ($10–$18), in key order; the notifications' counters
/// ($19–$25); the daily figures ($26–$29); the inbox items ($30–$33). The sub-statements see
/// the same snapshot and none sees another's rows, which is what the fold asks of them: each
/// writes rows no other writes (the gained and the replaced `deliveries` rows are different
/// rows), and the inbox's existence probe reads only what earlier runs wrote.
///
/// The new rows go in without `ON CONFLICT`, about a quarter cheaper in Postgres: this
/// transaction has just read that they are absent, so only another writer racing this one can
/// make them conflict, and that unique violation fails the batch, which is retried
/// (`refused_for_its_data` does not count it against the event). Inbox items the customer has
/// already (through another of their devices) are left out by probing the key, not by `ON
/// CONFLICT`: with the items side by side the probes are cheap, and a plain insert skips the
/// speculative insertion `ON CONFLICT` makes per row (a sixth less time for the statement).
/// Daily rows whose changes cancel out are written too (with 0), as one at a time would.
const WRITES: &str = "\
    WITH gained AS ( \
        INSERT INTO deliveries (notification_id, device_id, customer_id, outcome, reason, \
                                error_code, attempts, fcm_message_id, occurred_at) \
        SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                             $6::text[], $7::int[], $8::text[], $9::timestamptz[])), \
    replaced AS ( \
        UPDATE deliveries d \
        SET outcome = u.outcome, reason = u.reason, error_code = u.error_code, \
            attempts = u.attempts, fcm_message_id = u.fcm_message_id, \
            occurred_at = u.occurred_at \
        FROM UNNEST($10::uuid[], $11::text[], $12::text[], $13::text[], $14::text[], \
                    $15::text[], $16::int[], $17::text[], $18::timestamptz[]) \
             u(notification_id, device_id, customer_id, outcome, reason, error_code, \
               attempts, fcm_message_id, occurred_at) \
        WHERE d.notification_id = u.notification_id AND d.device_id = u.device_id \
          AND d.customer_id IS NOT DISTINCT FROM u.customer_id), \
    counted AS ( \
        UPDATE notifications n \
        SET sent = n.sent + u.sent, failed = n.failed + u.failed, \
            invalid = n.invalid + u.invalid, expired = n.expired + u.expired, \
            status = CASE WHEN u.completed THEN 'completed' ELSE n.status END, \
            completed_at = u.completed_at \
        FROM UNNEST($19::uuid[], $20::bigint[], $21::bigint[], $22::bigint[], $23::bigint[], \
                    $24::bool[], $25::timestamptz[]) \
             u(id, sent, failed, invalid, expired, completed, completed_at) \
        WHERE n.notification_id = u.id), \
    daily AS ( \
        INSERT INTO daily_stats (day, priority, outcome, deliveries) \
        SELECT * FROM UNNEST($26::date[], $27::text[], $28::text[], $29::bigint[]) \
        ON CONFLICT (day, priority, outcome) DO UPDATE \
        SET deliveries = daily_stats.deliveries + excluded.deliveries), \
    items AS ( \
        INSERT INTO inbox (customer_id, notification_id, position, received_at) \
        SELECT * FROM UNNEST($30::text[], $31::uuid[], $32::bigint[], $33::timestamptz[]) \
             u(customer_id, notification_id, position, received_at) \
        WHERE NOT EXISTS (SELECT 1 FROM inbox i \
                          WHERE i.notification_id = u.notification_id \
                            AND i.customer_id = u.customer_id)) \
    SELECT 1";

type Writes<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds `rows` as the nine arrays of `deliveries` rows of [`WRITES`].
fn bind_deliveries<'q>(query: Writes<'q>, rows: &[&'q PendingOutcome]) -> Writes<'q> {
    query
        .bind(rows.iter().map(|o| o.notification_id).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|o| o.device_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|o| o.customer_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|o| o.outcome).collect::<Vec<_>>())
        .bind(rows.iter().map(|o| o.reason).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|o| o.error_code.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|o| o.attempts).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|o| o.fcm_message_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|o| o.at).collect::<Vec<_>>())
}

type NotificationRow = (Uuid, Option<i64>, i64, Option<DateTime<Utc>>);
type HeldRow = (
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

/// Applies `run` (outcomes in stream order) through `tx`; returns the customers the run gave an
/// inbox item, and those who had it already (a repeated outcome, or another of their devices'
/// in an earlier batch): waking them too costs their live streams one read that finds nothing,
/// where asking Postgres which items were new took a fifth of the fold's time.
pub(crate) async fn apply<'r>(
    tx: &mut PgConnection,
    run: &[&'r PendingOutcome],
) -> Result<Vec<&'r str>, sqlx::Error> {
    if run.is_empty() {
        return Ok(Vec::new());
    }
    // What the read models hold now for the run's notifications and devices.
    let (keys_n, keys_d): (Vec<Uuid>, Vec<&str>) = run
        .iter()
        .map(|o| (o.notification_id, o.device_id.as_str()))
        .unzip();
    let mut notification_ids = keys_n.clone();
    notification_ids.sort_unstable();
    notification_ids.dedup();
    // A run is nearly always the outcomes of one broadcast or a few: then the rows are found
    // by one index scan over the notifications' devices in order (a scan with array keys,
    // which Postgres walks in step with the index), five times cheaper than probing the
    // index once per key. The scan may also return a notification's row for another one's
    // device: such rows are never looked up, and there are at most as many as the keys times
    // the notifications. Runs over many notifications probe per key.
    let held_rows: Vec<HeldRow> = if notification_ids.len() <= 4 {
        let mut devices = keys_d.clone();
        devices.sort_unstable();
        devices.dedup();
        sqlx::query_as(
            "SELECT notification_id, device_id, customer_id, outcome, reason, occurred_at \
             FROM deliveries WHERE notification_id = ANY($1) AND device_id = ANY($2)",
        )
        .bind(&notification_ids)
        .bind(&devices)
        .fetch_all(&mut *tx)
        .await?
    } else {
        sqlx::query_as(
            "SELECT d.notification_id, d.device_id, d.customer_id, d.outcome, d.reason, \
                    d.occurred_at \
         FROM deliveries d \
         JOIN (SELECT DISTINCT * FROM UNNEST($1::uuid[], $2::text[])) k(n, dev) \
           ON d.notification_id = k.n AND d.device_id = k.dev",
        )
        .bind(&keys_n)
        .bind(&keys_d)
        .fetch_all(&mut *tx)
        .await?
    };
    let mut held: Map<Key, Held> = held_rows
        .iter()
        .map(|(n, d, c, outcome, reason, at)| {
            (
                (*n, d.as_str(), c.as_deref()),
                Held {
                    outcome,
                    reason: reason.as_deref(),
                    at: *at,
                    stored: true,
                    written: None,
                },
            )
        })
        .collect();
    let rows: Vec<NotificationRow> = sqlx::query_as(
        "SELECT notification_id, targeted, sent + failed + invalid + expired, completed_at \
         FROM notifications WHERE notification_id = ANY($1)",
    )
    .bind(&notification_ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut counters: Map<Uuid, Counters> = rows
        .into_iter()
        .map(|(id, targeted, total, completed_at)| {
            (
                id,
                Counters {
                    targeted,
                    total,
                    completed_at,
                    ..Counters::default()
                },
            )
        })
        .collect();

    // The fold, one outcome at a time.
    let mut daily: Map<(NaiveDate, Priority, &'static str), i64> = Map::default();
    let mut inbox: Map<(&str, Uuid), &PendingOutcome> = Map::default();
    for &o in run {
        if let Some(customer) = &o.customer_id {
            inbox
                .entry((customer.as_str(), o.notification_id))
                .or_insert(o);
        }
        let key = (
            o.notification_id,
            o.device_id.as_str(),
            o.customer_id.as_deref(),
        );
        let previous = match held.get(&key) {
            None => None,
            Some(h) if h.replaced_by(o) => Some(*h),
            Some(_) => continue,
        };
        let new_class = class(o.outcome, o.reason);
        *daily
            .entry((o.at.date_naive(), o.priority, new_class))
            .or_default() += 1;
        if let Some(p) = &previous {
            *daily
                .entry((p.at.date_naive(), o.priority, class(p.outcome, p.reason)))
                .or_default() -= 1;
        }
        if let Some(c) = counters.get_mut(&o.notification_id) {
            c.add(new_class, 1);
            if let Some(p) = &previous {
                c.add(class(p.outcome, p.reason), -1);
            }
            if c.targeted.is_some_and(|t| c.total >= t) {
                c.completed = true;
                c.completed_at = c.completed_at.or(Some(o.at));
            }
        }
        held.insert(
            key,
            Held {
                outcome: o.outcome,
                reason: o.reason,
                at: o.at,
                stored: previous.is_some_and(|p| p.stored),
                written: Some(o),
            },
        );
    }

    // The writes, in one statement ([`WRITES`]). The `deliveries` rows in key order, and the
    // inbox items in key order (notification, then customer): a broadcast's rows land next to
    // each other in the indexes instead of all over them.
    let mut written: Vec<(&Key, &Held)> =
        held.iter().filter(|(_, h)| h.written.is_some()).collect();
    written.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let (mut fresh, mut stored) = (Vec::new(), Vec::new());
    for (_, h) in written {
        let o = h.written.expect("only written outcomes are kept");
        if h.stored {
            stored.push(o);
        } else {
            fresh.push(o);
        }
    }
    let moved: Vec<(&Uuid, &Counters)> = counters
        .iter()
        .filter(|(_, c)| {
            c.sent != 0 || c.failed != 0 || c.invalid != 0 || c.expired != 0 || c.completed
        })
        .collect();
    let daily: Vec<_> = daily.into_iter().collect();
    let mut items: Vec<_> = inbox.into_iter().collect();
    items.sort_unstable_by_key(|((customer, notification), _)| (*notification, *customer));
    bind_deliveries(bind_deliveries(sqlx::query(WRITES), &fresh), &stored)
        .bind(moved.iter().map(|(id, _)| **id).collect::<Vec<_>>())
        .bind(moved.iter().map(|(_, c)| c.sent).collect::<Vec<_>>())
        .bind(moved.iter().map(|(_, c)| c.failed).collect::<Vec<_>>())
        .bind(moved.iter().map(|(_, c)| c.invalid).collect::<Vec<_>>())
        .bind(moved.iter().map(|(_, c)| c.expired).collect::<Vec<_>>())
        .bind(moved.iter().map(|(_, c)| c.completed).collect::<Vec<_>>())
        .bind(
            moved
                .iter()
                .map(|(_, c)| c.completed_at)
                .collect::<Vec<_>>(),
        )
        .bind(daily.iter().map(|((d, _, _), _)| *d).collect::<Vec<_>>())
        .bind(
            daily
                .iter()
                .map(|((_, p, _), _)| p.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(daily.iter().map(|((_, _, c), _)| *c).collect::<Vec<_>>())
        .bind(daily.iter().map(|(_, n)| *n).collect::<Vec<_>>())
        .bind(items.iter().map(|((c, _), _)| *c).collect::<Vec<_>>())
        .bind(items.iter().map(|((_, n), _)| *n).collect::<Vec<_>>())
        .bind(items.iter().map(|(_, o)| o.sequence).collect::<Vec<_>>())
        .bind(items.iter().map(|(_, o)| o.at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    Ok(items
        .into_iter()
        .map(|((customer, _), _)| customer)
        .collect())
}

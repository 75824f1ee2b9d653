//! The outcomes' reads and writes: what `deliveries` holds for a run's keys, and a folded
//! run's writes in one statement.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::outcomes::{self, Folded, HeldRow, PendingOutcome, View};

/// The text of [`WRITES`] and [`WRITES_COMMITTING`]: `$advance` goes before the run's
/// sub-statements, `$select` after them.
macro_rules! writes {
    ($advance:expr, $select:expr) => {
        concat!(
            "WITH ",
            $advance,
            "gained AS ( \
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
            status = CASE WHEN n.targeted - (n.sent + n.failed + n.invalid + n.expired) \
                               <= u.adds THEN 'completed' ELSE n.status END, \
            completed_at = CASE \
                WHEN n.targeted <= n.sent + n.failed + n.invalid + n.expired \
                    THEN coalesce(n.completed_at, u.first_at) \
                WHEN n.targeted - (n.sent + n.failed + n.invalid + n.expired) <= u.adds \
                    THEN coalesce(n.completed_at, ($26::timestamptz[])[u.adds_from - 1 + \
                        (n.targeted - (n.sent + n.failed + n.invalid + n.expired))::int]) \
                ELSE n.completed_at END \
        FROM UNNEST($19::uuid[], $20::bigint[], $21::bigint[], $22::bigint[], $23::bigint[], \
                    $24::timestamptz[], $25::int[], $27::int[]) \
             u(id, sent, failed, invalid, expired, first_at, adds_from, adds) \
        WHERE n.notification_id = u.id), \
    daily AS ( \
        INSERT INTO daily_stats (day, priority, outcome, deliveries) \
        SELECT * FROM UNNEST($28::date[], $29::text[], $30::text[], $31::bigint[]) \
        ON CONFLICT (day, priority, outcome) DO UPDATE \
        SET deliveries = daily_stats.deliveries + excluded.deliveries), \
    items AS ( \
        INSERT INTO inbox (customer_id, notification_id, position, received_at) \
        SELECT * FROM UNNEST($32::text[], $33::uuid[], $34::bigint[], $35::timestamptz[]) \
             u(customer_id, notification_id, position, received_at) \
        WHERE NOT EXISTS (SELECT 1 FROM inbox i \
                          WHERE i.notification_id = u.notification_id \
                            AND i.customer_id = u.customer_id)), \
    announced AS (SELECT pg_notify($36, payload) FROM UNNEST($37::text[]) payload) ",
            $select
        )
    };
}

/// A run's writes, in one statement (one round trip instead of seven): the `deliveries` rows it
/// gains ($1–$9) and those it replaces ($10–$18), in key order; the notifications' counters
/// and completion ($19–$27); the daily figures ($28–$31); the inbox items ($32–$35); the wake-up
/// of the customers' live streams ($36–$37, which Postgres delivers at commit). The
/// sub-statements see the same snapshot and none sees another's rows, which is what the fold
/// asks of them: each writes rows no other writes (the gained and the replaced `deliveries` rows
/// are different rows), and the inbox's existence probe reads only what earlier runs wrote.
///
/// A notification completes at the run's counted outcome with which its counted outcomes
/// first reach its targeted devices, from what its row counts when the statement runs (events
/// earlier in the batch included): the run's first counted outcome ($24) if the row reaches
/// them already, else the one adding the last missing device, found among the times of those
/// that add one ($26, each notification's from $25 on, $27 of them).
///
/// The new rows go in without `ON CONFLICT`, about a quarter cheaper in Postgres: the fold
/// found them absent (see `speculate` for a fold ahead of the transaction), so only another
/// writer racing this one can
/// make them conflict, and that unique violation fails the batch, which is retried
/// (`refused_for_its_data` does not count it against the event). Inbox items the customer has
/// already (through another of their devices) are left out by probing the key, not by `ON
/// CONFLICT`: with the items side by side the probes are cheap, and a plain insert skips the
/// speculative insertion `ON CONFLICT` makes per row (a sixth less time for the statement).
/// Daily rows whose changes cancel out are written too (with 0), as one at a time would.
const WRITES: &str = writes!("", "SELECT count(*) FROM announced");

/// [`WRITES`] with the checkpoint's compare-and-set from $39 to $40 (projection $38), for a
/// batch that is one folded run, sent on its own outside a transaction: Postgres commits it
/// when it ends, so that the batch takes one round trip instead of three (`BEGIN` with the
/// compare-and-set, the writes, `COMMIT`). When the checkpoint moved, the cast of a text that
/// is no number fails the statement and nothing of it stays. Its sub-statements run in no set
/// order, so its rows may be written while another runner's batch holds the checkpoint: the
/// loser's unique violation or failed compare-and-set undoes all of it either way.
const WRITES_COMMITTING: &str = writes!(
    concat!(checkpoint_advanced!("$38", "$39", "$40"), ", "),
    concat!(
        "SELECT (SELECT count(*) FROM announced), (",
        checkpoint_moved_fails!(),
        ")"
    )
);

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

/// What `deliveries` holds for the keys of `outcomes`, and maybe for a few more.
pub(crate) async fn read(
    conn: &mut PgConnection,
    outcomes: &[&PendingOutcome],
) -> Result<Vec<HeldRow>, sqlx::Error> {
    if outcomes.is_empty() {
        return Ok(Vec::new());
    }
    let (keys_n, keys_d): (Vec<Uuid>, Vec<&str>) = outcomes
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
    if notification_ids.len() <= 4 {
        let mut devices = keys_d;
        devices.sort_unstable();
        devices.dedup();
        sqlx::query_as(
            "SELECT notification_id, device_id, customer_id, outcome, reason, occurred_at \
             FROM deliveries WHERE notification_id = ANY($1) AND device_id = ANY($2)",
        )
        .bind(&notification_ids)
        .bind(&devices)
        .fetch_all(&mut *conn)
        .await
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
        .fetch_all(&mut *conn)
        .await
    }
}

/// Applies `run` (outcomes in stream order) through `tx`: reads what the read models hold for
/// it, folds it, writes it as [`write`] does.
pub(crate) async fn apply(
    tx: &mut PgConnection,
    run: &[&PendingOutcome],
    announce: bool,
) -> Result<(), sqlx::Error> {
    if run.is_empty() {
        return Ok(());
    }
    let rows = read(&mut *tx, run).await?;
    let folded = outcomes::fold(run, &mut View::of_rows(&rows));
    write(tx, run, &folded, announce, None).await
}

/// Writes what `folded` says of `run` through `tx`. With `announce`, the customers the run's
/// items are for are told at commit (their live inbox streams read what is new), those who had
/// the item already included (a repeated outcome, or another of their devices' in an earlier
/// batch): waking them too costs their streams one read that finds nothing, where asking
/// Postgres which items were new took a fifth of the fold's time.
/// With `advance` (projection, from, to), the checkpoint's compare-and-set goes in the same
/// statement, sent outside a transaction: committed when it returns ([`WRITES_COMMITTING`]).
pub(crate) async fn write(
    tx: &mut PgConnection,
    run: &[&PendingOutcome],
    folded: &Folded,
    announce: bool,
    advance: Option<(&str, i64, i64)>,
) -> Result<(), sqlx::Error> {
    let at = |positions: &[u32]| -> Vec<&PendingOutcome> {
        positions.iter().map(|&i| run[i as usize]).collect()
    };
    let (fresh, replaced, items) = (at(&folded.fresh), at(&folded.replaced), at(&folded.items));
    let counted = &folded.counted;
    // Each notification's times of outcomes adding a device, one after another, and where
    // each one's begin (1-based, as Postgres counts).
    let mut adds_at = Vec::new();
    let mut adds_from = Vec::with_capacity(counted.len());
    for c in counted {
        adds_from.push(i32::try_from(adds_at.len() + 1).unwrap_or(i32::MAX));
        adds_at.extend_from_slice(&c.adds_at);
    }
    let customers: Vec<&str> = if announce {
        // Each customer once, however many of their items the run adds.
        let mut customers: Vec<&str> = items
            .iter()
            .filter_map(|o| o.customer_id.as_deref())
            .collect();
        customers.sort_unstable();
        customers.dedup();
        customers
    } else {
        Vec::new()
    };
    let daily = &folded.daily;
    let statement = if advance.is_some() {
        WRITES_COMMITTING
    } else {
        WRITES
    };
    let query = bind_deliveries(bind_deliveries(sqlx::query(statement), &fresh), &replaced)
        .bind(
            counted
                .iter()
                .map(|c| c.notification_id)
                .collect::<Vec<_>>(),
        )
        .bind(counted.iter().map(|c| c.sent).collect::<Vec<_>>())
        .bind(counted.iter().map(|c| c.failed).collect::<Vec<_>>())
        .bind(counted.iter().map(|c| c.invalid).collect::<Vec<_>>())
        .bind(counted.iter().map(|c| c.expired).collect::<Vec<_>>())
        .bind(counted.iter().map(|c| c.first_at).collect::<Vec<_>>())
        .bind(adds_from)
        .bind(adds_at)
        .bind(
            counted
                .iter()
                .map(|c| i32::try_from(c.adds_at.len()).unwrap_or(i32::MAX))
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
        .bind(
            items
                .iter()
                .map(|o| o.customer_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(items.iter().map(|o| o.notification_id).collect::<Vec<_>>())
        .bind(items.iter().map(|o| o.sequence).collect::<Vec<_>>())
        .bind(items.iter().map(|o| o.at).collect::<Vec<_>>())
        .bind(xibaar_store::INBOX_CHANNEL)
        .bind(notify_payloads(&customers));
    match advance {
        Some((projection, from, to)) => query.bind(projection).bind(from).bind(to),
        None => query,
    }
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Customer ids joined by newlines in payloads under Postgres's 8,000-byte notification limit.
fn notify_payloads(customers: &[&str]) -> Vec<String> {
    const MAX: usize = 7_900;
    let mut payloads = Vec::new();
    let mut current = String::new();
    for customer in customers {
        if !current.is_empty() && current.len() + customer.len() + 1 > MAX {
            payloads.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(customer);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

#[cfg(test)]
mod tests {
    use super::{notify_payloads, write};
    use crate::outcomes::{self, PendingOutcome, View};
    use crate::refusal::CHECKPOINT_MOVED;

    /// A run written with the checkpoint's compare-and-set commits both or neither.
    #[tokio::test]
    async fn a_run_written_with_its_checkpoint_commits_both_or_neither() {
        let pg = xibaar_testkit::Postgres::start().await.unwrap();
        let pool = pg.pool("writes").await.unwrap();
        xibaar_store::migrate(&pool).await.unwrap();
        sqlx::query(
            "INSERT INTO projection_checkpoints (projection, last_sequence, updated_at) \
             VALUES ($1, 5, now())",
        )
        .bind(crate::READ_MODELS)
        .execute(&pool)
        .await
        .unwrap();
        let notification_id = uuid::Uuid::now_v7();
        let run: Vec<PendingOutcome> = (6..8)
            .map(|sequence| PendingOutcome {
                sequence,
                at: chrono::Utc::now(),
                notification_id,
                priority: xibaar_core::Priority::Normal,
                device_id: format!("phone-{sequence}"),
                customer_id: Some(format!("c{sequence}")),
                outcome: "succeeded",
                reason: None,
                error_code: None,
                attempts: 1,
                fcm_message_id: Some(format!("projects/p/messages/{sequence}")),
            })
            .collect();
        let run: Vec<&PendingOutcome> = run.iter().collect();
        let folded = outcomes::fold(&run, &mut View::of_rows(&[]));
        let state = |pool: sqlx::PgPool| async move {
            sqlx::query_as::<_, (i64, i64, i64)>(
                "SELECT (SELECT last_sequence FROM projection_checkpoints), \
                        (SELECT count(*) FROM deliveries), (SELECT count(*) FROM inbox)",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        };
        let mut conn = pool.acquire().await.unwrap();

        // Another runner moved the checkpoint past 4: nothing of the run stays, and the
        // connection is not left in an aborted transaction.
        let refused = write(&mut conn, &run, &folded, true, Some(("read_models", 4, 7)))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains(CHECKPOINT_MOVED), "{refused}");
        assert_eq!(state(pool.clone()).await, (5, 0, 0));
        sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();

        // In step: committed when the statement returns (read on another connection).
        write(&mut conn, &run, &folded, true, Some(("read_models", 5, 7)))
            .await
            .unwrap();
        assert_eq!(state(pool.clone()).await, (7, 2, 2));
    }

    #[test]
    fn customer_lists_are_split_under_the_notification_limit_and_none_is_lost() {
        let customers: Vec<String> = (0..3_000).map(|i| format!("customer-{i:06}")).collect();
        let customers: Vec<&str> = customers.iter().map(String::as_str).collect();
        let payloads = notify_payloads(&customers);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() < 8_000));
        let back: Vec<&str> = payloads.iter().flat_map(|p| p.split('\n')).collect();
        assert_eq!(back, customers);
        assert!(notify_payloads(&[]).is_empty());
    }
}

//! Projections over a log that evolves: old event versions are upcast, unknown types skipped.

use std::time::Duration;

use serde_json::json;
use xibaar_testkit::eventually;

use xibaar_fcm_standin::{ErrorRule, ScriptedError};

use crate::support::{Pipeline, checkpoint, notification, read_models};

/// title, status, send_at, category
type Row = (
    String,
    String,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<String>,
);

/// An event as a writer of `version` stored it, bypassing this build's encoder.
async fn publish_raw(
    p: &Pipeline,
    event_type: &str,
    version: u32,
    aggregate: &str,
    data: serde_json::Value,
) {
    let js = p.jetstream().await;
    let envelope = json!({
        "id": uuid::Uuid::now_v7(),
        "type": event_type,
        "version": version,
        "occurred_at": "2026-03-01T08:00:00Z",
        "correlation_id": aggregate,
        "actor": {"kind": "client", "id": "billing"},
        "data": data,
    });
    js.publish(
        xibaar_core::subject::event(event_type, aggregate),
        serde_json::to_vec(&envelope).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_events_project_alike_and_an_unknown_type_does_not_stop_the_projection() {
    let p = Pipeline::start().await;
    let v1 = uuid::Uuid::now_v7();
    let v2 = uuid::Uuid::now_v7();
    // v1 kept the delivery options beside the other fields.
    publish_raw(
        &p,
        "notification.scheduled",
        1,
        &v1.to_string(),
        json!({
            "notification_id": v1, "priority": "normal", "audience": {"kind": "everyone"},
            "content": {"title": "Old writer", "body": "b"}, "category": "billing",
            "send_at": "2026-03-02T06:00:00Z", "collapse_key": "bill",
            "accepted_at": "2026-03-01T08:00:00Z",
        }),
    )
    .await;
    // A type a newer build writes.
    publish_raw(&p, "meter.read", 1, "meter-7", json!({"kwh": 12.5})).await;
    // v2 nests them.
    publish_raw(
        &p,
        "notification.scheduled",
        2,
        &v2.to_string(),
        json!({
            "notification_id": v2, "priority": "normal", "audience": {"kind": "everyone"},
            "content": {"title": "New writer", "body": "b"}, "category": "billing",
            "send_at": "2026-03-02T06:00:00Z",
            "delivery": {"send_at": "2026-03-02T06:00:00Z", "collapse_key": "bill"},
            "accepted_at": "2026-03-01T08:00:00Z",
        }),
    )
    .await;
    let rows: Vec<Row> = eventually(Duration::from_secs(20), || async {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT title, status, send_at, category FROM notifications \
                     WHERE notification_id = ANY($1) ORDER BY title DESC",
        )
        .bind(vec![v1, v2])
        .fetch_all(&p.pool)
        .await
        .unwrap();
        (rows.len() == 2).then_some(rows)
    })
    .await
    .expect("both versions projected");
    let send_at = Some("2026-03-02T06:00:00Z".parse().unwrap());
    assert_eq!(
        rows,
        [
            (
                "Old writer".into(),
                "scheduled".into(),
                send_at,
                Some("billing".into())
            ),
            (
                "New writer".into(),
                "scheduled".into(),
                send_at,
                Some("billing".into())
            ),
        ]
    );
    // The unknown event was passed over and counted, not parked.
    let metrics = p.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with("xibaar_projector_events_skipped_total{reason=\"unknown_type\"} 1")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_retried_then_parked_with_its_error_and_the_projection_goes_on() {
    let p = Pipeline::start().await;
    // Decodes, but Postgres cannot store NUL in text (an older api let it through).
    publish_raw(
        &p,
        "device.registered",
        1,
        "poisoned",
        json!({"device_id": "poisoned", "customer_id": "c1", "token": "tok-poison",
               "platform": "android", "app_id": "app\0x"}),
    )
    .await;
    p.register_device("c1", "healthy", "tok-healthy").await;
    p.wait_for_devices(1).await;
    let devices: Vec<String> = sqlx::query_scalar("SELECT device_id FROM devices")
        .fetch_all(&p.pool)
        .await
        .unwrap();
    assert_eq!(devices, ["healthy"]);
    // Parked with the error, on its original subject.
    let js = p.jetstream().await;
    let dlq = js.get_stream("XIBAAR_DLQ").await.unwrap();
    let parked = dlq
        .direct_get_first_for_subject("xibaar.dlq.evt.>")
        .await
        .unwrap();
    let reason = parked
        .headers
        .get(xibaar_streams::dlq::REASON)
        .unwrap()
        .as_str()
        .to_owned();
    assert!(reason.contains("device.registered"), "{reason}");
    assert!(reason.contains("refused 3 times"), "{reason}");
    assert_eq!(
        parked
            .headers
            .get(xibaar_streams::dlq::ORIGINAL_SUBJECT)
            .unwrap()
            .as_str(),
        "xibaar.evt.device.poisoned.registered"
    );
    let metrics = p.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "xibaar_projector_poison_events_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_stats_count_each_outcome_per_day_and_priority_as_the_deliveries_do() {
    let p = Pipeline::start().await;
    p.register_device("c1", "phone-1", "tok-1").await;
    p.register_device("c2", "phone-2", "tok-2").await;
    p.register_device("c3", "phone-3", "tok-3").await;
    p.wait_for_devices(3).await;
    p.standin
        .add_rule(ErrorRule::for_token("tok-3", ScriptedError::Unregistered));
    let urgent = p
        .accept(&notification("urgent", &["c1", "c2", "c3"], "Outage"))
        .await;
    p.wait_completed(&urgent, Duration::from_secs(30)).await;
    let low = p.accept(&notification("low", &["c1"], "Offer")).await;
    p.wait_completed(&low, Duration::from_secs(30)).await;
    let (served, folded) = p.daily_stats().await;
    assert_eq!(served, folded);
    let today = chrono::Utc::now().date_naive().to_string();
    let rows: Vec<(&str, &str, &str, i64)> = served
        .iter()
        .map(|r| {
            (
                r["day"].as_str().unwrap(),
                r["priority"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
                r["deliveries"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (today.as_str(), "urgent", "invalid", 1),
            (today.as_str(), "urgent", "succeeded", 2),
            (today.as_str(), "low", "succeeded", 1),
        ]
    );
    // The projection has caught up with the log.
    let head = p.events_head().await;
    let status = eventually(Duration::from_secs(10), || async {
        let (ok, out) = p.cli(&["projections", "status", "--json"]);
        assert!(ok, "{out}");
        let status: serde_json::Value = serde_json::from_str(&out).unwrap();
        (status[0]["gap"] == 0).then_some(status)
    })
    .await
    .expect("the projection catches up");
    assert_eq!(status[0]["projection"], "read_models");
    assert_eq!(status[0]["checkpoint"], head);
    assert_eq!(status[0]["head"], head);
    let (ok, table) = p.cli(&["projections", "status"]);
    assert!(
        ok && table.contains("read_models") && table.contains(" ago)"),
        "{table}"
    );
    // A range past today is empty; a reversed one is refused.
    let reports = p.token("reports", &[xibaar_api::scopes::READ]);
    let empty = p
        .get_json(
            "/v1/stats/daily?from=2020-01-01&to=2020-01-31",
            Some(&reports),
        )
        .await;
    assert_eq!(empty["days"], json!([]));
    let reversed = p
        .http
        .get(format!(
            "{}/v1/stats/daily?from=2020-02-01&to=2020-01-31",
            p.api
        ))
        .bearer_auth(&reports)
        .send()
        .await
        .unwrap();
    assert_eq!(reversed.status(), 422);
    let customer = p
        .http
        .get(format!("{}/v1/stats/daily", p.api))
        .bearer_auth(p.token("c1", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(customer.status(), 403);
}

/// Devices, notifications with every kind of outcome, preferences and read marks, for
/// `customers` customers; `round` keeps ids apart between calls.
async fn traffic(p: &Pipeline, customers: usize, round: usize) {
    let ids: Vec<String> = (0..customers).map(|c| format!("c{c}")).collect();
    for (i, c) in ids.iter().enumerate() {
        p.register_device(c, &format!("{c}-r{round}"), &format!("tok-{c}-r{round}"))
            .await;
        if i % 3 == 0 {
            let prefs = p
                .http
                .put(format!("{}/v1/me/preferences", p.api))
                .bearer_auth(p.token(c, &[]))
                .json(&json!({"categories": {"marketing": round.is_multiple_of(2)}}))
                .send()
                .await
                .unwrap();
            assert_eq!(prefs.status(), 202);
        }
    }
    let suffix = format!("%-r{round}");
    eventually(Duration::from_secs(30), || async {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM devices WHERE device_id LIKE $1")
            .bind(&suffix)
            .fetch_one(&p.pool)
            .await
            .unwrap_or(0);
        (count == customers as i64).then_some(())
    })
    .await
    .expect("the round's devices are registered");
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    for (n, priority) in ["urgent", "normal", "low"].into_iter().enumerate() {
        let id = p
            .accept(&notification(
                priority,
                &refs,
                &format!("Round {round} #{n}"),
            ))
            .await;
        if n == 0 {
            // Someone reads it once it is in their inbox.
            let notification = uuid::Uuid::parse_str(&id).unwrap();
            eventually(Duration::from_secs(20), || async {
                let held: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM inbox WHERE customer_id = $1 AND notification_id = $2)",
                )
                .bind(&ids[0])
                .bind(notification)
                .fetch_one(&p.pool)
                .await
                .unwrap_or(false);
                held.then_some(())
            })
            .await
            .expect("the item reaches the inbox");
            let read = p
                .http
                .post(format!("{}/v1/me/inbox/{id}/read", p.api))
                .bearer_auth(p.token(&ids[0], &[]))
                .send()
                .await
                .unwrap();
            assert_eq!(read.status(), 202);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_from_sequence_1_equals_the_live_built_tables_row_for_row_while_events_arrive() {
    let p = Pipeline::start().await;
    p.standin.add_rule(ErrorRule::for_token(
        "tok-c1-r0",
        ScriptedError::Unregistered,
    ));
    p.standin.add_rule(ErrorRule::for_token(
        "tok-c2-r1",
        ScriptedError::InvalidArgument,
    ));
    // The control: live-built from the first event, never rebuilt.
    let (control, _task) = p.control_projection("control", 50).await;
    for round in 0..2 {
        traffic(&p, 12, round).await;
    }
    p.wait_projected(&p.pool).await;

    // Rebuild while more traffic arrives.
    let rebuilding = p.spawn_rebuild();
    let mut round = 2;
    while !rebuilding.is_finished() {
        traffic(&p, 12, round).await;
        round += 1;
    }
    let stderr = Pipeline::rebuilt(rebuilding).await;
    assert!(
        stderr.contains("Replaying: "),
        "progress on stderr: {stderr}"
    );
    assert!(stderr.contains("Swapping: "), "{stderr}");
    traffic(&p, 12, round).await;

    // Every push has its outcome, so the log is complete.
    eventually(Duration::from_secs(60), || async {
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status <> 'completed'")
                .fetch_one(&p.pool)
                .await
                .unwrap_or(1);
        (open == 0).then_some(())
    })
    .await
    .expect("every notification completes");
    // Both at the same head, one that no longer moves: an event stored between two separate
    // waits would reach only one of them.
    let mut head = p.events_head().await;
    loop {
        p.wait_projected_to(&p.pool, head).await;
        p.wait_projected_to(&control, head).await;
        let now = p.events_head().await;
        if now == head {
            break;
        }
        head = now;
    }
    let (rebuilt, live) = (read_models(&p.pool).await, read_models(&control).await);
    assert!(
        rebuilt["deliveries"].as_array().unwrap().len() > 100,
        "{}",
        rebuilt["deliveries"]
    );
    for (table, rows) in &live {
        assert_eq!(&rebuilt[table], rows, "{table} differs");
    }
    // Nothing of the rebuild is left behind.
    let schemas: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'xibaar_%' ORDER BY 1",
    )
    .fetch_all(&p.pool)
    .await
    .unwrap();
    assert!(schemas.is_empty(), "{schemas:?}");
    // The swapped-in tables were analysed as they filled (a table never analysed has -1
    // tuples), and autovacuum, off while they filled, is theirs again.
    let tables: Vec<(String, f32, Option<Vec<String>>)> = sqlx::query_as(
        "SELECT relname::text, reltuples, reloptions::text[] FROM pg_class \
         WHERE relnamespace = 'public'::regnamespace AND relname = ANY($1) ORDER BY 1",
    )
    .bind(xibaar_projector::rebuild::TABLES)
    .fetch_all(&p.pool)
    .await
    .unwrap();
    assert_eq!(tables.len(), xibaar_projector::rebuild::TABLES.len());
    for (table, tuples, options) in tables {
        assert!(tuples >= 0.0, "{table} was never analysed");
        assert_eq!(options, None, "{table}");
    }
}

/// The projector inserts a broadcast's new `deliveries` rows without `ON CONFLICT`, having read
/// in its transaction that they are absent. Another writer inserting the same row meanwhile
/// (here a transaction held open across the projector's batch) makes that insert fail: the batch
/// is retried and folds the event over the row now there. Nothing is parked, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_row_inserted_by_another_writer_during_a_batch_is_folded_over_not_parked() {
    use xibaar_core::{
        Actor, CustomerId, DeviceId, Event, EventEnvelope, NotificationId, Priority,
        event::DeliverySucceeded,
    };
    let p = Pipeline::start().await;
    let notification_id = NotificationId::generate();
    // The other writer: a failed attempt's row, uncommitted while the event is projected.
    let mut other = p.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO deliveries (notification_id, device_id, customer_id, outcome, reason, \
                                 attempts, occurred_at) \
         VALUES ($1, 'phone-1', 'c1', 'failed', 'unavailable', 1, now())",
    )
    .bind(notification_id.0)
    .execute(&mut *other)
    .await
    .unwrap();
    let envelope = EventEnvelope::new(
        Event::DeliverySucceeded(DeliverySucceeded {
            notification_id,
            priority: Priority::High,
            device_id: DeviceId::parse("phone-1").unwrap(),
            customer_id: CustomerId::parse("c1").unwrap(),
            attempt: 2,
            fcm_message_id: "projects/p/messages/race".into(),
        }),
        notification_id.to_string(),
        None,
        Actor::system("test"),
    );
    xibaar_streams::publish_event(&p.jetstream().await, &envelope)
        .await
        .unwrap();
    // The projector's insert now waits on the other writer's row.
    let head = p.events_head().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        checkpoint(&p.pool).await < head as i64,
        "the batch committed past an uncommitted conflicting row"
    );
    other.commit().await.unwrap();
    p.wait_projected_to(&p.pool, head).await;

    // The success replaced the failure, as it would have had the row come first.
    let row: (String, Option<String>, i32, Option<String>) = sqlx::query_as(
        "SELECT outcome, reason, attempts, fcm_message_id FROM deliveries \
         WHERE notification_id = $1 AND device_id = 'phone-1'",
    )
    .bind(notification_id.0)
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "succeeded".to_owned(),
            None,
            2,
            Some("projects/p/messages/race".to_owned())
        )
    );
    let inbox: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inbox WHERE customer_id = 'c1' AND notification_id = $1",
    )
    .bind(notification_id.0)
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!(inbox, 1);
    let metrics = p.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("xibaar_projector_batch_failures_total ")),
        "the conflict failed a batch: {metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("xibaar_projector_poison_events_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert_eq!(p.stream_messages("XIBAAR_DLQ").await, 0);
}

/// The swap takes the live tables one after the other; a transaction holding one of them and
/// then wanting one the swap holds makes each wait for the other. Postgres then fails the
/// swap's lock (it waited first, so it finds the deadlock first); the rebuild takes the lock
/// again and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_whose_lock_deadlocks_with_another_transaction_takes_it_again() {
    let p = Pipeline::start().await;
    p.wait_projected(&p.pool).await;

    // A transaction that holds `inbox` and will want the checkpoint table next.
    let mut other = p.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE inbox IN ROW EXCLUSIVE MODE")
        .execute(&mut *other)
        .await
        .unwrap();
    let rebuilding = p.spawn_rebuild();
    // The swap holds the checkpoint and waits for `inbox`.
    eventually(Duration::from_secs(30), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE c.relname = 'inbox' AND l.mode = 'AccessExclusiveLock' AND NOT l.granted",
        )
        .fetch_one(&p.pool)
        .await
        .unwrap();
        (waiting > 0).then_some(())
    })
    .await
    .expect("the swap waits for the other transaction's table");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // It reads the checkpoint: it waits for the swap, which waits for it.
    let live: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(last_sequence), 0) FROM projection_checkpoints \
         WHERE projection = 'read_models'",
    )
    .fetch_one(&mut *other)
    .await
    .expect("the swap's lock, not the other transaction, gave way");
    other.commit().await.unwrap();

    Pipeline::rebuilt(rebuilding).await;
    assert!(checkpoint(&p.pool).await >= live);
}

use std::{collections::HashMap, time::Duration};

use futures::StreamExt;
use xibaar_testkit::eventually;

use crate::support::{Pipeline, notification};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_notifications_over_four_priorities_reach_fcm_exactly_once() {
    let p = Pipeline::start().await;
    let customers: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    for (i, c) in customers.iter().enumerate() {
        p.register_device(c, &format!("phone-{i}"), &format!("fcm-token-{i}"))
            .await;
    }
    p.wait_for_devices(10).await;

    let priorities = ["urgent", "high", "normal", "low"];
    let ids: Vec<String> = futures::stream::iter(0..1000)
        .map(|i| {
            let body = notification(priorities[i % 4], &[&customers[i % 10]], &format!("n{i}"));
            let p = &p;
            async move { p.accept(&body).await }
        })
        .buffered(100)
        .collect()
        .await;
    assert_eq!(ids.len(), 1000);

    let pool = p.pool.clone();
    let completed = eventually(Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM notifications WHERE status = 'completed'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (n == 1000).then_some(())
        }
    })
    .await;
    assert!(completed.is_some(), "not every notification completed");

    // Exactly once at FCM: one message per notification, to the right token.
    let received = p.standin.received();
    assert_eq!(received.len(), 1000);
    let mut per_notification: HashMap<String, Vec<String>> = HashMap::new();
    for r in &received {
        let id = r.message["data"]["xibaar_notification_id"]
            .as_str()
            .unwrap()
            .to_owned();
        per_notification
            .entry(id)
            .or_default()
            .push(r.token.clone().unwrap());
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            per_notification.get(id).map(Vec::len),
            Some(1),
            "notification {id}"
        );
        assert_eq!(per_notification[id][0], format!("fcm-token-{}", i % 10));
    }
    // The read model agrees, with correct counts.
    let (targeted, sent, failed, invalid): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT sum(targeted)::bigint, sum(sent)::bigint, sum(failed)::bigint, sum(invalid)::bigint FROM notifications",
    )
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!((targeted, sent, failed, invalid), (1000, 1000, 0, 0));
    let by_priority: Vec<(String, i64)> = sqlx::query_as(
        "SELECT priority, count(*) FROM notifications GROUP BY priority ORDER BY priority",
    )
    .fetch_all(&p.pool)
    .await
    .unwrap();
    assert_eq!(
        by_priority,
        vec![
            ("high".into(), 250),
            ("low".into(), 250),
            ("normal".into(), 250),
            ("urgent".into(), 250)
        ]
    );
    let status = p.status(&ids[0]).await.unwrap();
    assert_eq!(status["status"], "completed");
    assert_eq!(status["sent"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_token_is_invalidated_and_counted_not_retried() {
    let p = Pipeline::start().await;
    p.register_device("c1", "old-phone", "dead-token").await;
    p.register_device("c1", "new-phone", "live-token").await;
    p.wait_for_devices(2).await;
    p.standin.add_rule(xibaar_fcm_standin::ErrorRule::for_token(
        "dead-token",
        xibaar_fcm_standin::ScriptedError::Unregistered,
    ));
    let id = p.accept(&notification("high", &["c1"], "bill")).await;
    let status = p.wait_completed(&id, Duration::from_secs(30)).await;
    assert_eq!(
        (
            status["targeted"].as_i64(),
            status["sent"].as_i64(),
            status["invalid"].as_i64()
        ),
        (Some(2), Some(1), Some(1))
    );
    let device_status: String =
        sqlx::query_scalar("SELECT status FROM devices WHERE device_id = 'old-phone'")
            .fetch_one(&p.pool)
            .await
            .unwrap();
    assert_eq!(device_status, "invalidated");
    assert_eq!(p.standin.error_count(), 1, "a dead token is tried once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_past_its_ttl_is_dropped_and_collapse_keys_reach_fcm() {
    let p = Pipeline::start().await;
    p.register_device("c1", "phone", "tok-1").await;
    p.wait_for_devices(1).await;

    // Passed through: the TTL and collapse key as FCM and APNs expect them.
    let mut body = notification("normal", &["c1"], "Credit low");
    body["ttl_seconds"] = 3600.into();
    body["collapse_key"] = "credit-c1".into();
    let r = p.send(&body, None).await;
    assert_eq!(r.status(), 202);
    eventually(Duration::from_secs(30), || async {
        (p.standin.accepted_count() == 1).then_some(())
    })
    .await
    .expect("pushed");
    let m = &p.standin.received()[0].message;
    assert_eq!(m["android"]["collapse_key"], "credit-c1");
    assert_eq!(m["apns"]["headers"]["apns-collapse-id"], "credit-c1");
    let ttl = m["android"]["ttl"].as_str().unwrap();
    let secs: i64 = ttl.trim_end_matches('s').parse().unwrap();
    assert!((3500..=3600).contains(&secs), "{ttl}");
    assert!(m["apns"]["headers"]["apns-expiration"].as_str().is_some());

    // FCM unavailable for longer than the TTL: dropped as expired, never pushed stale.
    p.standin.add_rule(
        xibaar_fcm_standin::ErrorRule::always(xibaar_fcm_standin::ScriptedError::Unavailable)
            .retry_after(1),
    );
    let mut body = notification("normal", &["c1"], "Outage ended");
    body["ttl_seconds"] = 2.into();
    let id = p.accept(&body).await;
    let status = p.wait_completed(&id, Duration::from_secs(30)).await;
    assert_eq!(
        (status["sent"].as_i64(), status["expired"].as_i64()),
        (Some(0), Some(1))
    );
    assert_eq!(p.standin.accepted_count(), 1, "nothing stale was pushed");
    let outcome: String =
        sqlx::query_scalar("SELECT outcome FROM deliveries WHERE notification_id = $1::uuid")
            .bind(&id)
            .fetch_one(&p.pool)
            .await
            .unwrap();
    assert_eq!(outcome, "expired");
}

use std::time::Duration;

use crate::support::{Pipeline, notification};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_yields_one_command_and_the_same_notification() {
    let p = Pipeline::start().await;
    p.register_device("c7", "phone", "token-7").await;
    p.wait_for_devices(1).await;
    let body = notification("urgent", &["c7"], "Outage in your area");

    let first = p.send(&body, Some("outage-2026-11-23-c7")).await;
    assert_eq!(first.status(), 202);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: serde_json::Value = first.json().await.unwrap();

    let second = p.send(&body, Some("outage-2026-11-23-c7")).await;
    assert_eq!(second.status(), 202);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: serde_json::Value = second.json().await.unwrap();
    assert_eq!(first["notification_id"], second["notification_id"]);

    assert_eq!(
        p.stream_messages("XIBAAR_CMD_URGENT").await,
        1,
        "one command stored"
    );
    let id = first["notification_id"].as_str().unwrap().to_owned();
    p.wait_completed(&id, Duration::from_secs(30)).await;
    assert_eq!(p.standin.accepted_count(), 1, "one push");

    // Another key is another notification.
    let third = p.send(&body, Some("outage-2026-11-23-c7-b")).await;
    let third: serde_json::Value = third.json().await.unwrap();
    assert_ne!(third["notification_id"], first["notification_id"]);
    assert_eq!(p.stream_messages("XIBAAR_CMD_URGENT").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_key_for_a_different_notification_is_refused() {
    let p = Pipeline::start_roles(xibaar::Roles {
        api: true,
        dispatcher: false,
        projector: false,
        archiver: false,
        sources: false,
    })
    .await;
    let first = p
        .send(&notification("high", &["c1"], "Your bill"), Some("k-1"))
        .await;
    assert_eq!(first.status(), 202);
    let id = first.json::<serde_json::Value>().await.unwrap()["notification_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let other = p
        .send(&notification("high", &["c1"], "Another text"), Some("k-1"))
        .await;
    assert_eq!(other.status(), 422);
    let problem: serde_json::Value = other.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(p.stream_messages("XIBAAR_CMD_HIGH").await, 1);

    // Before any projection the notification is already known, as queued.
    xibaar_store::migrate(&p.pool).await.unwrap();
    let status = p
        .status(&id)
        .await
        .expect("a just-accepted notification is found");
    assert_eq!(status["status"], "queued");
    assert_eq!(status["title"], "Your bill");
    assert_eq!(status["requested_by"], "client:billing");
}

/// The messages stored in every command stream.
async fn commands_stored(p: &Pipeline) -> u64 {
    let mut total = 0;
    for stream in [
        "XIBAAR_CMD_URGENT",
        "XIBAAR_CMD_HIGH",
        "XIBAAR_CMD_NORMAL",
        "XIBAAR_CMD_LOW",
    ] {
        total += p.stream_messages(stream).await;
    }
    total
}

/// A request using every field, and one variant of it per field, each differing in that field
/// alone.
fn a_request_and_one_change_per_field()
-> (serde_json::Value, Vec<(&'static str, serde_json::Value)>) {
    let base = serde_json::json!({
        "priority": "high",
        "audience": {"kind": "customers", "customer_ids": ["c1", "c2"]},
        "content": {"title": "Your bill", "body": "12 500 FCFA", "data": {"bill": "B-1"}},
        "category": "billing",
        "ttl_seconds": 3600,
        "collapse_key": "bill-B-1",
        "send_at": (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339(),
    });
    let changed = |field: &str, value: serde_json::Value| {
        let mut body = base.clone();
        match field.split_once('.') {
            Some((outer, inner)) => body[outer][inner] = value,
            None => body[field] = value,
        }
        body
    };
    let later = (chrono::Utc::now() + chrono::Duration::days(3)).to_rfc3339();
    let cases = vec![
        ("priority", changed("priority", "urgent".into())),
        (
            "audience",
            changed(
                "audience",
                serde_json::json!({"kind": "customers", "customer_ids": ["c1"]}),
            ),
        ),
        ("content", changed("content.title", "Your new bill".into())),
        ("category", changed("category", "prepaid".into())),
        ("ttl_seconds", changed("ttl_seconds", 7200.into())),
        ("collapse_key", changed("collapse_key", "bill-B-2".into())),
        ("send_at", changed("send_at", later.into())),
        (
            "data",
            changed("content.data", serde_json::json!({"bill": "B-2"})),
        ),
    ];
    (base, cases)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_key_with_any_field_changed_is_refused_and_stores_nothing() {
    let p = Pipeline::start_roles(xibaar::Roles {
        api: true,
        dispatcher: false,
        projector: false,
        archiver: false,
        sources: false,
    })
    .await;
    let (base, cases) = a_request_and_one_change_per_field();
    for (immediate, key) in [(false, "k-scheduled"), (true, "k-now")] {
        let mut base = base.clone();
        if immediate {
            base.as_object_mut().unwrap().remove("send_at");
        }
        let first = p.send(&base, Some(key)).await;
        assert_eq!(first.status(), 202, "{}", first.text().await.unwrap());
        let stored = commands_stored(&p).await;
        for (field, body) in &cases {
            let mut body = body.clone();
            if immediate && *field != "send_at" {
                body.as_object_mut().unwrap().remove("send_at");
            }
            let r = p.send(&body, Some(key)).await;
            assert_eq!(r.status(), 422, "{key}: a changed {field} was not refused");
            let problem: serde_json::Value = r.json().await.unwrap();
            assert_eq!(problem["errors"][0]["field"], "Idempotency-Key", "{field}");
            assert_eq!(
                commands_stored(&p).await,
                stored,
                "{key}: {field} stored something"
            );
        }
        // The same request again is a replay: the same answer, nothing stored.
        let again = p.send(&base, Some(key)).await;
        assert_eq!(again.status(), 202);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(commands_stored(&p).await, stored);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_earlier_request_is_found_whatever_its_priority_or_state() {
    let p = Pipeline::start_without_dispatcher().await;
    // Queued at low priority, retried at urgent: refused, and nothing reaches the urgent stream.
    let low = notification("low", &["c1"], "Maintenance tonight");
    assert_eq!(p.send(&low, Some("k-low")).await.status(), 202);
    let urgent = notification("urgent", &["c1"], "Maintenance tonight");
    assert_eq!(p.send(&urgent, Some("k-low")).await.status(), 422);
    assert_eq!(p.stream_messages("XIBAAR_CMD_URGENT").await, 0);

    // Canceled (its command purged from the stream): a retry is still a replay, and a changed
    // request is still refused; neither stores anything.
    let mut scheduled = notification("normal", &["c1"], "Tomorrow");
    scheduled["send_at"] = (chrono::Utc::now() + chrono::Duration::days(1))
        .to_rfc3339()
        .into();
    let r = p.send(&scheduled, Some("k-canceled")).await;
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().await.unwrap()["notification_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let canceled = p
        .http
        .delete(format!("{}/v1/notifications/{id}", p.api))
        .bearer_auth(p.back_office())
        .send()
        .await
        .unwrap();
    assert_eq!(canceled.status(), 200);
    let stored = commands_stored(&p).await;
    let replay = p.send(&scheduled, Some("k-canceled")).await;
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let mut changed = scheduled.clone();
    changed["priority"] = "high".into();
    assert_eq!(p.send(&changed, Some("k-canceled")).await.status(), 422);
    assert_eq!(commands_stored(&p).await, stored);

    // Released and fanned out by a dispatcher: still a replay.
    let sent = notification("high", &["c1"], "Now");
    let r = p.send(&sent, Some("k-released")).await;
    let id = r.json::<serde_json::Value>().await.unwrap()["notification_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let _dispatcher = p.spawn_dispatcher(&[]);
    p.wait_completed(&id, Duration::from_secs(30)).await;
    let replay = p.send(&sent, Some("k-released")).await;
    assert_eq!(replay.status(), 202);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let mut changed = sent.clone();
    changed["ttl_seconds"] = 60.into();
    assert_eq!(p.send(&changed, Some("k-released")).await.status(), 422);
}

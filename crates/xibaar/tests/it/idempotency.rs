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

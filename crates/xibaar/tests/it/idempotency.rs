use std::time::Duration;

use xibaar_testkit::eventually;

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
    eventually(Duration::from_secs(30), || async {
        p.status(&id).await.filter(|s| s["status"] == "completed")
    })
    .await
    .expect("completed");
    assert_eq!(p.standin.accepted_count(), 1, "one push");

    // Another key is another notification.
    let third = p.send(&body, Some("outage-2026-11-23-c7-b")).await;
    let third: serde_json::Value = third.json().await.unwrap();
    assert_ne!(third["notification_id"], first["notification_id"]);
    assert_eq!(p.stream_messages("XIBAAR_CMD_URGENT").await, 2);
}

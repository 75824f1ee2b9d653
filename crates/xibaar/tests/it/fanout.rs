//! Fan-out records its progress per page and resumes after the last device it stored.

use std::time::Duration;

use xibaar_core::NotificationId;
use xibaar_testkit::eventually;

use crate::support::Pipeline;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_fan_out_resumes_after_the_last_recorded_device() {
    let p = Pipeline::start().await;
    p.seed_devices(100).await;

    // As a fan-out that stored the first 60 jobs and then died would have left it.
    let id = NotificationId::from_idempotency_key("billing", "tariff-resume");
    let js = p.jetstream().await;
    let progress = js.get_key_value("XIBAAR_FANOUT").await.unwrap();
    progress
        .put(
            id.to_string(),
            serde_json::to_vec(&serde_json::json!({ "after": "d000059", "published": 60 }))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();

    let body = serde_json::json!({
        "priority": "low",
        "audience": { "kind": "everyone" },
        "content": { "title": "Tariff change", "body": "New tariffs from 1 January" },
    });
    let r = p.send(&body, Some("tariff-resume")).await;
    assert_eq!(r.status(), 202);

    let status = eventually(Duration::from_secs(30), || async {
        p.status(&id.to_string())
            .await
            .filter(|s| s["targeted"].as_i64().is_some() && s["sent"] == 40)
    })
    .await
    .expect("the remaining 40 devices were reached");
    assert_eq!(status["targeted"], 100, "the recorded 60 count as targeted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tokens: Vec<String> = p
        .standin
        .received()
        .into_iter()
        .map(|r| r.token.unwrap())
        .collect();
    tokens.sort();
    let expected: Vec<String> = (60..100).map(|i| format!("tok-{i:06}")).collect();
    assert_eq!(tokens, expected, "exactly the devices after the cursor");

    let recorded = progress.get(id.to_string()).await.unwrap().unwrap();
    let recorded: serde_json::Value = serde_json::from_slice(&recorded).unwrap();
    assert_eq!(
        recorded,
        serde_json::json!({ "after": "d000099", "published": 100 })
    );
}

//! Urgent notifications overtake a large low-priority backlog that is being drained.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use xibaar_testkit::eventually;

use crate::support::Pipeline;

const BACKLOG: usize = 20_000;
const URGENT: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_notifications_overtake_a_draining_low_priority_backlog() {
    let p = Pipeline::start().await;
    p.seed_devices(BACKLOG).await;
    p.standin.set_latency(Duration::from_millis(5));

    let low = json!({
        "priority": "low",
        "audience": { "kind": "everyone" },
        "content": { "title": "Newsletter", "body": "Energy saving tips" },
    });
    assert_eq!(p.send(&low, None).await.status(), 202);
    eventually(Duration::from_secs(60), || async {
        (p.standin.accepted_count() >= 1_000).then_some(())
    })
    .await
    .expect("the backlog is draining");

    let mut sent_at = Vec::new();
    for i in 0..URGENT {
        let urgent = json!({
            "priority": "urgent",
            "audience": { "kind": "customers", "customer_ids": [format!("c{i}")] },
            "content": { "title": format!("Outage {i}"), "body": "Power cut in your area now" },
        });
        let r = p.send(&urgent, None).await;
        assert_eq!(r.status(), 202);
        sent_at.push(Utc::now());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = eventually(Duration::from_secs(60), || async {
        let received = p.standin.received();
        let urgent = received
            .iter()
            .filter(|r| {
                r.message["notification"]["title"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Outage")
            })
            .count();
        (urgent == URGENT).then_some(received)
    })
    .await
    .expect("every urgent notification was pushed");

    let low_pushed_total = received
        .iter()
        .filter(|r| r.message["notification"]["title"] == "Newsletter")
        .count();
    for (i, accepted) in sent_at.iter().enumerate() {
        let title = format!("Outage {i}");
        let pushed = received
            .iter()
            .find(|r| r.message["notification"]["title"] == title.as_str())
            .unwrap()
            .received_at;
        let low_in_between = received
            .iter()
            .filter(|r| {
                r.message["notification"]["title"] == "Newsletter"
                    && r.received_at > *accepted
                    && r.received_at < pushed
            })
            .count();
        println!(
            "urgent {i}: accept→push {} ms, {low_in_between} low pushes in between",
            (pushed - *accepted).num_milliseconds()
        );
        // First in, first out would put the rest of the backlog (over 15,000) in between.
        assert!(
            low_in_between < 2_000,
            "urgent {i} waited behind {low_in_between} low-priority pushes"
        );
    }
    assert!(
        low_pushed_total < BACKLOG,
        "the backlog was still draining when the urgent notifications went out"
    );
}

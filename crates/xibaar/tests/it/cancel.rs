//! Canceling a scheduled or still-queued notification: nothing of it is sent; once its fan-out
//! has begun it is too late (409).

use std::time::Duration;

use serde_json::Value;
use xibaar_testkit::eventually;

use crate::support::{Pipeline, notification};

async fn cancel(p: &Pipeline, id: &str, token: &str) -> (u16, Value) {
    let r = p
        .http
        .delete(format!("{}/v1/notifications/{id}", p.api))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceled_notifications_send_nothing_and_late_cancels_are_refused() {
    let p = Pipeline::start_without_dispatcher().await;
    p.register_device("c1", "phone-1", "tok-1").await;
    p.wait_for_devices(1).await;
    let office = p.back_office();

    let mut later = notification("normal", &["c1"], "Maintenance on Sunday");
    later["send_at"] = (chrono::Utc::now() + chrono::Duration::seconds(120))
        .to_rfc3339()
        .into();
    let scheduled = p.accept(&later).await;
    let queued = p
        .accept(&notification("low", &["c1"], "Tariff change"))
        .await;
    let kept = p.accept(&notification("high", &["c1"], "Bill ready")).await;

    for id in [&scheduled, &queued] {
        let (status, body) = cancel(&p, id, &office).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "canceled");
        let (again, _) = cancel(&p, id, &office).await;
        assert_eq!(again, 200, "canceling twice is harmless");
    }
    // The scheduler no longer holds the scheduled one, nor the command stream the queued one.
    let js = p.jetstream().await;
    let stream = js.get_stream("XIBAAR_CMD_NORMAL").await.unwrap();
    assert!(
        stream
            .direct_get_last_for_subject(format!("xibaar.sched.normal.{scheduled}"))
            .await
            .is_err()
    );
    let low = js.get_stream("XIBAAR_CMD_LOW").await.unwrap();
    assert!(
        low.direct_get_last_for_subject(format!("xibaar.cmd.low.{queued}"))
            .await
            .is_err()
    );

    // A dispatcher starts: the kept notification goes out, the canceled ones never do.
    let mut dispatcher = p.spawn_dispatcher(&[]);
    p.wait_completed(&kept, Duration::from_secs(30)).await;
    let drained = eventually(Duration::from_secs(30), || async {
        let (_, out) = p.cli(&["lag", "--json"]);
        let report: Value = serde_json::from_str(&out).ok()?;
        report["consumers"]
            .as_array()?
            .iter()
            .filter(|c| {
                c["stream"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("XIBAAR_CMD_"))
            })
            .all(|c| c["pending"] == 0 && c["ack_pending"] == 0)
            .then_some(())
    })
    .await;
    for id in [&scheduled, &queued] {
        let status = eventually(Duration::from_secs(10), || async {
            p.status(id).await.filter(|s| s["status"] == "canceled")
        })
        .await;
        assert!(status.is_some(), "{id} never showed as canceled");
    }
    let (status, body) = cancel(&p, &kept, &office).await;
    dispatcher.kill().unwrap();
    dispatcher.wait().unwrap();
    assert!(
        drained.is_some(),
        "the dispatcher did not take every command"
    );
    let titles: Vec<String> = p
        .standin
        .received()
        .iter()
        .map(|r| {
            r.message["notification"]["title"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(titles, ["Bill ready"]);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["type"], "urn:xibaar:problem:conflict");

    let (status, _) = cancel(&p, &uuid::Uuid::nil().to_string(), &office).await;
    assert_eq!(status, 404);
    let (status, _) = cancel(&p, &queued, &p.token("c1", &[])).await;
    assert_eq!(status, 403);
    let (ok, out) = p.cli(&["audit", "notification", &queued, "--json"]);
    assert!(ok, "{out}");
    let events: Vec<Value> = serde_json::from_str(&out).unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["notification.canceled"]);
}

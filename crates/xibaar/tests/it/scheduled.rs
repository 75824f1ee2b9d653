//! Scheduled sends: held by JetStream's message scheduler, fanned out at `send_at`, not before.

use std::time::Duration;

use chrono::{SubsecRound, Utc};
use serde_json::Value;

use crate::support::{Pipeline, notification};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_send_goes_out_at_its_time_and_not_before() {
    let p = Pipeline::start().await;
    p.register_device("c1", "phone", "tok-1").await;
    p.wait_for_devices(1).await;

    let send_at = (Utc::now() + chrono::Duration::seconds(4)).trunc_subsecs(0);
    let mut body = notification("normal", &["c1"], "Meter reading tomorrow");
    body["send_at"] = send_at.to_rfc3339().into();
    body["ttl_seconds"] = 60.into();
    let r = p.send(&body, Some("reading-reminder-1")).await;
    assert_eq!(r.status(), 202);
    let accepted: Value = r.json().await.unwrap();
    assert_eq!(accepted["status"], "scheduled");
    let id = accepted["notification_id"].as_str().unwrap().to_owned();

    let status = p.status(&id).await.unwrap();
    assert_eq!(status["status"], "scheduled", "{status}");

    // A retry with the same key is recognised while it waits; a different time is refused.
    let r = p.send(&body, Some("reading-reminder-1")).await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let mut other = body.clone();
    other["send_at"] = (send_at + chrono::Duration::hours(1)).to_rfc3339().into();
    assert_eq!(
        p.send(&other, Some("reading-reminder-1")).await.status(),
        422
    );

    let status = p.wait_completed(&id, Duration::from_secs(30)).await;
    assert_eq!(status["sent"], 1);
    let received = p.standin.received();
    assert_eq!(received.len(), 1, "one push for two requests");
    assert!(
        received[0].received_at >= send_at,
        "pushed at {} before its time {send_at}",
        received[0].received_at
    );
    assert_eq!(
        status["send_at"]
            .as_str()
            .map(|s| s.parse::<chrono::DateTime<Utc>>().unwrap()),
        Some(send_at)
    );
    // The TTL counts from send_at.
    let ttl: i64 = received[0].message["android"]["ttl"]
        .as_str()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(ttl > 50, "{ttl}");

    // A retry after it went out is still the same notification.
    let r = p.send(&body, Some("reading-reminder-1")).await;
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(p.standin.accepted_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_scheduled_too_far_ahead_is_refused() {
    let p = Pipeline::start().await;
    let mut body = notification("low", &["c1"], "Far future");
    body["send_at"] = (Utc::now() + chrono::Duration::days(31))
        .to_rfc3339()
        .into();
    let r = p.send(&body, None).await;
    assert_eq!(r.status(), 422);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "send_at", "{problem}");
    assert_eq!(p.stream_messages("XIBAAR_CMD_LOW").await, 0);
}

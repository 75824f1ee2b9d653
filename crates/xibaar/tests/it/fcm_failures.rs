//! FCM's failure modes, end to end: the dispatcher against the stand-in scripting each error.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use xibaar_fcm_standin::{ErrorRule, ScriptedError};
use xibaar_testkit::eventually;

use crate::support::{Pipeline, notification};

async fn send(p: &Pipeline, customers: &[&str]) -> String {
    p.accept(&notification("high", customers, "Bill")).await
}

async fn attempts(p: &Pipeline, id: &str, device: &str) -> (String, i32) {
    sqlx::query_as(
        "SELECT outcome, attempts FROM deliveries WHERE notification_id = $1::uuid AND device_id = $2",
    )
    .bind(id)
    .bind(device)
    .fetch_one(&p.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exceeded_is_retried_no_sooner_than_retry_after() {
    let p = Pipeline::start().await;
    p.register_device("c1", "phone", "tok-1").await;
    p.wait_for_devices(1).await;
    p.standin.add_rule(
        ErrorRule::always(ScriptedError::QuotaExceeded)
            .times(1)
            .retry_after(2),
    );
    let started = Instant::now();
    let id = send(&p, &["c1"]).await;
    let status = p.wait_completed(&id, Duration::from_secs(30)).await;
    assert_eq!(status["sent"], 1);
    let pushed_at = p.standin.received()[0].received_at;
    let first_try = chrono::Utc::now() - chrono::Duration::from_std(started.elapsed()).unwrap();
    assert!(
        pushed_at - first_try >= chrono::Duration::seconds(2),
        "retried {:?} after the send, before Retry-After",
        pushed_at - first_try
    );
    assert_eq!(attempts(&p, &id, "phone").await, ("succeeded".into(), 2));
    assert_eq!(p.standin.error_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_and_refused_payloads_are_dead_lettered_with_their_reason() {
    let p = Pipeline::start().await;
    p.register_device("c1", "flaky-phone", "tok-flaky").await;
    p.register_device("c2", "odd-phone", "tok-odd").await;
    p.wait_for_devices(2).await;
    p.standin
        .add_rule(ErrorRule::for_token("tok-flaky", ScriptedError::Internal));
    p.standin.add_rule(ErrorRule::for_token(
        "tok-odd",
        ScriptedError::InvalidArgument,
    ));
    let id = send(&p, &["c1", "c2"]).await;
    let status = p.wait_completed(&id, Duration::from_secs(30)).await;
    assert_eq!(
        (status["sent"].as_i64(), status["failed"].as_i64()),
        (Some(0), Some(2))
    );
    // max_attempts = 3 in the test configuration; a refused payload is tried once.
    assert_eq!(attempts(&p, &id, "flaky-phone").await, ("failed".into(), 3));
    assert_eq!(attempts(&p, &id, "odd-phone").await, ("failed".into(), 1));
    assert_eq!(p.standin.error_count(), 4);

    let js = p.jetstream().await;
    let dlq = js.get_stream("XIBAAR_DLQ").await.unwrap();
    let consumer = dlq
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut parked = Vec::new();
    while parked.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("two dead letters")
            .unwrap()
            .unwrap();
        let headers = m.headers.clone().unwrap();
        let job: Value = serde_json::from_slice(&m.payload).unwrap();
        parked.push((
            job["device_id"].as_str().unwrap().to_owned(),
            headers.get("Xibaar-Dlq-Reason").unwrap().to_string(),
            headers.get("Xibaar-Original-Subject").unwrap().to_string(),
            m.subject.to_string(),
        ));
    }
    parked.sort();
    let (device, reason, original, subject) = &parked[0];
    assert_eq!(device, "flaky-phone");
    assert!(
        reason.starts_with("retries_exhausted: FCM answered 500 INTERNAL"),
        "{reason}"
    );
    assert!(original.starts_with("xibaar.dlv.high."), "{original}");
    assert_eq!(
        subject,
        &format!("xibaar.dlq.{}", original.trim_start_matches("xibaar."))
    );
    let (device, reason, ..) = &parked[1];
    assert_eq!(device, "odd-phone");
    assert!(
        reason.starts_with("rejected: FCM answered 400 INVALID_ARGUMENT"),
        "{reason}"
    );
    assert_eq!(p.stream_messages("XIBAAR_DLQ").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_failure_opens_the_circuit_which_closes_by_itself_without_burning_retries() {
    let p = Pipeline::start().await;
    let customers: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
    for c in &customers {
        p.register_device(c, &format!("{c}-phone"), &format!("tok-{c}"))
            .await;
    }
    p.wait_for_devices(5).await;
    p.standin
        .add_rule(ErrorRule::always(ScriptedError::ThirdPartyAuthError));
    let refs: Vec<&str> = customers.iter().map(String::as_str).collect();
    let id = send(&p, &refs).await;
    eventually(Duration::from_secs(30), || async {
        (p.standin.error_count() >= 1).then_some(())
    })
    .await
    .expect("the first push reached FCM");

    // Open: with a 1 s open period doubling to 2 s, six seconds allow at most a handful of
    // probes, where closed-circuit retries of five jobs would have made at least fifteen
    // requests (three attempts each) and failed every job.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let requests_while_open = p.standin.error_count();
    assert!(
        requests_while_open <= 5 + 4,
        "{requests_while_open} requests reached FCM while the circuit was open"
    );
    let status = p.status(&id).await.unwrap();
    assert_eq!(
        (status["sent"].as_i64(), status["failed"].as_i64()),
        (Some(0), Some(0)),
        "paused jobs neither fail nor go out: {status}"
    );

    // FCM recovers: a probe closes the circuit and every job goes out, within its retries.
    p.standin.clear_rules();
    let status = p.wait_completed(&id, Duration::from_secs(30)).await;
    assert_eq!(
        (status["sent"].as_i64(), status["failed"].as_i64()),
        (Some(5), Some(0))
    );
    for c in &customers {
        let (outcome, attempts) = attempts(&p, &id, &format!("{c}-phone")).await;
        assert_eq!(outcome, "succeeded");
        assert!(attempts <= 3, "{c}: {attempts} attempts");
    }
    assert_eq!(p.standin.accepted_count(), 5);
}

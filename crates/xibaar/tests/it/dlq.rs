//! `xibaar dlq`: dead letters listed with their reason, shown, retried with fresh attempts (and
//! the read model corrected), dropped.

use std::time::Duration;

use serde_json::Value;
use xibaar_fcm_standin::{ErrorRule, ScriptedError};
use xibaar_testkit::eventually;

use crate::support::{Pipeline, notification};

fn xibaar(p: &Pipeline, args: &[&str]) -> (bool, String) {
    p.cli(args)
}

fn listed(p: &Pipeline) -> Vec<Value> {
    let (ok, out) = xibaar(p, &["dlq", "list", "--json"]);
    assert!(ok, "{out}");
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_retried_with_fresh_attempts_and_dropped() {
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
    let id = p
        .accept(&notification("high", &["c1", "c2"], "Meter check"))
        .await;
    let status = p.wait_completed(&id, Duration::from_secs(30)).await;
    assert_eq!(status["failed"], 2);

    let entries = listed(&p);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let find = |device: &str| {
        entries
            .iter()
            .find(|e| e["original_subject"].as_str().unwrap().ends_with(device))
            .unwrap_or_else(|| panic!("no dead letter for {device}: {entries:?}"))
            .clone()
    };
    let flaky = find("flaky-phone");
    let odd = find("odd-phone");
    assert!(
        flaky["reason"]
            .as_str()
            .unwrap()
            .starts_with("retries_exhausted: FCM answered 500 INTERNAL"),
        "{flaky}"
    );
    assert_eq!(flaky["kind"], "delivery_job");
    assert_eq!(flaky["original_stream"], "XIBAAR_DELIVERIES");
    assert!(odd["reason"].as_str().unwrap().starts_with("rejected:"));
    let (ok, table) = xibaar(&p, &["dlq", "list"]);
    assert!(ok && table.contains("retries_exhausted"), "{table}");

    let flaky_seq = flaky["sequence"].to_string();
    let (ok, out) = xibaar(&p, &["dlq", "show", &flaky_seq]);
    assert!(ok, "{out}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["payload"]["device_id"], "flaky-phone");
    assert_eq!(shown["payload"]["notification_id"], id.as_str());
    assert!(shown["headers"]["Xibaar-Dlq-Reason"].is_string(), "{shown}");

    // FCM has recovered: the job goes back with fresh attempts and reaches the phone.
    p.standin.clear_rules();
    let (ok, out) = xibaar(&p, &["dlq", "retry", &flaky_seq]);
    assert!(ok, "{out}");
    assert!(out.contains("xibaar.dlv.high."), "{out}");
    let corrected = eventually(Duration::from_secs(30), || async {
        p.status(&id)
            .await
            .filter(|s| s["sent"] == 1 && s["failed"] == 1)
    })
    .await
    .expect("the read model counts the retried push as sent");
    assert_eq!(corrected["status"], "completed");
    let tokens: Vec<_> = p
        .standin
        .received()
        .into_iter()
        .filter_map(|r| r.token)
        .collect();
    assert_eq!(tokens, ["tok-flaky"]);
    let (outcome, attempts): (String, i32) =
        sqlx::query_as("SELECT outcome, attempts FROM deliveries WHERE device_id = 'flaky-phone'")
            .fetch_one(&p.pool)
            .await
            .unwrap();
    assert_eq!((outcome.as_str(), attempts), ("succeeded", 1));
    // The daily figures moved the retried push from failed to succeeded.
    let (served, folded) = p.daily_stats().await;
    assert_eq!(served, folded);
    let outcomes: Vec<(&str, i64)> = served
        .iter()
        .map(|r| {
            (
                r["outcome"].as_str().unwrap(),
                r["deliveries"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(outcomes, [("failed", 1), ("succeeded", 1)], "{served:?}");

    let remaining = listed(&p);
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0]["sequence"], odd["sequence"]);
    let (ok, out) = xibaar(&p, &["dlq", "retry", "999"]);
    assert!(!ok && out.contains("XIBAAR_DLQ has no entry 999"), "{out}");
    let (ok, out) = xibaar(&p, &["dlq", "drop", "--all"]);
    assert!(ok, "{out}");
    assert!(listed(&p).is_empty());
    let (ok, out) = xibaar(&p, &["dlq", "list"]);
    assert!(ok && out.contains("XIBAAR_DLQ is empty"), "{out}");
}

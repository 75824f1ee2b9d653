//! Auditors answer "was customer X told, on which phone, when, with what result?" from the event
//! log alone: `xibaar audit`, `xibaar replay` and the timeline endpoint agree with what the FCM
//! stand-in received.

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;
use xibaar_fcm_standin::{ErrorRule, ScriptedError};

use crate::support::{Pipeline, notification};

fn ndjson(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_from_the_log_matches_what_fcm_received() {
    let p = Pipeline::start().await;
    for (customer, device, token) in [
        ("c1", "phone-a", "tok-a"),
        ("c2", "phone-b", "tok-b"),
        ("c3", "phone-c", "tok-c"),
    ] {
        p.register_device(customer, device, token).await;
    }
    p.wait_for_devices(3).await;
    p.standin
        .add_rule(ErrorRule::for_token("tok-b", ScriptedError::Unavailable).times(1));
    p.standin
        .add_rule(ErrorRule::for_token("tok-c", ScriptedError::Unregistered));
    let before = chrono::Utc::now();
    let id = p
        .accept(&notification(
            "high",
            &["c1", "c2", "c3"],
            "Outage in Medina",
        ))
        .await;
    p.wait_completed(&id, Duration::from_secs(30)).await;

    let (ok, out) = p.cli(&["audit", "notification", &id, "--json"]);
    assert!(ok, "{out}");
    let events: Vec<Value> = serde_json::from_str(&out).unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    // Accepted first. The jobs are stored before `notification.fanned_out`, so a sender may
    // record an outcome ahead of it: the timeline is the log's order.
    assert_eq!(types[0], "notification.accepted", "{types:?}");
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "notification.fanned_out")
            .count(),
        1,
        "{types:?}"
    );
    assert_eq!(types.len(), 5, "{types:?}");
    // Each device's outcome: successes are recorded a page of devices at a time.
    let outcomes: BTreeMap<String, (String, u64)> = events[1..]
        .iter()
        .filter(|e| e["type"] != "notification.fanned_out")
        .flat_map(|e| {
            let outcome = |d: &Value, kind: &str| {
                (
                    d["device_id"].as_str().unwrap().to_owned(),
                    (kind.to_owned(), d["attempt"].as_u64().unwrap()),
                )
            };
            match e["data"]["devices"].as_array() {
                Some(devices) => devices.iter().map(|d| outcome(d, "succeeded")).collect(),
                None => vec![outcome(&e["data"], e["type"].as_str().unwrap())],
            }
        })
        .collect();
    assert_eq!(outcomes["phone-a"], ("succeeded".into(), 1));
    assert_eq!(outcomes["phone-b"], ("succeeded".into(), 2));
    assert_eq!(outcomes["phone-c"], ("delivery.failed".into(), 1));
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "delivery.page_succeeded")
            .count(),
        2,
        "phone-a's first round and phone-b's second: {types:?}"
    );

    // What FCM received for this notification is exactly what the log says succeeded.
    let device_of = BTreeMap::from([("tok-a", "phone-a"), ("tok-b", "phone-b")]);
    let mut received: Vec<&str> = p
        .standin
        .received()
        .iter()
        .filter(|r| r.message["data"]["xibaar_notification_id"] == id.as_str())
        .map(|r| device_of[r.token.as_deref().unwrap()])
        .collect();
    received.sort();
    let succeeded: Vec<&str> = outcomes
        .iter()
        .filter(|(_, (t, _))| t == "succeeded")
        .map(|(d, _)| d.as_str())
        .collect();
    assert_eq!(received, succeeded);

    let (ok, table) = p.cli(&["audit", "notification", &id]);
    assert!(
        ok && table.contains("attempt 2") && table.contains("invalid_token"),
        "{table}"
    );

    // Customer c2: the registration, the notification naming them, their delivery; not c1's.
    let (ok, out) = p.cli(&["replay", "--customer", "c2"]);
    assert!(ok, "{out}");
    let theirs: Vec<String> = ndjson(&out)
        .iter()
        .map(|e| {
            let devices = match e["data"]["devices"].as_array() {
                Some(devices) => devices
                    .iter()
                    .map(|d| d["device_id"].as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(","),
                None => e["data"]["device_id"].as_str().unwrap_or("-").to_owned(),
            };
            format!("{} {devices}", e["type"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        theirs,
        [
            "device.registered phone-b",
            "notification.accepted -",
            "delivery.page_succeeded phone-b"
        ]
    );
    let (ok, out) = p.cli(&["replay", "--type", "delivery.failed", "--format", "table"]);
    assert!(
        ok && out.contains("phone-c") && !out.contains("phone-a"),
        "{out}"
    );
    let (ok, out) = p.cli(&["replay", "--device", "phone-c"]);
    assert!(ok, "{out}");
    let types: Vec<String> = ndjson(&out)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    // The sender records the dead token before the failed delivery.
    assert_eq!(
        types,
        [
            "device.registered",
            "device.token_invalidated",
            "delivery.failed"
        ]
    );
    let until = before.to_rfc3339();
    let (ok, out) = p.cli(&["replay", "--until", &until]);
    assert!(ok, "{out}");
    let early = ndjson(&out);
    assert_eq!(
        early.len(),
        3,
        "only the registrations were stored before the send"
    );
    let since = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (ok, out) = p.cli(&["replay", "--since", &since]);
    assert!(ok && ndjson(&out).is_empty(), "{out}");

    // The admin endpoint: audit scope only, the same events.
    let url = format!("{}/v1/notifications/{id}/timeline", p.api);
    let r = p
        .http
        .get(&url)
        .bearer_auth(p.back_office())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let auditor = p.token("auditor", &["audit:read"]);
    let r = p.http.get(&url).bearer_auth(&auditor).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["events"].as_array().unwrap(), &events);
    let r = p
        .http
        .get(format!(
            "{}/v1/notifications/{}/timeline",
            p.api,
            uuid::Uuid::nil()
        ))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (ok, out) = p.cli(&["audit", "notification", &uuid::Uuid::nil().to_string()]);
    assert!(!ok && out.contains("no events of notification"), "{out}");
}

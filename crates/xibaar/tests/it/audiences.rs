//! Category audiences and preferences; FCM topic and condition audiences.

use std::time::Duration;

use serde_json::{Value, json};
use xibaar_fcm_standin::{ErrorRule, ScriptedError};
use xibaar_testkit::eventually;

use crate::support::{APP_ID, Pipeline};

async fn set_preferences(p: &Pipeline, customer: &str, categories: Value) -> reqwest::Response {
    p.http
        .put(format!("{}/v1/me/preferences", p.api))
        .bearer_auth(p.token(customer, &[]))
        .json(&json!({ "categories": categories }))
        .send()
        .await
        .unwrap()
}

async fn preferences(p: &Pipeline, customer: &str) -> Value {
    let r = p
        .http
        .get(format!("{}/v1/me/preferences", p.api))
        .bearer_auth(p.token(customer, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Sends `body`, waits for completion, returns the status and the tokens FCM got for `title`.
async fn deliver(p: &Pipeline, mut body: Value, title: &str) -> (Value, Vec<String>) {
    body["content"] = json!({ "title": title, "body": "…" });
    let id = p.accept(&body).await;
    let status = p.wait_completed(&id, Duration::from_secs(30)).await;
    let mut tokens: Vec<String> = p
        .standin
        .received()
        .into_iter()
        .filter(|r| r.message["notification"]["title"] == title)
        .filter_map(|r| r.token)
        .collect();
    tokens.sort();
    (status, tokens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn categories_reach_only_customers_opted_in_and_urgent_outages_reach_everyone() {
    let p = Pipeline::start().await;
    for i in 1..=3 {
        p.register_device(&format!("c{i}"), &format!("phone-{i}"), &format!("tok-{i}"))
            .await;
    }
    p.wait_for_devices(3).await;

    let r = set_preferences(&p, "c2", json!({ "billing": false, "outage": false })).await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "changed": { "billing": false, "outage": false } })
    );
    assert_eq!(
        set_preferences(&p, "c3", json!({ "marketing": true }))
            .await
            .status(),
        202
    );
    let shown = eventually(Duration::from_secs(10), || async {
        let c3 = preferences(&p, "c3").await;
        (c3["categories"]["marketing"] == true).then_some(())
    })
    .await;
    assert!(shown.is_some(), "c3's opt-in was never projected");
    assert_eq!(
        preferences(&p, "c2").await,
        json!({ "categories": { "billing": false, "outage": false, "prepaid": true, "marketing": false } })
    );
    assert_eq!(
        preferences(&p, "c1").await["categories"],
        json!({ "billing": true, "outage": true, "prepaid": true, "marketing": false }),
        "defaults for a customer who never chose"
    );

    let category = |priority: &str, category: &str| json!({ "priority": priority, "audience": { "kind": "category", "category": category } });
    let (status, tokens) = deliver(&p, category("normal", "billing"), "Bill ready").await;
    assert_eq!(tokens, ["tok-1", "tok-3"], "c2 opted out of billing");
    assert_eq!(status["targeted"], 2);
    let (_, tokens) = deliver(&p, category("low", "marketing"), "Solar offer").await;
    assert_eq!(tokens, ["tok-3"], "marketing needs an opt-in");

    let listed = |priority: &str| {
        json!({ "priority": priority, "category": "outage",
                "audience": { "kind": "customers", "customer_ids": ["c1", "c2"] } })
    };
    let (_, tokens) = deliver(&p, listed("high"), "Planned outage").await;
    assert_eq!(tokens, ["tok-1"], "a listed customer's opt-out is honoured");
    let (status, tokens) = deliver(&p, listed("urgent"), "Line down").await;
    assert_eq!(tokens, ["tok-1", "tok-2"], "urgent outage notices override");
    assert_eq!(status["sent"], 2);

    // Bad input: a clear 422 naming the field, nothing stored.
    let mut mismatch = category("normal", "billing");
    mismatch["category"] = json!("marketing");
    mismatch["content"] = json!({ "title": "x", "body": "y" });
    let r = p.send(&mismatch, None).await;
    assert_eq!(r.status(), 422);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "category", "{problem}");
    for bad in [
        json!({}),
        json!({ "weather": true }),
        json!({ "billing": "yes" }),
    ] {
        let r = set_preferences(&p, "c1", bad.clone()).await;
        assert_eq!(r.status(), 422, "{bad}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{bad}"
        );
    }
    let r = p
        .http
        .put(format!("{}/v1/me/preferences", p.api))
        .json(&json!({ "categories": { "billing": false } }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_and_conditions_are_one_fcm_request_each() {
    let p = Pipeline::start().await;
    let topic = json!({ "priority": "urgent",
        "audience": { "kind": "topic", "app_id": APP_ID, "topic": "outage-dakar" } });
    let (status, _) = deliver(&p, topic.clone(), "Dakar outage").await;
    assert_eq!(
        (status["targeted"].as_i64(), status["sent"].as_i64()),
        (Some(1), Some(1))
    );
    let condition = "'outage-dakar' in topics && !('muted' in topics)";
    let (status, _) = deliver(
        &p,
        json!({ "priority": "high",
            "audience": { "kind": "condition", "app_id": APP_ID, "condition": condition } }),
        "Restored",
    )
    .await;
    assert_eq!(status["sent"], 1);
    let received = p.standin.received();
    assert_eq!(received.len(), 2, "one request per notification");
    let to_topic = &received
        .iter()
        .find(|r| r.message["notification"]["title"] == "Dakar outage")
        .unwrap()
        .message;
    assert_eq!(to_topic["topic"], "outage-dakar");
    assert!(to_topic.get("token").is_none() && to_topic.get("condition").is_none());
    assert_eq!(to_topic["android"]["priority"], "HIGH");
    let to_condition = &received
        .iter()
        .find(|r| r.message["notification"]["title"] == "Restored")
        .unwrap()
        .message;
    assert_eq!(to_condition["condition"], condition);

    // FCM refusing a topic message: recorded as failed, parked in the DLQ with the reason.
    p.standin
        .add_rule(ErrorRule::always(ScriptedError::InvalidArgument).times(1));
    let (status, _) = deliver(&p, topic.clone(), "Refused").await;
    assert_eq!(
        (status["sent"].as_i64(), status["failed"].as_i64()),
        (Some(0), Some(1))
    );
    assert_eq!(p.stream_messages("XIBAAR_DLQ").await, 1);
    let row: (String, Option<String>, Option<String>, i32) = sqlx::query_as(
        "SELECT outcome, reason, customer_id, attempts FROM deliveries WHERE device_id = '~topic' AND outcome = 'failed'",
    )
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!(row, ("failed".into(), Some("rejected".into()), None, 1));

    // Topic messages have FCM's smaller payload limit; the same content to a customer is fine.
    let mut big = topic.clone();
    big["content"] =
        json!({ "title": "Big", "body": "x".repeat(1500), "data": { "blob": "y".repeat(1000) } });
    assert_eq!(p.send(&big, None).await.status(), 413);
    big["audience"] = json!({ "kind": "customers", "customer_ids": ["c1"] });
    assert_eq!(p.send(&big, None).await.status(), 202);

    for (audience, field) in [
        (
            json!({ "kind": "topic", "app_id": APP_ID, "topic": "no spaces" }),
            "audience.topic",
        ),
        (
            json!({ "kind": "topic", "app_id": "", "topic": "t" }),
            "audience.app_id",
        ),
        (
            json!({ "kind": "condition", "app_id": APP_ID, "condition": "'a' in topics &&" }),
            "audience.condition",
        ),
    ] {
        let r = p
            .send(
                &json!({ "priority": "low", "audience": audience,
                         "content": { "title": "t", "body": "b" } }),
                None,
            )
            .await;
        assert_eq!(r.status(), 422, "{audience}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let r = p
        .send(
            &json!({ "priority": "low", "category": "billing",
                     "audience": { "kind": "topic", "app_id": APP_ID, "topic": "t" },
                     "content": { "title": "t", "body": "b" } }),
            None,
        )
        .await;
    assert_eq!(r.status(), 422, "preferences cannot be applied to topics");
}

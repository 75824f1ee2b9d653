//! Device registration: details kept, and a token registered again moves to its new owner.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{APP_ID, Pipeline, notification};

async fn register(p: &Pipeline, customer: &str, body: Value) -> reqwest::Response {
    p.http
        .post(format!("{}/v1/devices", p.api))
        .bearer_auth(p.token(customer, &[]))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn devices(p: &Pipeline, customer: &str) -> Vec<Value> {
    let r = p
        .http
        .get(format!("{}/v1/devices", p.api))
        .bearer_auth(p.token(customer, &[]))
        .send()
        .await
        .unwrap();
    r.json::<Value>().await.unwrap()["devices"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_registered_by_another_customer_moves_to_them_with_its_details() {
    let p = Pipeline::start().await;
    let first = register(
        &p,
        "old-owner",
        json!({ "device_id": "shared-phone", "token": "tok-shared", "platform": "android",
                "app_id": APP_ID, "app_version": "4.2.0", "locale": "fr-SN" }),
    )
    .await;
    assert_eq!(first.status(), 202);
    p.wait_for_devices(1).await;
    let listed = devices(&p, "old-owner").await;
    assert_eq!(listed[0]["app_version"], "4.2.0");
    assert_eq!(listed[0]["locale"], "fr-SN");

    // The phone changes hands: the new owner's app registers the same token under its own
    // device id.
    let second = register(
        &p,
        "new-owner",
        json!({ "device_id": "new-phone-id", "token": "tok-shared", "platform": "android",
                "app_id": APP_ID, "locale": "wo" }),
    )
    .await;
    assert_eq!(second.status(), 202);
    let moved = xibaar_testkit::eventually(Duration::from_secs(20), || async {
        (devices(&p, "old-owner").await.is_empty() && devices(&p, "new-owner").await.len() == 1)
            .then_some(())
    })
    .await;
    assert!(moved.is_some(), "the token did not move");

    // A notification to the old owner reaches nobody; one to the new owner reaches the phone.
    for (customer, expected) in [("old-owner", 0), ("new-owner", 1)] {
        let id = p.accept(&notification("high", &[customer], customer)).await;
        let status = p.wait_completed(&id, Duration::from_secs(30)).await;
        assert_eq!(status["targeted"], expected, "{customer}: {status}");
    }
    let tokens: Vec<String> = p
        .standin
        .received()
        .into_iter()
        .filter_map(|r| r.token)
        .collect();
    assert_eq!(tokens, ["tok-shared"]);

    for (field, value) in [("locale", "fr_SN"), ("app_version", "")] {
        let mut body =
            json!({ "device_id": "x", "token": "tok-x", "platform": "ios", "app_id": APP_ID });
        body[field] = json!(value);
        let r = register(&p, "someone", body).await;
        assert_eq!(r.status(), 422, "{field}");
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
}

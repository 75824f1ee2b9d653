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

/// The devices of `customer`, by device id → token.
async fn tokens_of(p: &Pipeline, customer: &str) -> Vec<(String, String)> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT device_id, token FROM devices WHERE customer_id = $1 AND status = 'active' \
         ORDER BY device_id",
    )
    .bind(customer)
    .fetch_all(&p.pool)
    .await
    .unwrap();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_customers_with_the_same_device_id_each_receive_their_own_notifications() {
    let p = Pipeline::start().await;
    p.register_device("cust-c", "phone-1", "tok-c").await;
    p.register_device("cust-d", "phone-1", "tok-d").await;
    p.wait_for_devices(2).await;
    for customer in ["cust-c", "cust-d"] {
        assert_eq!(devices(&p, customer).await.len(), 1, "{customer}");
    }

    // To each customer, to the one device of each, and a broadcast: each phone gets its own.
    let to_c = p.accept(&notification("high", &["cust-c"], "for c")).await;
    let to_d = p.accept(&notification("high", &["cust-d"], "for d")).await;
    let to_d_device = p
        .accept(&json!({ "priority": "urgent",
            "audience": {"kind": "device", "customer_id": "cust-d", "device_id": "phone-1"},
            "content": {"title": "d's phone", "body": ""} }))
        .await;
    let everyone = p
        .accept(
            &json!({ "priority": "normal", "audience": {"kind": "everyone"},
            "content": {"title": "all", "body": ""} }),
        )
        .await;
    for (id, targeted) in [(&to_c, 1), (&to_d, 1), (&to_d_device, 1), (&everyone, 2)] {
        let status = p.wait_completed(id, Duration::from_secs(30)).await;
        assert_eq!(status["targeted"], targeted, "{status}");
        assert_eq!(status["sent"], targeted, "{status}");
    }
    let mut pushes: Vec<(String, String)> = p
        .standin
        .received()
        .into_iter()
        .map(|r| {
            let title = r.message["notification"]["title"]
                .as_str()
                .unwrap_or_default();
            (title.to_owned(), r.token.unwrap())
        })
        .collect();
    pushes.sort();
    assert_eq!(
        pushes,
        [
            ("all", "tok-c"),
            ("all", "tok-d"),
            ("d's phone", "tok-d"),
            ("for c", "tok-c"),
            ("for d", "tok-d"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    // The broadcast's two outcomes are two rows, one per customer.
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE notification_id = $1::uuid")
            .bind(&everyone)
            .fetch_one(&p.pool)
            .await
            .unwrap();
    assert_eq!(rows, 2);

    // A device audience must say whose device it means.
    let r = p
        .send(
            &json!({ "priority": "high", "audience": {"kind": "device", "device_id": "phone-1"},
                     "content": {"title": "whose?", "body": ""} }),
            None,
        )
        .await;
    assert_eq!(r.status(), 422);
    let problem: Value = r.json().await.unwrap();
    assert_eq!(
        problem["errors"][0]["field"], "audience.customer_id",
        "{problem}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_can_never_detach_another_customers_device() {
    let p = Pipeline::start_roles(xibaar::Roles {
        api: true,
        dispatcher: false,
        projector: true,
        archiver: false,
        sources: false,
    })
    .await;
    p.register_device("victim", "phone-1", "tok-victim").await;
    p.wait_for_devices(1).await;

    // Another customer registers a phone under the same id, refreshes its token, and tries to
    // remove "phone-1".
    p.register_device("attacker", "phone-1", "tok-attacker")
        .await;
    p.register_device("attacker", "phone-1", "tok-attacker-2")
        .await;
    let refreshed = xibaar_testkit::eventually(Duration::from_secs(20), || async {
        let theirs = tokens_of(&p, "attacker").await;
        (theirs == [("phone-1".to_owned(), "tok-attacker-2".to_owned())]).then_some(())
    })
    .await;
    assert!(
        refreshed.is_some(),
        "the attacker's refresh was not projected"
    );
    assert_eq!(
        tokens_of(&p, "victim").await,
        [("phone-1".to_owned(), "tok-victim".to_owned())],
        "registering the same device id touched another customer's device"
    );
    let removed = p
        .http
        .delete(format!("{}/v1/devices/phone-1", p.api))
        .bearer_auth(p.token("attacker", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        removed.status(),
        202,
        "the attacker's own phone-1 is theirs to remove"
    );
    let gone = xibaar_testkit::eventually(Duration::from_secs(20), || async {
        tokens_of(&p, "attacker").await.is_empty().then_some(())
    })
    .await;
    assert!(gone.is_some(), "the attacker's device was not removed");
    let again = p
        .http
        .delete(format!("{}/v1/devices/phone-1", p.api))
        .bearer_auth(p.token("attacker", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        404,
        "the victim's phone-1 is not the attacker's"
    );

    // Every event is projected (the head is the attacker's removal): the victim's phone is
    // untouched.
    p.wait_projected(&p.pool).await;
    assert_eq!(
        tokens_of(&p, "victim").await,
        [("phone-1".to_owned(), "tok-victim".to_owned())]
    );
    let listed = devices(&p, "victim").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "active");
}

use serde_json::{Value, json};

use crate::support::{Pipeline, notification};

/// The fields a 422 problem names, in order.
fn fields(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect()
}

async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:xibaar:problem:")
    );
    assert!(!body["detail"].as_str().unwrap().is_empty());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problem_details_and_publish_nothing() {
    let p = Pipeline::start_roles(xibaar::Roles {
        api: true,
        dispatcher: false,
        projector: false,
        archiver: false,
        sources: false,
    })
    .await;
    let url = format!("{}/v1/notifications", p.api);
    let token = p.back_office();
    let post = |body: Vec<u8>| {
        p.http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    // Malformed JSON: 400.
    problem(post(b"{\"priority\": ".to_vec()).await.unwrap(), 400).await;

    // Unknown priority: 422 naming the field.
    let mut body = notification("critical", &["c1"], "t");
    let v = problem(post(serde_json::to_vec(&body).unwrap()).await.unwrap(), 422).await;
    assert_eq!(v["errors"][0]["field"], "priority");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("critical")
    );

    // Unknown field and invalid content: 422 with each field named.
    body["priority"] = "high".into();
    body["content"]["title"] = "".into();
    body["content"]["data"] = json!({ "google.sent_time": "1" });
    let v = problem(post(serde_json::to_vec(&body).unwrap()).await.unwrap(), 422).await;
    let named = fields(&v);
    assert_eq!(named, ["content.title", "content.data.google.sent_time"]);
    let mut extra = notification("high", &["c1"], "t");
    extra["colour"] = "red".into();
    problem(
        post(serde_json::to_vec(&extra).unwrap()).await.unwrap(),
        422,
    )
    .await;

    // A TTL out of FCM's range and a collapse key APNs would refuse: 422, both named.
    let mut timed = notification("low", &["c1"], "t");
    timed["ttl_seconds"] = 0.into();
    timed["collapse_key"] = "k".repeat(65).into();
    let v = problem(
        post(serde_json::to_vec(&timed).unwrap()).await.unwrap(),
        422,
    )
    .await;
    let named = fields(&v);
    assert_eq!(named, ["ttl_seconds", "collapse_key"]);

    // A payload FCM would refuse: 413 before anything is accepted.
    let mut big = notification("low", &["c1"], "t");
    big["content"]["body"] = "x".repeat(1500).into();
    big["content"]["data"] = json!({ "blob": "y".repeat(3000) });
    let v = problem(post(serde_json::to_vec(&big).unwrap()).await.unwrap(), 413).await;
    assert!(v["detail"].as_str().unwrap().contains("4096"));

    // A body over the request limit: 413. Driven without a socket: over TCP the server may
    // answer and close before the client has finished writing, which the client reports as a
    // reset instead of the answer.
    let app = xibaar_api::app(
        p.api_state(xibaar_api::limit::RateLimits::new(
            p.config.api.customer_requests_per_minute,
            p.config.api.client_requests_per_minute,
        ))
        .await,
        p.config.api.max_body_bytes,
    );
    let huge = format!("{{\"pad\": \"{}\"}}", "z".repeat(2 * 1024 * 1024));
    let request = axum::http::Request::post("/v1/notifications")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(huge))
        .unwrap();
    let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );

    // Not JSON: 415.
    let r = p
        .http
        .post(&url)
        .bearer_auth(&token)
        .body("priority=high")
        .send()
        .await
        .unwrap();
    problem(r, 415).await;

    // No token: 401 with a challenge; a customer token without the scope: 403.
    let r = p
        .http
        .post(&url)
        .json(&notification("high", &["c1"], "t"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    problem(r, 401).await;
    let r = p
        .http
        .post(&url)
        .bearer_auth(p.token("c1", &[]))
        .json(&notification("high", &["c1"], "t"))
        .send()
        .await
        .unwrap();
    problem(r, 403).await;
    // A token signed with another secret: 401.
    let forged = xibaar_api::mint(
        b"another-secret-another-secret-0000",
        "xibaar",
        "xibaar-api",
        "billing",
        &["notifications:send"],
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let r = p
        .http
        .post(&url)
        .bearer_auth(forged)
        .json(&notification("high", &["c1"], "t"))
        .send()
        .await
        .unwrap();
    problem(r, 401).await;

    // Nothing was published anywhere.
    for stream in [
        "XIBAAR_CMD_URGENT",
        "XIBAAR_CMD_HIGH",
        "XIBAAR_CMD_NORMAL",
        "XIBAAR_CMD_LOW",
        "XIBAAR_EVENTS",
    ] {
        assert_eq!(p.stream_messages(stream).await, 0, "{stream}");
    }

    // Unknown routes and ids are problems too.
    let r = p
        .http
        .get(format!("{}/v1/nowhere", p.api))
        .send()
        .await
        .unwrap();
    problem(r, 404).await;
}

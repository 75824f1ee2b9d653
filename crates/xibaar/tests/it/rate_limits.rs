//! Per-customer and per-client budgets: 429 with `Retry-After` and `RateLimit-*` headers,
//! one caller's excess never costs another.

use std::{num::NonZeroU32, time::Duration};

use axum::{body::Body, http::Request};
use serde_json::Value;
use tower::ServiceExt;

use crate::support::Pipeline;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_past_their_budget_get_429_with_rate_limit_headers() {
    let p = Pipeline::start().await;
    let app = xibaar_api::app(
        p.api_state(xibaar_api::limit::RateLimits::new(
            NonZeroU32::new(3).unwrap(),
            NonZeroU32::new(1000).unwrap(),
        ))
        .await,
        p.config.api.max_body_bytes,
    );
    let get = |token: String| {
        Request::get("/v1/devices")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let alice = p.token("alice", &[]);
    for remaining in ["2", "1", "0"] {
        let r = app.clone().oneshot(get(alice.clone())).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-limit"], "3");
        assert_eq!(r.headers()["ratelimit-remaining"], remaining);
        let reset: u64 = r.headers()["ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(reset <= 60, "{reset}");
    }
    let r = app.clone().oneshot(get(alice.clone())).await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 429);
    assert_eq!(problem["type"], "urn:xibaar:problem:rate-limited");

    // Another customer, and a back-office client, are unaffected.
    let r = app.clone().oneshot(get(p.token("bob", &[]))).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .clone()
        .oneshot(
            Request::get(format!("/v1/notifications/{}", uuid::Uuid::nil()))
                .header("authorization", format!("Bearer {}", p.back_office()))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["ratelimit-limit"], "1000");
    // Unauthenticated requests are refused before any budget is spent.
    let r = app
        .clone()
        .oneshot(Request::get("/v1/devices").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("ratelimit-limit").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apis_behind_a_balancer_keep_one_budget_per_customer() {
    let nats = xibaar_testkit::NatsServer::start().await.unwrap();
    let mut p = Pipeline::prepare_on(crate::support::Nats::Server(nats)).await;
    p.start_in_process(xibaar::Roles::NONE.with("projector"))
        .await;
    let ports = [crate::support::free_port(), crate::support::free_port()];
    let _apis: Vec<_> = ports
        .iter()
        .map(|port| {
            p.spawn_role(
                "api",
                &[
                    ("XIBAAR_API__LISTEN", format!("127.0.0.1:{port}").as_str()),
                    ("XIBAAR_API__CUSTOMER_REQUESTS_PER_MINUTE", "60"),
                ],
                std::process::Stdio::null(),
            )
        })
        .collect();
    let [a, b] = ports.map(|port| format!("http://127.0.0.1:{port}"));
    for api in [&a, &b] {
        let up = crate::support::answers(
            &p.http,
            &format!("{api}/openapi.json"),
            Duration::from_secs(60),
        )
        .await;
        assert!(up, "{api} never came up");
    }
    let get = |api: &str, customer: &str| {
        p.http
            .get(format!("{api}/v1/devices"))
            .bearer_auth(p.token(customer, &[]))
            .send()
    };
    // Alice spends her whole budget on the first api.
    for _ in 0..60 {
        assert_eq!(get(&a, "alice").await.unwrap().status(), 200);
    }
    assert_eq!(get(&a, "alice").await.unwrap().status(), 429);
    // The second api learns of it within a report: it admits her only until then (and the
    // one request a second her budget regains), not another 60.
    let mut admitted_elsewhere = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = get(&b, "alice").await.unwrap().status();
        if status == 429 {
            break;
        }
        assert_eq!(status, 200);
        admitted_elsewhere += 1;
        assert!(
            std::time::Instant::now() < deadline,
            "the second api never refused alice"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("the second api admitted {admitted_elsewhere} more before refusing");
    assert!(
        admitted_elsewhere < 30,
        "the second api admitted {admitted_elsewhere} more"
    );
    // Bob's budget is his own, on either api.
    let r = get(&b, "bob").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit-remaining"], "59");
}

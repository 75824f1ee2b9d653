//! Per-customer and per-client budgets: 429 with `Retry-After` and `RateLimit-*` headers,
//! one caller's excess never costs another.

use std::{num::NonZeroU32, time::Duration};

use axum::{body::Body, http::Request};
use serde_json::Value;
use tower::ServiceExt;

use crate::support::{Pipeline, SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_past_their_budget_get_429_with_rate_limit_headers() {
    let p = Pipeline::start().await;
    let app = xibaar_api::app(
        xibaar_api::AppState::new(xibaar_api::Shared {
            js: p.jetstream().await,
            pool: p.pool.clone(),
            auth: xibaar_api::Authenticator::hs256(SECRET.as_bytes(), "xibaar", "xibaar-api"),
            limits: xibaar_api::limit::RateLimits::new(
                NonZeroU32::new(3).unwrap(),
                NonZeroU32::new(1000).unwrap(),
            ),
            ops: xibaar_api::ops::idle_view(),
            inbox: Default::default(),
            archive: None,
            publish_timeout: Duration::from_secs(5),
        }),
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

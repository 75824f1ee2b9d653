//! The HTTP API: accepts notification commands and device registrations (writing them to
//! JetStream) and serves read models. It never calls FCM, and it keeps accepting work while
//! Postgres is down: only reads need Postgres.

pub mod auth;
mod extract;
pub mod limit;
pub mod problem;
mod routes;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream;
use axum::{Router, extract::DefaultBodyLimit};
use sqlx::PgPool;
use tower_http::trace::TraceLayer;

pub use auth::{Authenticator, Caller, mint, scopes};

#[derive(Clone)]
pub struct AppState {
    pub js: jetstream::Context,
    pub pool: PgPool,
    pub auth: Arc<Authenticator>,
    pub limits: Arc<limit::RateLimits>,
    /// How long a publish may wait for JetStream before the request fails with 503.
    pub publish_timeout: Duration,
}

/// The API's routes, ready to serve or to drive with `oneshot` in tests.
pub fn app(state: AppState, max_body_bytes: usize) -> Router {
    routes::router()
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(limit::budget_layer))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

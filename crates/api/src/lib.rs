//! The HTTP API: accepts notification commands and device registrations (writing them to
//! JetStream) and serves read models. It never calls FCM, and it keeps accepting work while
//! Postgres is down: only reads need Postgres.

pub mod accept;
pub mod auth;
mod examples;
mod extract;
pub mod limit;
mod listen;
pub mod live;
pub mod openapi;
pub mod ops;
pub mod problem;
mod routes;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream;
use axum::{Router, extract::DefaultBodyLimit};
use sqlx::PgPool;
use tower_http::{set_header::SetResponseHeaderLayer, trace::TraceLayer};

pub use auth::{Authenticator, Caller, mint, scopes};
pub use listen::serve;

/// What every request shares, behind one reference count: a request clones its handle a few
/// times on its way through the router, which costs one atomic increment each.
#[derive(Clone)]
pub struct AppState(Arc<State>);

struct State {
    shared: Shared,
    /// The api's publishes to `shared.js`, coalesced into fewer writes.
    publisher: xibaar_streams::CoalescingPublisher,
}

impl AppState {
    /// Also starts the task that queues the api's publishes (on the current runtime).
    pub fn new(shared: Shared) -> Self {
        let publisher = xibaar_streams::CoalescingPublisher::spawn(shared.js.clone());
        Self(Arc::new(State { shared, publisher }))
    }

    pub(crate) fn publisher(&self) -> &xibaar_streams::CoalescingPublisher {
        &self.0.publisher
    }

    /// What accepting a notification writes to.
    pub fn commands(&self) -> accept::CommandStore<'_> {
        accept::CommandStore {
            js: &self.js,
            publisher: &self.0.publisher,
            publish_timeout: self.publish_timeout,
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0.shared
    }
}

pub struct Shared {
    pub js: jetstream::Context,
    pub pool: PgPool,
    pub auth: Authenticator,
    pub limits: limit::RateLimits,
    /// How long a request may wait for JetStream to store what it writes, retrying through a
    /// leader election, before it fails with 503.
    pub publish_timeout: Duration,
    /// The ops page's latest figures ([`ops::spawn_collector`]).
    pub ops: ops::OpsView,
    /// Wakes the customers' live inbox streams ([`live::InboxHub::spawn_listener`]).
    pub inbox: Arc<live::InboxHub>,
    /// The long-term archive, when one is configured: timelines reach into it for what the
    /// event stream no longer holds.
    pub archive: Option<xibaar_archive::ArchiveStore>,
}

/// The API's routes, ready to serve or to drive with `oneshot` in tests.
pub fn app(state: AppState, max_body_bytes: usize) -> Router {
    routes::router()
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(limit::budget_layer))
        .layer(SetResponseHeaderLayer::overriding(
            axum::http::HeaderName::from_static(xibaar_streams::trace::TRACEPARENT),
            traceparent_header,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// One span per request, continuing the caller's trace when it sends a `traceparent`; the
/// commands and events the request writes carry this trace on.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    span_for(
        request.method().as_str(),
        request.uri().path(),
        request.headers(),
    )
}

/// The span of a request to `path`, continuing the trace of its `traceparent` header.
pub(crate) fn span_for(method: &str, path: &str, headers: &axum::http::HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        method = %method,
        path = %path,
        otel.kind = "server",
    );
    xibaar_streams::trace::continue_trace(
        &span,
        headers
            .get(xibaar_streams::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok()),
    );
    span
}

/// Answers with the request's `traceparent`, so a client can quote the trace of what it sent.
/// Runs inside the request's span (the trace layer enters it while the response is made).
fn traceparent_header<B>(_: &axum::http::Response<B>) -> Option<axum::http::HeaderValue> {
    xibaar_streams::trace::current_traceparent()
        .and_then(|tp| axum::http::HeaderValue::try_from(tp).ok())
}

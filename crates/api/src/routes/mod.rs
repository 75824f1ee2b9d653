pub(crate) mod devices;
pub(crate) mod inbox;
pub(crate) mod notifications;
pub(crate) mod preferences;
pub(crate) mod stats;

use axum::{
    Router,
    routing::{delete, get, post},
};

use crate::{AppState, problem::ApiError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/notifications", post(notifications::send))
        .route(
            "/v1/notifications/{id}",
            get(notifications::status).delete(notifications::cancel),
        )
        .route(
            "/v1/notifications/{id}/timeline",
            get(notifications::timeline),
        )
        .route("/v1/devices", post(devices::register).get(devices::list))
        .route("/v1/devices/{id}", delete(devices::remove))
        .route("/v1/me/inbox", get(inbox::list))
        .route("/v1/me/inbox/unread-count", get(inbox::unread_count))
        .route("/v1/me/inbox/read-all", post(inbox::mark_all_read))
        .route("/v1/me/inbox/{id}/read", post(inbox::mark_read))
        .route("/v1/me/stream", get(inbox::stream))
        .route(
            "/v1/me/preferences",
            get(preferences::show).put(preferences::change),
        )
        .route("/v1/stats/daily", get(stats::daily))
        .route("/ops", get(crate::ops::page))
        .route("/openapi.json", get(crate::openapi::serve))
        .route("/docs", get(crate::openapi::docs))
        .route("/v1/ops/snapshot", get(crate::ops::snapshot))
        .route("/v1/ops/stream", get(crate::ops::stream))
        .fallback(|| async { ApiError::NotFound("no such resource".into()) })
}

/// Stores `envelope` in `XIBAAR_EVENTS`; 503 (retry) when JetStream does not confirm in time.
async fn store_event(
    state: &crate::AppState,
    envelope: &xibaar_core::EventEnvelope,
    what: &str,
) -> Result<(), ApiError> {
    state
        .publisher()
        .publish_event_stored(envelope, state.publish_timeout)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "storing the {what} failed");
            ApiError::Unavailable(format!(
                "JetStream did not confirm the {what} in time, so it may or may not be stored; retry"
            ))
        })?;
    Ok(())
}

/// Stores a fact the caller states about what is theirs (a device, their inbox, their
/// choices), correlated by the id of what it is about.
async fn record_for_caller(
    state: &crate::AppState,
    caller: &crate::auth::Caller,
    event: xibaar_core::Event,
    what: &str,
) -> Result<(), ApiError> {
    let correlation = event.aggregate_id();
    let envelope = xibaar_core::EventEnvelope::new(event, correlation, None, caller.actor());
    store_event(state, &envelope, what).await
}

/// Read models live in Postgres; when it is away, reads fail with 503 (writes do not need it).
pub(crate) fn read_failed(e: xibaar_store::StoreError) -> ApiError {
    tracing::warn!(error = %e, "read model unavailable");
    ApiError::Unavailable("the read model is unavailable; try again shortly".into())
}

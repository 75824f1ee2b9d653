mod devices;
mod notifications;
mod preferences;

use axum::{
    Router,
    routing::{get, post},
};

use crate::{AppState, problem::ApiError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/notifications", post(notifications::send))
        .route("/v1/notifications/{id}", get(notifications::status))
        .route("/v1/devices", post(devices::register).get(devices::list))
        .route(
            "/v1/me/preferences",
            get(preferences::show).put(preferences::change),
        )
        .fallback(|| async { ApiError::NotFound("no such resource".into()) })
}

/// Read models live in Postgres; when it is away, reads fail with 503 (writes do not need it).
fn read_failed(e: xibaar_store::StoreError) -> ApiError {
    tracing::warn!(error = %e, "read model unavailable");
    ApiError::Unavailable("the read model is unavailable; try again shortly".into())
}

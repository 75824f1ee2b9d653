//! `GET /v1/me/preferences` and `PUT /v1/me/preferences`: which categories I receive.

use std::collections::BTreeMap;

use axum::{Json, extract::State, http::StatusCode};
use serde::Deserialize;
use serde_json::json;
use xibaar_core::{Category, Event, event::PreferencesChanged};

use crate::{
    AppState,
    auth::Caller,
    extract::ApiJson,
    problem::ApiError,
    routes::{read_failed, record_for_caller},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePreferences {
    /// Category → opted in. Categories not named keep their current choice.
    pub categories: BTreeMap<Category, bool>,
}

pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let customer_id = caller.customer()?;
    let categories = xibaar_store::preferences_of_customer(&state.pool, &customer_id)
        .await
        .map_err(read_failed)?;
    Ok(Json(json!({ "categories": categories })))
}

#[tracing::instrument(skip_all, fields(caller = %caller.subject))]
pub async fn change(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<ChangePreferences>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let customer_id = caller.customer()?;
    if request.categories.is_empty() {
        return Err(ApiError::validation(
            "categories",
            "must name at least one category",
        ));
    }
    record_for_caller(
        &state,
        &caller,
        Event::PreferencesChanged(PreferencesChanged {
            customer_id: customer_id.clone(),
            categories: request.categories.clone(),
        }),
        "preferences",
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "changed": request.categories })),
    ))
}

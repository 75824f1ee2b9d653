//! `GET /v1/me/preferences` and `PUT /v1/me/preferences`: which categories I receive.

use std::collections::BTreeMap;

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use xibaar_core::{Category, Event, event::PreferencesChanged};

use crate::{
    AppState,
    auth::Caller,
    extract::ApiJson,
    problem::ApiError,
    routes::{read_failed, record_for_caller},
};

/// Categories to opt in to (`true`) or out of (`false`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePreferences {
    /// Category → opted in. Categories not named keep their current choice.
    #[schema(value_type = CategoryChoices)]
    pub categories: BTreeMap<Category, bool>,
}

/// The OpenAPI schema of a `Category → opted in` map: an object whose keys can only be
/// categories (the map's derived schema would allow any key).
pub struct CategoryChoices;

impl utoipa::PartialSchema for CategoryChoices {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::{
            ObjectBuilder,
            schema::{AdditionalProperties, Type},
        };
        Category::ALL
            .into_iter()
            .fold(ObjectBuilder::new(), |object, category| {
                object.property(
                    category.as_str(),
                    ObjectBuilder::new().schema_type(Type::Boolean),
                )
            })
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .description(Some("Category → opted in"))
            .into()
    }
}

impl utoipa::ToSchema for CategoryChoices {}

/// The caller's effective choice for every category.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Preferences {
    #[schema(value_type = CategoryChoices)]
    pub categories: BTreeMap<Category, bool>,
}

/// The choices stored by a change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PreferencesChange {
    #[schema(value_type = CategoryChoices)]
    pub changed: BTreeMap<Category, bool>,
}

/// The caller's choice for every category.
///
/// What they chose, else the category's default (marketing is opt-in, the others opt-out).
#[utoipa::path(get, path = "/v1/me/preferences", operation_id = "getPreferences", tag = "customer-app",
    responses((status = 200, description = "Every category and whether the caller receives it", body = Preferences)),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Preferences>, ApiError> {
    let customer_id = caller.customer()?;
    let categories = xibaar_store::preferences_of_customer(&state.pool, &customer_id)
        .await
        .map_err(read_failed)?;
    Ok(Json(Preferences { categories }))
}

/// Opts in to or out of categories.
///
/// Urgent outage notices reach every customer regardless.
#[utoipa::path(put, path = "/v1/me/preferences", operation_id = "changePreferences", tag = "customer-app", request_body = ChangePreferences,
    responses((status = 202, description = "The change is stored", body = PreferencesChange)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.subject))]
pub async fn change(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<ChangePreferences>,
) -> Result<(StatusCode, Json<PreferencesChange>), ApiError> {
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
        Json(PreferencesChange {
            changed: request.categories,
        }),
    ))
}

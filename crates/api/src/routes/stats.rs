//! `GET /v1/stats/daily`: delivery outcomes per day, priority and outcome, for back-office
//! reports.

use axum::{Json, extract::State};
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    AppState,
    auth::{Caller, scopes},
    extract::ApiQuery,
    problem::ApiError,
    routes::read_failed,
};

/// The longest range one request may cover.
const MAX_DAYS: i64 = 366;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DailyQuery {
    /// First UTC day (default: 30 days before `to`).
    #[serde(default)]
    from: Option<NaiveDate>,
    /// Last UTC day, included (default: today).
    #[serde(default)]
    to: Option<NaiveDate>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DailyStats {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Only the combinations that had deliveries.
    pub days: Vec<xibaar_store::DailyStat>,
}

/// Deliveries per UTC day, priority and outcome.
///
/// Needs the scope `notifications:read`. At most 366 days per request.
#[utoipa::path(get, path = "/v1/stats/daily", operation_id = "getDailyStats", tag = "back-office", params(DailyQuery),
    responses((status = 200, description = "The range's figures", body = DailyStats)),
    security(("bearer" = ["notifications:read"])))]
pub async fn daily(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<DailyQuery>,
) -> Result<Json<DailyStats>, ApiError> {
    caller.require(scopes::READ)?;
    let to = query.to.unwrap_or_else(|| Utc::now().date_naive());
    let from = query.from.unwrap_or(to - chrono::Duration::days(30));
    if from > to {
        return Err(ApiError::validation("from", "must not be after `to`"));
    }
    if (to - from).num_days() >= MAX_DAYS {
        return Err(ApiError::validation(
            "from",
            format!("the range may cover at most {MAX_DAYS} days"),
        ));
    }
    let days = xibaar_store::daily_stats(&state.pool, from, to)
        .await
        .map_err(read_failed)?;
    Ok(Json(DailyStats { from, to, days }))
}

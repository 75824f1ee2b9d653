//! `POST /v1/devices` (register or refresh my device's token) and `GET /v1/devices` (mine).

use axum::extract::Path;
use axum::{Json, extract::State, http::StatusCode};
use serde::Deserialize;
use serde_json::json;
use xibaar_core::{
    DeviceId, Event, FcmToken, Platform,
    event::{DeviceRegistered, DeviceRemoved},
};

use crate::{
    AppState,
    auth::Caller,
    extract::ApiJson,
    problem::ApiError,
    routes::{read_failed, record_for_caller},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterDevice {
    pub device_id: DeviceId,
    pub token: FcmToken,
    pub platform: Platform,
    pub app_id: String,
    #[serde(default)]
    pub app_version: Option<String>,
    #[serde(default)]
    pub locale: Option<String>,
}

/// A BCP 47 language tag in its common shape: a 2–3 letter language, then subtags of 1–8
/// letters or digits (`fr`, `fr-SN`, `wo-Latn-SN`). Full BCP 47 validation (registries of
/// subtags) would refuse tags newer than the registry a library carries; the shape is enough
/// for choosing a translation.
fn valid_locale(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let language = parts.next().unwrap_or_default();
    (2..=3).contains(&language.len())
        && language.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
        && tag.len() <= 35
}

#[tracing::instrument(skip_all, fields(caller = %caller.subject))]
pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<RegisterDevice>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let customer_id = caller.customer()?;
    if request.app_id.is_empty() || request.app_id.len() > 200 {
        return Err(ApiError::validation(
            "app_id",
            "must be 1 to 200 characters",
        ));
    }
    if let Some(version) = &request.app_version
        && (version.is_empty() || version.len() > 50 || version.chars().any(char::is_control))
    {
        return Err(ApiError::validation(
            "app_version",
            "must be 1 to 50 printable characters",
        ));
    }
    if let Some(locale) = &request.locale
        && !valid_locale(locale)
    {
        return Err(ApiError::validation(
            "locale",
            "must be a language tag such as `fr` or `fr-SN`",
        ));
    }
    let device_id = request.device_id.clone();
    record_for_caller(
        &state,
        &caller,
        Event::DeviceRegistered(DeviceRegistered {
            device_id: request.device_id,
            customer_id,
            token: request.token,
            platform: request.platform,
            app_id: request.app_id,
            app_version: request.app_version,
            locale: request.locale,
        }),
        "registration",
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "device_id": device_id, "status": "registered" })),
    ))
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let customer_id = caller.customer()?;
    let devices = xibaar_store::devices_of_customer(&state.pool, &customer_id)
        .await
        .map_err(read_failed)?;
    Ok(Json(json!({ "devices": devices })))
}

/// `DELETE /v1/devices/{id}`: the device receives nothing more. Another customer's device is
/// not found (404).
#[tracing::instrument(skip_all, fields(caller = %caller.subject))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let customer_id = caller.customer()?;
    let not_found = || ApiError::NotFound("no such device of yours".into());
    let device_id = DeviceId::parse(id).map_err(|_| not_found())?;
    let owned = xibaar_store::device_owned_by(&state.pool, &customer_id, device_id.as_str())
        .await
        .map_err(read_failed)?;
    if !owned {
        return Err(not_found());
    }
    record_for_caller(
        &state,
        &caller,
        Event::DeviceRemoved(DeviceRemoved {
            device_id: device_id.clone(),
            customer_id,
        }),
        "removal",
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "device_id": device_id, "status": "removed" })),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn locales_in_the_common_shape_pass_and_others_do_not() {
        for ok in ["fr", "fr-SN", "wo-Latn-SN", "en-US", "zh-Hant-TW", "ful"] {
            assert!(super::valid_locale(ok), "{ok}");
        }
        for bad in [
            "",
            "f",
            "french-SN",
            "fr_SN",
            "fr-",
            "fr--SN",
            "12-SN",
            "fr-SN-abcdefghi",
        ] {
            assert!(!super::valid_locale(bad), "{bad}");
        }
    }
}

//! `POST /v1/devices` (register or refresh my device's token) and `GET /v1/devices` (mine).

use axum::extract::Path;
use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
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

/// A device of the caller and its current FCM token.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDevice {
    /// Chosen by the app, stable across token refreshes.
    pub device_id: DeviceId,
    pub token: FcmToken,
    pub platform: Platform,
    /// The Firebase app the token belongs to.
    #[schema(min_length = 1, max_length = 200)]
    pub app_id: String,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 50)]
    pub app_version: Option<String>,
    /// A language tag such as `fr` or `fr-SN`.
    #[serde(default)]
    #[schema(max_length = 35, example = "fr-SN")]
    pub locale: Option<String>,
}

/// What happened to a device.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChange {
    Registered,
    Removed,
}

/// A device change, stored as an event; the device list shows it once projected.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceChanged {
    pub device_id: DeviceId,
    pub status: DeviceChange,
}

/// The caller's devices.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceList {
    pub devices: Vec<xibaar_store::DeviceView>,
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

/// Registers the caller's device or refreshes its token.
///
/// A token registered before by another customer (or under another device id) moves here.
#[utoipa::path(post, path = "/v1/devices", operation_id = "registerDevice", tag = "customer-app", request_body = RegisterDevice,
    responses((status = 202, description = "The registration is stored", body = DeviceChanged)),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.subject))]
pub async fn register(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<RegisterDevice>,
) -> Result<(StatusCode, Json<DeviceChanged>), ApiError> {
    let customer_id = caller.customer()?;
    if request.app_id.is_empty()
        || request.app_id.len() > 200
        || request.app_id.chars().any(char::is_control)
    {
        return Err(ApiError::validation(
            "app_id",
            "must be 1 to 200 printable characters",
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
        Json(DeviceChanged {
            device_id,
            status: DeviceChange::Registered,
        }),
    ))
}

/// The caller's devices, active and invalidated.
#[utoipa::path(get, path = "/v1/devices", operation_id = "listDevices", tag = "customer-app",
    responses((status = 200, description = "The caller's devices", body = DeviceList)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<DeviceList>, ApiError> {
    let customer_id = caller.customer()?;
    let devices = xibaar_store::devices_of_customer(&state.pool, &customer_id)
        .await
        .map_err(read_failed)?;
    Ok(Json(DeviceList { devices }))
}

/// Removes one of the caller's devices: it receives nothing more.
///
/// Another customer's device is not found (404).
#[utoipa::path(delete, path = "/v1/devices/{id}", operation_id = "removeDevice", tag = "customer-app",
    params(("id" = DeviceId, Path, description = "The device id")),
    responses(
        (status = 202, description = "The removal is stored", body = DeviceChanged),
        (status = 404, description = "The caller has no such device", body = crate::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
#[tracing::instrument(skip_all, fields(caller = %caller.subject))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeviceChanged>), ApiError> {
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
        Json(DeviceChanged {
            device_id,
            status: DeviceChange::Removed,
        }),
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

//! A customer's devices and preferences, as the api shows them.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use xibaar_core::{Category, CustomerId, DeviceId, Platform};

use crate::{StoreError, query_err};

#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    #[schema(value_type = DeviceId)]
    pub device_id: String,
    #[schema(value_type = CustomerId)]
    pub customer_id: String,
    #[schema(value_type = Platform)]
    pub platform: String,
    pub app_id: String,
    pub app_version: Option<String>,
    pub locale: Option<String>,
    /// `active`, or `invalidated` once FCM reported the token dead.
    pub status: String,
    pub registered_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

from_row!(DeviceView {
    device_id,
    customer_id,
    platform,
    app_id,
    app_version,
    locale,
    status,
    registered_at,
    updated_at,
});

pub async fn devices_of_customer(
    pool: &PgPool,
    customer: &CustomerId,
) -> Result<Vec<DeviceView>, StoreError> {
    sqlx::query_as(include_str!("../sql/devices_of_customer.sql"))
        .bind(customer.as_str())
        .fetch_all(pool)
        .await
        .map_err(query_err("listing devices"))
}

/// A customer's effective choice for every category: what they chose, else the default.
pub async fn preferences_of_customer(
    pool: &PgPool,
    customer: &CustomerId,
) -> Result<std::collections::BTreeMap<Category, bool>, StoreError> {
    let rows: Vec<(String, bool)> =
        sqlx::query_as(include_str!("../sql/preferences_of_customer.sql"))
            .bind(customer.as_str())
            .fetch_all(pool)
            .await
            .map_err(query_err("reading preferences"))?;
    let mut choices: std::collections::BTreeMap<Category, bool> = Category::ALL
        .into_iter()
        .map(|c| (c, c.default_opted_in()))
        .collect();
    for (category, opted_in) in rows {
        // A category this build does not know (written by a newer one) is not shown.
        if let Some(c) = Category::ALL.into_iter().find(|c| c.as_str() == category) {
            choices.insert(c, opted_in);
        }
    }
    Ok(choices)
}

/// Whether the customer owns the device (any status).
pub async fn device_owned_by(
    pool: &PgPool,
    customer: &CustomerId,
    device: &str,
) -> Result<bool, StoreError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM devices WHERE customer_id = $1 AND device_id = $2)",
    )
    .bind(customer.as_str())
    .bind(device)
    .fetch_one(pool)
    .await
    .map_err(query_err("looking up a device"))
}

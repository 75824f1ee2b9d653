//! A notification's status and the daily delivery statistics.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use xibaar_core::{NotificationId, Priority};

use crate::{StoreError, query_err};

/// What the api shows for `GET /v1/notifications/{id}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct NotificationStatus {
    pub notification_id: uuid::Uuid,
    #[schema(value_type = Priority)]
    pub priority: String,
    pub title: String,
    pub requested_by: String,
    /// scheduled (waiting for `send_at`), queued (stored, not yet projected), accepted,
    /// fanned_out, or completed once every targeted device has an outcome.
    pub status: String,
    pub targeted: Option<i64>,
    pub sent: i64,
    pub failed: i64,
    pub invalid: i64,
    /// Devices whose push was dropped because the notification's TTL passed first.
    pub expired: i64,
    pub accepted_at: DateTime<Utc>,
    /// Set on scheduled sends.
    pub send_at: Option<DateTime<Utc>>,
    pub fanned_out_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

from_row!(NotificationStatus {
    notification_id,
    priority,
    title,
    requested_by,
    status,
    targeted,
    sent,
    failed,
    invalid,
    expired,
    accepted_at,
    send_at,
    fanned_out_at,
    completed_at,
});

pub async fn notification_status(
    pool: &PgPool,
    id: NotificationId,
) -> Result<Option<NotificationStatus>, StoreError> {
    sqlx::query_as(include_str!("../sql/notification_status.sql"))
        .bind(id.0)
        .fetch_optional(pool)
        .await
        .map_err(query_err("reading notification status"))
}

/// Deliveries of one UTC day, priority and outcome.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct DailyStat {
    pub day: chrono::NaiveDate,
    #[schema(value_type = Priority)]
    pub priority: String,
    /// `succeeded`, `failed`, `invalid` (FCM refused the token) or `expired`.
    pub outcome: String,
    pub deliveries: i64,
}

from_row!(DailyStat {
    day,
    priority,
    outcome,
    deliveries,
});

/// Every row of `daily_stats` from `from` to `to` (inclusive), by day, priority and outcome.
pub async fn daily_stats(
    pool: &PgPool,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
) -> Result<Vec<DailyStat>, StoreError> {
    sqlx::query_as(
        "SELECT day, priority, outcome, deliveries FROM daily_stats \
         WHERE day BETWEEN $1 AND $2 AND deliveries <> 0 \
         ORDER BY day, array_position(ARRAY['urgent','high','normal','low'], priority), outcome",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
    .map_err(query_err("reading daily statistics"))
}

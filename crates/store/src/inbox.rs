//! A customer's inbox: its pages, what is new after a position, and the channel that announces it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use xibaar_core::{Category, CustomerId, NotificationId, Priority};

use crate::{StoreError, query_err};

/// The Postgres channel on which the projector announces new inbox items, in the transaction
/// that adds them: a payload is customer ids, one per line.
pub const INBOX_CHANNEL: &str = "xibaar_inbox";

/// One notification in a customer's inbox.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct InboxItem {
    pub notification_id: uuid::Uuid,
    /// Where the item sits in the inbox's order; the cursor and live stream id are made of it.
    #[serde(skip)]
    #[schema(ignore)]
    pub position: i64,
    /// In the customer's language (that of their device's locale) when the notification has
    /// it, else in its default.
    pub title: String,
    pub body: String,
    /// The language of `title` and `body`, when the notification names it.
    #[schema(pattern = "^[a-z]{2,3}$")]
    pub language: Option<String>,
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub data: serde_json::Value,
    #[schema(value_type = Option<Category>)]
    pub category: Option<String>,
    #[schema(value_type = Priority)]
    pub priority: String,
    pub received_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
}

from_row!(InboxItem {
    notification_id,
    position,
    title,
    body,
    language,
    data,
    category,
    priority,
    received_at,
    read_at,
});

/// Up to `limit` items below position `before` (from the newest when `None`), newest first.
pub async fn inbox_page(
    pool: &PgPool,
    customer: &CustomerId,
    before: Option<i64>,
    unread_only: bool,
    limit: i64,
) -> Result<Vec<InboxItem>, StoreError> {
    sqlx::query_as(concat!(
        include_str!("../sql/inbox_items.sql"),
        include_str!("../sql/inbox_page.sql")
    ))
    .bind(customer.as_str())
    .bind(before)
    .bind(unread_only)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(query_err("listing the inbox"))
}

/// Up to `limit` items above position `after`, oldest first.
pub async fn inbox_after(
    pool: &PgPool,
    customer: &CustomerId,
    after: i64,
    limit: i64,
) -> Result<Vec<InboxItem>, StoreError> {
    sqlx::query_as(concat!(
        include_str!("../sql/inbox_items.sql"),
        include_str!("../sql/inbox_after.sql")
    ))
    .bind(customer.as_str())
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(query_err("reading new inbox items"))
}

/// The items of `customers`, each above its position in `after`, oldest first, each with its
/// customer: one query for every live stream a projector batch woke.
pub async fn inbox_new(
    pool: &PgPool,
    customers: &[&str],
    after: &[i64],
) -> Result<Vec<(String, InboxItem)>, StoreError> {
    use sqlx::{FromRow, Row};
    let rows = sqlx::query(concat!(
        include_str!("../sql/inbox_items.sql"),
        include_str!("../sql/inbox_new.sql")
    ))
    .bind(customers)
    .bind(after)
    .fetch_all(pool)
    .await
    .map_err(query_err("reading new inbox items"))?;
    rows.iter()
        .map(|row| Ok((row.try_get("customer_id")?, InboxItem::from_row(row)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(query_err("reading new inbox items"))
}

/// The newest position of any inbox (0 when every inbox is empty).
pub async fn inbox_head(pool: &PgPool) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT coalesce(max(position), 0)::BIGINT FROM inbox")
        .fetch_one(pool)
        .await
        .map_err(query_err("reading the inbox head"))
}

/// Unread items, and the newest item's position (0 for an empty inbox).
pub async fn inbox_summary(pool: &PgPool, customer: &CustomerId) -> Result<(i64, i64), StoreError> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE read_at IS NULL), coalesce(max(position), 0)::BIGINT \
         FROM inbox WHERE customer_id = $1",
    )
    .bind(customer.as_str())
    .fetch_one(pool)
    .await
    .map_err(query_err("counting unread items"))
}

/// Whether the notification is in the customer's inbox.
pub async fn inbox_holds(
    pool: &PgPool,
    customer: &CustomerId,
    notification: NotificationId,
) -> Result<bool, StoreError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM inbox WHERE customer_id = $1 AND notification_id = $2)",
    )
    .bind(customer.as_str())
    .bind(notification.0)
    .fetch_one(pool)
    .await
    .map_err(query_err("looking up an inbox item"))
}

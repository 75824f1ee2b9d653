//! The Postgres side of Xibaar: the pool, the embedded migrations and the read-model queries
//! that roles other than the projector need (the device registry for fan-out, notification
//! status for the api).

use std::{borrow::Cow, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{
    PgPool, SqlStr,
    migrate::{Migration, MigrationType, Migrator},
    postgres::PgPoolOptions,
};
use xibaar_core::{
    Audience, Category, CustomerId, DeviceId, FcmToken, NotificationId, Platform, Priority,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to Postgres: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migrating the read models failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{what} failed: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("the read model holds an invalid {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

fn query_err(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

/// A lazily connecting pool: roles start (and the api accepts work) while Postgres is down.
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(url)
        .map_err(StoreError::Connect)
}

/// `sqlx::FromRow` for a struct read from the columns named like its fields. (The derive needs
/// sqlx's proc-macro crate, which `build.rs` explains the cost of; the compiler still checks
/// that every field is listed.)
macro_rules! from_row {
    ($type:ident { $($field:ident),* $(,)? }) => {
        impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for $type {
            fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
                use sqlx::Row;
                Ok(Self { $($field: row.try_get(stringify!($field))?),* })
            }
        }
    };
}

/// Every file of `migrations/`, by name, with its text (see `build.rs`).
const MIGRATION_FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The migrations compiled into the binary, as `sqlx::migrate!` would make them of the same
/// files: version and description from the name (`0001_read_models.sql` is 1, "read models"),
/// the text's checksum, no transaction when the text starts with `-- no-transaction`. The
/// databases record each applied migration's checksum, so these must stay alike (a test
/// compares them with what sqlx reads from the folder).
fn migrations() -> Vec<Migration> {
    MIGRATION_FILES
        .iter()
        .map(|(name, sql)| {
            let (version, rest) = name
                .split_once('_')
                .expect("migration files are named VERSION_DESCRIPTION.sql");
            let kind = MigrationType::from_filename(rest);
            Migration::new(
                version.parse().expect("a migration's version is a number"),
                Cow::Owned(rest.trim_end_matches(kind.suffix()).replace('_', " ")),
                kind,
                SqlStr::from_static(sql),
                sql.starts_with("-- no-transaction"),
            )
        })
        .collect()
}

/// Applies the migrations compiled into the binary.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    Migrator::with_migrations(migrations()).run(pool).await?;
    Ok(())
}

/// A device that can receive pushes.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipient {
    pub device_id: DeviceId,
    pub customer_id: CustomerId,
    pub token: FcmToken,
    pub platform: Platform,
    pub app_id: String,
    /// The app's locale on the device (`wo-SN`): which language of a notification it gets.
    pub locale: Option<String>,
}

type RecipientRow = (String, String, String, String, String, Option<String>);

fn parse_platform(s: &str) -> Result<Platform, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        StoreError::Corrupt {
            what: "platform",
            detail: s.to_owned(),
        }
    })
}

fn recipient(
    (device_id, customer_id, token, platform, app_id, locale): RecipientRow,
) -> Result<Recipient, StoreError> {
    let corrupt = |what| {
        move |e: xibaar_core::InvalidId| StoreError::Corrupt {
            what,
            detail: e.to_string(),
        }
    };
    Ok(Recipient {
        device_id: DeviceId::parse(device_id).map_err(corrupt("device id"))?,
        customer_id: CustomerId::parse(customer_id).map_err(corrupt("customer id"))?,
        token: FcmToken::parse(token).map_err(corrupt("token"))?,
        platform: parse_platform(&platform)?,
        app_id,
        locale,
    })
}

/// Where a page of an audience starts: after this device of this customer, in the registry's
/// key order (device id, then customer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageAfter<'a> {
    pub device_id: &'a DeviceId,
    /// `None` in a fan-out recorded before devices belonged to their customer: the page then
    /// starts after every device of that id, as it did then.
    pub customer_id: Option<&'a CustomerId>,
}

/// One page of an audience's active devices, in (device id, customer) order, after `after`.
/// With `opted_in_to`, customers opted out of that category (or, for opt-in categories, who
/// never opted in) are left out.
#[tracing::instrument(skip_all, fields(limit))]
pub async fn audience_page(
    pool: &PgPool,
    audience: &Audience,
    opted_in_to: Option<Category>,
    after: Option<PageAfter<'_>>,
    limit: u32,
) -> Result<Vec<Recipient>, StoreError> {
    let started = after.is_some();
    let (after, after_customer) = match after {
        None => (String::new(), String::new()),
        Some(PageAfter {
            device_id,
            customer_id: Some(customer),
        }) => (device_id.to_string(), customer.to_string()),
        Some(PageAfter {
            device_id,
            customer_id: None,
        }) => {
            // After every customer's device of that id: the greatest customer holding it
            // (compared in the database's collation, as the pages are).
            let last: Option<String> =
                sqlx::query_scalar("SELECT max(customer_id) FROM devices WHERE device_id = $1")
                    .bind(device_id.as_str())
                    .fetch_one(pool)
                    .await
                    .map_err(query_err("resuming an audience"))?;
            (device_id.to_string(), last.unwrap_or_default())
        }
    };
    let category = opted_in_to.map(Category::as_str);
    let default_in = opted_in_to.is_none_or(Category::default_opted_in);
    let rows: Vec<RecipientRow> = match audience {
        Audience::Customers { customer_ids } => {
            let ids: Vec<&str> = customer_ids.iter().map(CustomerId::as_str).collect();
            sqlx::query_as(include_str!("../sql/audience_customers.sql"))
                .bind(ids)
                .bind(&after)
                .bind(i64::from(limit))
                .bind(category)
                .bind(default_in)
                .bind(&after_customer)
                .fetch_all(pool)
                .await
        }
        Audience::Device {
            device_id,
            customer_id,
        } if !started => {
            sqlx::query_as(include_str!("../sql/audience_device.sql"))
                .bind(device_id.as_str())
                .bind(category)
                .bind(default_in)
                .bind(customer_id.as_ref().map(CustomerId::as_str))
                .fetch_all(pool)
                .await
        }
        Audience::Device { .. } => Ok(Vec::new()),
        Audience::Everyone | Audience::Category { .. } => {
            sqlx::query_as(include_str!("../sql/audience_everyone.sql"))
                .bind(&after)
                .bind(i64::from(limit))
                .bind(category)
                .bind(default_in)
                .bind(&after_customer)
                .fetch_all(pool)
                .await
        }
        Audience::Segment {
            commune,
            zone,
            contract,
            language,
        } => {
            sqlx::query_as(include_str!("../sql/audience_segment.sql"))
                .bind(commune.as_deref())
                .bind(zone.as_deref())
                .bind(contract.map(|c| c.as_str()))
                .bind(language.as_ref().map(|l| l.as_str()))
                .bind(&after)
                .bind(i64::from(limit))
                .bind(category)
                .bind(default_in)
                .bind(&after_customer)
                .fetch_all(pool)
                .await
        }
        // FCM expands these; the fan-out sends them as one job.
        Audience::Topic { .. } | Audience::Condition { .. } => Ok(Vec::new()),
    }
    .map_err(query_err("reading the audience"))?;
    rows.into_iter().map(recipient).collect()
}

/// For each device key (device id, customer), in the order given, the place of the first of
/// `ends` it does not come after, in the database's order of the keys (which pages follow):
/// the page it belongs to when pages end at `ends`. `ends.len()` for a key past the last end.
pub async fn pages_of(
    pool: &PgPool,
    keys: &[(&str, &str)],
    ends: &[(&str, &str)],
) -> Result<Vec<usize>, StoreError> {
    let (devices, customers): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let (end_devices, end_customers): (Vec<&str>, Vec<&str>) = ends.iter().copied().unzip();
    let places: Vec<i64> = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM unnest($3::text[], $4::text[]) AS e(d, c)
                 WHERE (e.d, e.c) < (k.d, k.c))
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(d, c, n)
         ORDER BY k.n",
    )
    .bind(devices)
    .bind(customers)
    .bind(end_devices)
    .bind(end_customers)
    .fetch_all(pool)
    .await
    .map_err(query_err("placing devices in their pages"))?;
    Ok(places.into_iter().map(|p| p as usize).collect())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded migrations are what `sqlx::migrate!` made of the same folder in earlier
    /// builds, checksums included: a database migrated by one build is accepted by the next.
    #[test]
    fn embedded_migrations_match_what_sqlx_reads_from_the_folder() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        // What `sqlx::migrate!` itself calls on the folder.
        let mut read: Vec<Migration> = sqlx::migrate::resolve_blocking(&folder)
            .expect("reading migrations/")
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        read.sort();
        let embedded = migrations();
        assert_eq!(embedded.len(), read.len());
        assert!(read.len() >= 11, "{}", read.len());
        for (e, r) in embedded.iter().zip(&read) {
            assert_eq!(
                (
                    e.version,
                    &e.description,
                    e.migration_type,
                    &e.checksum,
                    e.no_tx
                ),
                (
                    r.version,
                    &r.description,
                    r.migration_type,
                    &r.checksum,
                    r.no_tx
                ),
            );
            assert_eq!(e.sql.as_str(), r.sql.as_str());
        }
    }
}

//! Who an audience reaches: its active devices, a page at a time, for the dispatcher's fan-out.

use sqlx::PgPool;
use xibaar_core::{Audience, Category, CustomerId, DeviceId, FcmToken, Platform};

use crate::{StoreError, query_err};

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

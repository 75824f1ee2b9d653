//! One event other than a delivery outcome, folded into the read models inside the batch's
//! transaction. Outcomes are folded in bulk by [`crate::outcomes`].

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use xibaar_core::{
    Actor, Audience, Category, Content, Event, EventEnvelope, NotificationId, Priority,
    event::DeviceRegistered,
};

/// Applies `envelope` to the read models through `tx`.
pub(crate) async fn apply(
    tx: &mut PgConnection,
    envelope: &EventEnvelope,
) -> Result<(), sqlx::Error> {
    let at = envelope.meta.occurred_at;
    match &envelope.event {
        Event::DeviceRegistered(_) => devices_registered(tx, &[envelope]).await?,
        Event::DeviceTokenInvalidated(e) => {
            sqlx::query(include_str!("../sql/device_token_invalidated.sql"))
                .bind(e.device_id.as_str())
                .bind(e.token.as_str())
                .bind(at)
                .bind(e.customer_id.as_ref().map(xibaar_core::CustomerId::as_str))
                .execute(&mut *tx)
                .await?;
        }
        Event::NotificationAccepted(e) => {
            notification_row(
                tx,
                include_str!("../sql/notification_accepted.sql"),
                NotificationRow {
                    id: e.notification_id,
                    priority: e.priority,
                    content: &e.content,
                    audience: &e.audience,
                    requested_by: &envelope.meta.actor,
                    accepted_at: e.accepted_at,
                    send_at: e.delivery.send_at,
                    category: e.category,
                },
            )
            .await?;
        }
        Event::NotificationScheduled(e) => {
            notification_row(
                tx,
                include_str!("../sql/notification_scheduled.sql"),
                NotificationRow {
                    id: e.notification_id,
                    priority: e.priority,
                    content: &e.content,
                    audience: &e.audience,
                    requested_by: &envelope.meta.actor,
                    accepted_at: e.accepted_at,
                    send_at: Some(e.send_at),
                    category: e.category,
                },
            )
            .await?;
        }
        Event::NotificationFannedOut(e) => {
            sqlx::query(include_str!("../sql/notification_fanned_out.sql"))
                .bind(e.notification_id.0)
                .bind(i64::try_from(e.targeted).unwrap_or(i64::MAX))
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        Event::NotificationCanceled(e) => {
            notification_row(
                tx,
                include_str!("../sql/notification_canceled.sql"),
                NotificationRow {
                    id: e.notification_id,
                    priority: e.priority,
                    content: &e.content,
                    audience: &e.audience,
                    requested_by: &e.requested_by,
                    accepted_at: e.accepted_at,
                    send_at: e.delivery.send_at,
                    category: e.category,
                },
            )
            .await?;
        }
        Event::PreferencesChanged(e) => {
            for (category, opted_in) in &e.categories {
                sqlx::query(include_str!("../sql/preference_changed.sql"))
                    .bind(e.customer_id.as_str())
                    .bind(category.as_str())
                    .bind(*opted_in)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Event::CustomerAttributesChanged(e) => {
            let a = &e.attributes;
            sqlx::query(include_str!("../sql/customer_attributes_changed.sql"))
                .bind(e.customer_id.as_str())
                .bind(a.commune.as_deref())
                .bind(a.zone.as_deref())
                .bind(a.contract.map(|c| c.as_str()))
                .bind(a.language.as_ref().map(|l| l.as_str()))
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        // Folded in bulk with their neighbours (crate::outcomes).
        Event::DeliverySucceeded(_)
        | Event::DeliveriesSucceeded(_)
        | Event::DeliveryFailed(_)
        | Event::DeliveryExpired(_)
        | Event::TopicDelivery(_) => {}
        Event::DeviceRemoved(e) => {
            sqlx::query(include_str!("../sql/device_removed.sql"))
                .bind(e.device_id.as_str())
                .bind(e.customer_id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        Event::InboxItemRead(e) => {
            sqlx::query(include_str!("../sql/inbox_item_read.sql"))
                .bind(e.customer_id.as_str())
                .bind(e.notification_id.0)
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
        Event::InboxAllRead(e) => {
            sqlx::query(include_str!("../sql/inbox_all_read.sql"))
                .bind(e.customer_id.as_str())
                .bind(e.up_to_position)
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}

/// Applies a run of `device.registered` events (in stream order) in one round trip, each in
/// turn: a token belongs to one device, so registering it again (by another customer, or under
/// another device id) moves it, and the device that held it before no longer receives its
/// pushes.
pub(crate) async fn devices_registered(
    tx: &mut PgConnection,
    run: &[&EventEnvelope],
) -> Result<(), sqlx::Error> {
    let registrations: Vec<(&DeviceRegistered, DateTime<Utc>)> = run
        .iter()
        .filter_map(|envelope| match &envelope.event {
            Event::DeviceRegistered(e) => Some((e, envelope.meta.occurred_at)),
            _ => None,
        })
        .collect();
    let text = |field: fn(&DeviceRegistered) -> Option<&str>| -> Vec<Option<&str>> {
        registrations.iter().map(|(e, _)| field(e)).collect()
    };
    sqlx::query(
        "SELECT xibaar_devices_registered($1::text[], $2::text[], $3::text[], $4::text[], \
                                          $5::text[], $6::timestamptz[], $7::text[], $8::text[])",
    )
    .bind(text(|e| Some(e.device_id.as_str())))
    .bind(text(|e| Some(e.customer_id.as_str())))
    .bind(text(|e| Some(e.token.as_str())))
    .bind(text(|e| Some(e.platform.as_str())))
    .bind(text(|e| Some(e.app_id.as_str())))
    .bind(registrations.iter().map(|(_, at)| *at).collect::<Vec<_>>())
    .bind(text(|e| e.app_version.as_deref()))
    .bind(text(|e| e.locale.as_deref()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The columns a notification's row starts with, whichever event creates it.
struct NotificationRow<'a> {
    id: NotificationId,
    priority: Priority,
    content: &'a Content,
    audience: &'a Audience,
    requested_by: &'a Actor,
    accepted_at: chrono::DateTime<chrono::Utc>,
    send_at: Option<chrono::DateTime<chrono::Utc>>,
    category: Option<Category>,
}

/// Runs `sql` (an insert of the notifications row: id, priority, title, audience, requested by,
/// accepted at, send at, category, body, data, language, translations).
async fn notification_row(
    tx: &mut PgConnection,
    sql: &'static str,
    row: NotificationRow<'_>,
) -> Result<(), sqlx::Error> {
    let audience = serde_json::to_value(row.audience).unwrap_or_default();
    sqlx::query(sql)
        .bind(row.id.0)
        .bind(row.priority.as_str())
        .bind(&row.content.title)
        .bind(audience)
        .bind(row.requested_by.to_string())
        .bind(row.accepted_at)
        .bind(row.send_at)
        .bind(row.category.map(Category::as_str))
        .bind(&row.content.body)
        .bind(serde_json::to_value(&row.content.data).unwrap_or_default())
        .bind(row.content.language.as_ref().map(|l| l.as_str()))
        .bind(
            (!row.content.translations.is_empty())
                .then(|| serde_json::to_value(&row.content.translations).unwrap_or_default()),
        )
        .execute(&mut *tx)
        .await?;
    Ok(())
}

//! One event, folded into the read models inside the batch's transaction.

use sqlx::PgConnection;
use xibaar_core::{
    Actor, Audience, Category, Content, Event, EventEnvelope, NotificationId, Priority,
    event::{DeliveryFailed, DeliveryFailure, DeliverySucceeded, TopicOutcome},
};

/// Applies `envelope`, stored at `sequence`, to the read models through `tx`. Returns the
/// customer whose inbox gained an item, for the live stream to wake.
pub(crate) async fn apply(
    tx: &mut PgConnection,
    envelope: &EventEnvelope,
    sequence: i64,
) -> Result<Option<String>, sqlx::Error> {
    let at = envelope.meta.occurred_at;
    let mut inbox_of = None;
    match &envelope.event {
        Event::DeviceRegistered(e) => {
            sqlx::query(include_str!("../sql/device_registered.sql"))
                .bind(e.device_id.as_str())
                .bind(e.customer_id.as_str())
                .bind(e.token.as_str())
                .bind(e.platform.as_str())
                .bind(&e.app_id)
                .bind(at)
                .bind(e.app_version.as_deref())
                .bind(e.locale.as_deref())
                .execute(&mut *tx)
                .await?;
        }
        Event::DeviceTokenInvalidated(e) => {
            sqlx::query(include_str!("../sql/device_token_invalidated.sql"))
                .bind(e.device_id.as_str())
                .bind(e.token.as_str())
                .bind(at)
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
        Event::DeliverySucceeded(DeliverySucceeded {
            notification_id,
            device_id,
            customer_id,
            attempt,
            fcm_message_id,
            ..
        }) => {
            outcome(
                tx,
                notification_id.0,
                device_id.as_str(),
                Some(customer_id.as_str()),
                "succeeded",
                None,
                None,
                *attempt,
                Some(fcm_message_id),
                at,
            )
            .await?;
            inbox_of =
                inbox_item(tx, customer_id.as_str(), notification_id.0, sequence, at).await?;
        }
        Event::DeliveryExpired(e) => {
            outcome(
                tx,
                e.notification_id.0,
                e.device_id.as_str(),
                Some(e.customer_id.as_str()),
                "expired",
                None,
                None,
                e.attempt,
                None,
                at,
            )
            .await?;
            inbox_of = inbox_item(
                tx,
                e.customer_id.as_str(),
                e.notification_id.0,
                sequence,
                at,
            )
            .await?;
        }
        Event::DeliveryFailed(DeliveryFailed {
            notification_id,
            device_id,
            customer_id,
            attempt,
            reason,
            error_code,
            ..
        }) => {
            outcome(
                tx,
                notification_id.0,
                device_id.as_str(),
                Some(customer_id.as_str()),
                "failed",
                Some(*reason),
                error_code.as_deref(),
                *attempt,
                None,
                at,
            )
            .await?;
            inbox_of =
                inbox_item(tx, customer_id.as_str(), notification_id.0, sequence, at).await?;
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
        Event::TopicDelivery(e) => {
            let (result, reason, error_code, fcm_message_id) = match &e.outcome {
                TopicOutcome::Succeeded { fcm_message_id } => {
                    ("succeeded", None, None, Some(fcm_message_id.as_str()))
                }
                TopicOutcome::Failed {
                    reason, error_code, ..
                } => ("failed", Some(*reason), error_code.as_deref(), None),
                TopicOutcome::Expired { .. } => ("expired", None, None, None),
            };
            outcome(
                tx,
                e.notification_id.0,
                TOPIC_DEVICE,
                None,
                result,
                reason,
                error_code,
                e.attempt,
                fcm_message_id,
                at,
            )
            .await?;
        }
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
    Ok(inbox_of)
}

/// Puts the notification in the customer's inbox unless it is there already; the customer
/// when it is new.
async fn inbox_item(
    tx: &mut PgConnection,
    customer_id: &str,
    notification_id: uuid::Uuid,
    sequence: i64,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Option<String>, sqlx::Error> {
    let inserted = sqlx::query(include_str!("../sql/inbox_received.sql"))
        .bind(customer_id)
        .bind(notification_id)
        .bind(sequence)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    Ok((inserted.rows_affected() == 1).then(|| customer_id.to_owned()))
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
/// accepted at, send at, category, body, data).
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
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The device id of a topic or condition notification's single delivery row.
const TOPIC_DEVICE: &str = "~topic";

#[allow(clippy::too_many_arguments)]
async fn outcome(
    tx: &mut PgConnection,
    notification_id: uuid::Uuid,
    device_id: &str,
    customer_id: Option<&str>,
    outcome: &str,
    reason: Option<DeliveryFailure>,
    error_code: Option<&str>,
    attempt: u32,
    fcm_message_id: Option<&str>,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(include_str!("../sql/delivery_outcome.sql"))
        .bind(notification_id)
        .bind(device_id)
        .bind(customer_id)
        .bind(outcome)
        .bind(reason.map(DeliveryFailure::as_str))
        .bind(error_code)
        .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
        .bind(fcm_message_id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

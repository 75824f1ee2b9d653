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
            priority,
            device_id,
            customer_id,
            attempt,
            fcm_message_id,
            ..
        }) => {
            inbox_of = outcome(
                tx,
                Outcome {
                    notification_id: notification_id.0,
                    priority: *priority,
                    device_id: device_id.as_str(),
                    customer_id: Some(customer_id.as_str()),
                    result: "succeeded",
                    reason: None,
                    error_code: None,
                    attempt: *attempt,
                    fcm_message_id: Some(fcm_message_id),
                },
                at,
                sequence,
            )
            .await?;
        }
        Event::DeliveryExpired(e) => {
            inbox_of = outcome(
                tx,
                Outcome {
                    notification_id: e.notification_id.0,
                    priority: e.priority,
                    device_id: e.device_id.as_str(),
                    customer_id: Some(e.customer_id.as_str()),
                    result: "expired",
                    reason: None,
                    error_code: None,
                    attempt: e.attempt,
                    fcm_message_id: None,
                },
                at,
                sequence,
            )
            .await?;
        }
        Event::DeliveryFailed(DeliveryFailed {
            notification_id,
            priority,
            device_id,
            customer_id,
            attempt,
            reason,
            error_code,
            ..
        }) => {
            inbox_of = outcome(
                tx,
                Outcome {
                    notification_id: notification_id.0,
                    priority: *priority,
                    device_id: device_id.as_str(),
                    customer_id: Some(customer_id.as_str()),
                    result: "failed",
                    reason: Some(*reason),
                    error_code: error_code.as_deref(),
                    attempt: *attempt,
                    fcm_message_id: None,
                },
                at,
                sequence,
            )
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
                Outcome {
                    notification_id: e.notification_id.0,
                    priority: e.priority,
                    device_id: TOPIC_DEVICE,
                    customer_id: None,
                    result,
                    reason,
                    error_code,
                    attempt: e.attempt,
                    fcm_message_id,
                },
                at,
                sequence,
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

/// One final outcome of a notification on one device (or its topic).
struct Outcome<'a> {
    notification_id: uuid::Uuid,
    priority: Priority,
    device_id: &'a str,
    /// The device's owner; topic outcomes have none (FCM knows the recipients).
    customer_id: Option<&'a str>,
    result: &'a str,
    reason: Option<DeliveryFailure>,
    error_code: Option<&'a str>,
    attempt: u32,
    fcm_message_id: Option<&'a str>,
}

/// Records the outcome and, for a customer's device, puts the notification in their inbox
/// unless it is there already (at `sequence`, the event's place in the log). Returns the
/// customer whose inbox gained the item.
async fn outcome(
    tx: &mut PgConnection,
    o: Outcome<'_>,
    at: chrono::DateTime<chrono::Utc>,
    sequence: i64,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query(include_str!("../sql/delivery_outcome.sql"))
        .bind(o.notification_id)
        .bind(o.device_id)
        .bind(o.customer_id)
        .bind(o.result)
        .bind(o.reason.map(DeliveryFailure::as_str))
        .bind(o.error_code)
        .bind(i32::try_from(o.attempt).unwrap_or(i32::MAX))
        .bind(o.fcm_message_id)
        .bind(at)
        .bind(o.priority.as_str())
        .execute(&mut *tx)
        .await?;
    let Some(customer_id) = o.customer_id else {
        return Ok(None);
    };
    let inserted = sqlx::query(include_str!("../sql/inbox_received.sql"))
        .bind(customer_id)
        .bind(o.notification_id)
        .bind(sequence)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    Ok((inserted.rows_affected() == 1).then(|| customer_id.to_owned()))
}

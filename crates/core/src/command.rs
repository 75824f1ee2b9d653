//! Commands: requests for work, published by the api onto the per-priority command streams.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    event::Actor,
    ids::NotificationId,
    notification::DeliveryOptions,
    notification::{Audience, Category, Content},
    priority::Priority,
    subject,
};

pub use crate::page::NotificationPage;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[expect(
    clippy::large_enum_variant,
    reason = "a command is decoded once per stored message and dropped after its fan-out; \
              boxing the single notification would cost every api request an allocation"
)]
pub enum Command {
    SendNotification(SendNotification),
    /// Several notifications of one priority in one stored message: what a source reading
    /// thousands of rows publishes, so that JetStream stores a page, not a message per row.
    SendNotifications(NotificationPage),
}

/// "Tell this audience this content at this priority." Accepted by the api (HTTP 202) once
/// JetStream has stored it; from then on the pipeline owns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SendNotification {
    pub notification_id: NotificationId,
    pub priority: Priority,
    pub audience: Audience,
    pub content: Content,
    /// What the notification is about; customers opted out of it are skipped (an urgent outage
    /// notice reaches them regardless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(flatten)]
    pub delivery: DeliveryOptions,
    pub requested_by: Actor,
    #[serde(serialize_with = "crate::instant::serialize")]
    pub accepted_at: DateTime<Utc>,
}

impl SendNotification {
    /// The `Nats-Msg-Id` of this notification stored on its own ([`Command::msg_id`]).
    pub fn msg_id(&self) -> String {
        format!("send:{}", self.notification_id)
    }

    /// The subject of this notification stored on its own ([`Command::subject`]).
    pub fn subject(&self) -> String {
        subject::command(self.priority, self.notification_id)
    }
}

/// `type` (and `Xibaar-Type`) of a page of notifications.
pub const PAGE_TYPE: &str = "send_notifications";

/// The `Nats-Msg-Id` of a page: its first and last notifications and their count.
pub fn page_msg_id(first: NotificationId, last: NotificationId, count: usize) -> String {
    format!("page:{first}:{last}:{count}")
}

impl Command {
    /// A page of `notifications`: `None` when there are none or their priorities differ (a
    /// page lives in one priority's command stream).
    pub fn page(notifications: Vec<SendNotification>) -> Option<Self> {
        let page = Command::SendNotifications(NotificationPage { notifications });
        page.malformed().is_none().then_some(page)
    }

    /// Why a command (as decoded, not as built) cannot be carried out: a page without
    /// notifications, or whose notifications differ in priority.
    pub fn malformed(&self) -> Option<&'static str> {
        let notifications = self.notifications();
        let Some(first) = notifications.first() else {
            return Some("a page without notifications");
        };
        if notifications.iter().any(|n| n.priority != first.priority) {
            return Some("a page whose notifications differ in priority");
        }
        None
    }

    /// The notifications it asks for, in order.
    pub fn notifications(&self) -> &[SendNotification] {
        match self {
            Command::SendNotification(s) => std::slice::from_ref(s),
            Command::SendNotifications(p) => &p.notifications,
        }
    }

    /// The command's notification `id`, if it carries it.
    pub fn into_notification(self, id: NotificationId) -> Option<SendNotification> {
        match self {
            Command::SendNotification(s) => (s.notification_id == id).then_some(s),
            Command::SendNotifications(p) => p
                .notifications
                .into_iter()
                .find(|n| n.notification_id == id),
        }
    }

    /// A page is stored under its first notification's subject.
    pub fn subject(&self) -> String {
        let first = &self.notifications()[0];
        subject::command(first.priority, first.notification_id)
    }

    /// The `Nats-Msg-Id`: JetStream drops a second command with the same id inside the
    /// stream's duplicate window. A page's names its first and last notifications and their
    /// count, so the same rows paged the same way are the same page.
    pub fn msg_id(&self) -> String {
        match self {
            Command::SendNotification(s) => s.msg_id(),
            Command::SendNotifications(p) => {
                let first = &p.notifications[0];
                let last = &p.notifications[p.notifications.len() - 1];
                page_msg_id(
                    first.notification_id,
                    last.notification_id,
                    p.notifications.len(),
                )
            }
        }
    }

    /// `Xibaar-Type` of the stored message.
    pub fn type_name(&self) -> &'static str {
        match self {
            Command::SendNotification(_) => "send_notification",
            Command::SendNotifications(_) => PAGE_TYPE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notification::Content;

    fn send(i: u128, priority: Priority) -> SendNotification {
        SendNotification {
            notification_id: NotificationId(uuid::Uuid::from_u128(i)),
            priority,
            audience: Audience::Everyone,
            content: Content {
                title: "t".into(),
                body: "b".into(),
                ..Default::default()
            },
            category: None,
            idempotency_key: None,
            delivery: DeliveryOptions::default(),
            requested_by: Actor::system("test"),
            accepted_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_page_is_one_priority_named_by_its_ends_and_found_by_any_of_its_ids() {
        assert_eq!(Command::page(vec![]), None);
        assert_eq!(
            Command::page(vec![send(1, Priority::Normal), send(2, Priority::Low)]),
            None
        );
        let page = Command::page((1..=3).map(|i| send(i, Priority::Normal)).collect()).unwrap();
        assert_eq!(
            page.subject(),
            subject::command(Priority::Normal, NotificationId(uuid::Uuid::from_u128(1)))
        );
        assert_eq!(
            page.msg_id(),
            format!(
                "page:{}:{}:3",
                uuid::Uuid::from_u128(1),
                uuid::Uuid::from_u128(3)
            )
        );
        assert_eq!(page.type_name(), "send_notifications");
        let json = serde_json::to_value(&page).unwrap();
        assert_eq!(json["type"], "send_notifications");
        assert_eq!(serde_json::from_value::<Command>(json).unwrap(), page);
        let second = NotificationId(uuid::Uuid::from_u128(2));
        assert_eq!(
            page.clone()
                .into_notification(second)
                .map(|n| n.notification_id),
            Some(second)
        );
        assert_eq!(
            page.into_notification(NotificationId(uuid::Uuid::from_u128(9))),
            None
        );
    }
}

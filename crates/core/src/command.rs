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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    SendNotification(SendNotification),
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
    pub accepted_at: DateTime<Utc>,
}

impl Command {
    pub fn subject(&self) -> String {
        match self {
            Command::SendNotification(s) => subject::command(s.priority, s.notification_id),
        }
    }

    /// The `Nats-Msg-Id`: JetStream drops a second command with the same id inside the
    /// stream's duplicate window.
    pub fn msg_id(&self) -> String {
        match self {
            Command::SendNotification(s) => format!("send:{}", s.notification_id),
        }
    }
}

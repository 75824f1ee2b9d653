//! The `message` object of `messages:send`.

use serde::Serialize;
use xibaar_core::{
    Content, DeliveryJob, DeliveryOptions, DeliveryPage, NotificationId, Priority, TopicJob,
    event::FcmTarget, notification::NOTIFICATION_ID_DATA_KEY,
};

/// Exactly one of FCM's `token`, `topic` or `condition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Token(String),
    Topic(String),
    Condition(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    #[serde(flatten)]
    pub target: Target,
    pub notification: Notification,
    pub data: std::collections::BTreeMap<String, String>,
    pub android: AndroidConfig,
    pub apns: ApnsConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub title: String,
    pub body: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AndroidConfig {
    /// `HIGH` wakes the device; FCM may deprioritise apps that overuse it, so only urgent and
    /// high notifications ask for it.
    pub priority: &'static str,
    /// Seconds FCM may hold the message, as `"<n>s"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApnsConfig {
    pub headers: ApnsHeaders,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApnsHeaders {
    #[serde(rename = "apns-priority")]
    pub priority: &'static str,
    /// Unix time after which APNs drops the message.
    #[serde(rename = "apns-expiration", skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    #[serde(rename = "apns-collapse-id", skip_serializing_if = "Option::is_none")]
    pub collapse_id: Option<String>,
}

impl Message {
    pub fn for_job(job: &DeliveryJob) -> Self {
        Self::build(
            Target::Token(job.token.as_str().to_owned()),
            job.notification_id,
            job.priority,
            &job.content,
            &job.delivery,
        )
    }

    /// Device `index` of a page; `None` past its end.
    pub fn for_page_device(page: &DeliveryPage, index: usize) -> Option<Self> {
        let device = page.devices.get(index)?;
        Some(Self::build(
            Target::Token(device.token.as_str().to_owned()),
            page.notification_id,
            page.priority,
            page.content_of(index)?,
            &page.delivery,
        ))
    }

    pub fn for_topic_job(job: &TopicJob) -> Self {
        let target = match &job.target {
            FcmTarget::Topic { topic } => Target::Topic(topic.clone()),
            FcmTarget::Condition { condition } => Target::Condition(condition.clone()),
        };
        Self::build(
            target,
            job.notification_id,
            job.priority,
            &job.content,
            &job.delivery,
        )
    }

    /// Urgent and high notifications: they wake the device and go first at the rate limiter.
    pub fn is_high_priority(&self) -> bool {
        self.android.priority == "HIGH"
    }

    fn build(
        target: Target,
        notification_id: NotificationId,
        priority: Priority,
        content: &Content,
        delivery: &DeliveryOptions,
    ) -> Self {
        let high = matches!(priority, Priority::Urgent | Priority::High);
        let mut data = content.data.clone();
        data.insert(
            NOTIFICATION_ID_DATA_KEY.to_owned(),
            notification_id.to_string(),
        );
        Self {
            target,
            notification: Notification {
                title: content.title.clone(),
                body: content.body.clone(),
                image: content.image_url.clone(),
            },
            data,
            android: AndroidConfig {
                priority: if high { "HIGH" } else { "NORMAL" },
                ttl: delivery.expires_at.map(|at| {
                    let left = (at - chrono::Utc::now()).num_seconds().max(0);
                    format!("{left}s")
                }),
                collapse_key: delivery.collapse_key.clone(),
            },
            apns: ApnsConfig {
                headers: ApnsHeaders {
                    priority: if high { "10" } else { "5" },
                    expiration: delivery.expires_at.map(|at| at.timestamp().to_string()),
                    collapse_id: delivery.collapse_key.clone(),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_one_top_level_field() {
        let job = TopicJob {
            notification_id: NotificationId::generate(),
            priority: Priority::Urgent,
            app_id: "app".into(),
            target: FcmTarget::Condition {
                condition: "'a' in topics".into(),
            },
            content: Content {
                title: "t".into(),
                body: "b".into(),
                data: Default::default(),
                image_url: None,
                ..Default::default()
            },
            delivery: DeliveryOptions::default(),
            correlation_id: "c".into(),
            accepted_at: chrono::Utc::now(),
        };
        let json = serde_json::to_value(Message::for_topic_job(&job)).unwrap();
        assert_eq!(json["condition"], "'a' in topics");
        assert!(json.get("token").is_none() && json.get("topic").is_none());
        assert_eq!(json["android"]["priority"], "HIGH");
    }
}

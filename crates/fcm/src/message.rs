//! The `message` object of `messages:send`.

use serde::Serialize;
use xibaar_core::{DeliveryJob, Priority, notification::NOTIFICATION_ID_DATA_KEY};

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub token: String,
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
        let high = matches!(job.priority, Priority::Urgent | Priority::High);
        let mut data = job.content.data.clone();
        data.insert(
            NOTIFICATION_ID_DATA_KEY.to_owned(),
            job.notification_id.to_string(),
        );
        Self {
            token: job.token.as_str().to_owned(),
            notification: Notification {
                title: job.content.title.clone(),
                body: job.content.body.clone(),
                image: job.content.image_url.clone(),
            },
            data,
            android: AndroidConfig {
                priority: if high { "HIGH" } else { "NORMAL" },
                ttl: job.delivery.expires_at.map(|at| {
                    let left = (at - chrono::Utc::now()).num_seconds().max(0);
                    format!("{left}s")
                }),
                collapse_key: job.delivery.collapse_key.clone(),
            },
            apns: ApnsConfig {
                headers: ApnsHeaders {
                    priority: if high { "10" } else { "5" },
                    expiration: job.delivery.expires_at.map(|at| at.timestamp().to_string()),
                    collapse_id: job.delivery.collapse_key.clone(),
                },
            },
        }
    }
}

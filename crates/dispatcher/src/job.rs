//! What the sender records for a job: the [`Job`] trait over device and topic jobs, and the
//! outcome events of one device ([`Recipient`]), shared with pages.

use chrono::Utc;
use xibaar_core::{
    DeliveryJob, DeliveryOptions, Event, TopicJob,
    event::{
        DeliveryExpired, DeliveryFailed, DeliveryFailure, DeliverySucceeded,
        DeviceTokenInvalidated, TopicDelivery, TopicOutcome,
    },
};
use xibaar_fcm::Message;

/// What the sender needs of a job, device or topic: its marker key and the events it records
/// (public so that the dispatcher benchmark's JetStream floor writes exactly what the sender
/// writes).
pub trait Job: serde::de::DeserializeOwned {
    const KIND: &'static str;
    /// Whether the job names a device's token (a topic's does not).
    const HAS_TOKEN: bool;
    fn app_id(&self) -> &str;
    fn delivery(&self) -> &DeliveryOptions;
    fn correlation_id(&self) -> &str;
    /// Its key in `XIBAAR_SENT`.
    fn marker(&self) -> String;
    fn message(&self) -> Message;
    fn succeeded(&self, attempt: u32, fcm_message_id: String) -> Event;
    fn failed(
        &self,
        attempt: u32,
        reason: DeliveryFailure,
        error_code: Option<&str>,
        detail: &str,
    ) -> Event;
    fn expired(&self, attempt: u32) -> Event;
    /// The event for a token FCM no longer knows; `None` when the job has no token.
    fn token_invalidated(&self, error_code: &str) -> Option<Event>;
}

impl Job for DeliveryJob {
    const KIND: &'static str = "delivery job";
    const HAS_TOKEN: bool = true;

    fn app_id(&self) -> &str {
        &self.app_id
    }
    fn delivery(&self) -> &DeliveryOptions {
        &self.delivery
    }
    fn correlation_id(&self) -> &str {
        &self.correlation_id
    }
    fn marker(&self) -> String {
        self.marker_key()
    }
    fn message(&self) -> Message {
        Message::for_job(self)
    }
    fn succeeded(&self, attempt: u32, fcm_message_id: String) -> Event {
        recipient(self).succeeded(attempt, fcm_message_id)
    }
    fn failed(
        &self,
        attempt: u32,
        reason: DeliveryFailure,
        error_code: Option<&str>,
        detail: &str,
    ) -> Event {
        recipient(self).failed(attempt, reason, error_code, detail)
    }
    fn expired(&self, attempt: u32) -> Event {
        recipient(self).expired(attempt)
    }
    fn token_invalidated(&self, error_code: &str) -> Option<Event> {
        Some(recipient(self).token_invalidated(&self.token, error_code))
    }
}

/// The device a job of one device is for.
fn recipient(job: &DeliveryJob) -> Recipient<'_> {
    Recipient {
        notification_id: job.notification_id,
        priority: job.priority,
        device_id: &job.device_id,
        customer_id: &job.customer_id,
    }
}

/// One device of one notification: what its outcome events name.
pub(crate) struct Recipient<'a> {
    pub notification_id: xibaar_core::NotificationId,
    pub priority: xibaar_core::Priority,
    pub device_id: &'a xibaar_core::DeviceId,
    pub customer_id: &'a xibaar_core::CustomerId,
}

impl Recipient<'_> {
    pub(crate) fn succeeded(&self, attempt: u32, fcm_message_id: String) -> Event {
        Event::DeliverySucceeded(DeliverySucceeded {
            notification_id: self.notification_id,
            priority: self.priority,
            device_id: self.device_id.clone(),
            customer_id: self.customer_id.clone(),
            attempt,
            fcm_message_id,
        })
    }

    pub(crate) fn failed(
        &self,
        attempt: u32,
        reason: DeliveryFailure,
        error_code: Option<&str>,
        detail: &str,
    ) -> Event {
        Event::DeliveryFailed(DeliveryFailed {
            notification_id: self.notification_id,
            priority: self.priority,
            device_id: self.device_id.clone(),
            customer_id: self.customer_id.clone(),
            attempt,
            reason,
            error_code: error_code.map(str::to_owned),
            detail: detail.to_owned(),
        })
    }

    pub(crate) fn expired(&self, attempt: u32) -> Event {
        Event::DeliveryExpired(DeliveryExpired {
            notification_id: self.notification_id,
            priority: self.priority,
            device_id: self.device_id.clone(),
            customer_id: self.customer_id.clone(),
            attempt,
            expired_at: Utc::now(),
        })
    }

    pub(crate) fn token_invalidated(
        &self,
        token: &xibaar_core::FcmToken,
        error_code: &str,
    ) -> Event {
        Event::DeviceTokenInvalidated(DeviceTokenInvalidated {
            device_id: self.device_id.clone(),
            customer_id: Some(self.customer_id.clone()),
            token: token.clone(),
            error_code: error_code.to_owned(),
        })
    }
}

fn topic_outcome(job: &TopicJob, attempt: u32, outcome: TopicOutcome) -> Event {
    Event::TopicDelivery(TopicDelivery {
        notification_id: job.notification_id,
        priority: job.priority,
        app_id: job.app_id.clone(),
        target: job.target.clone(),
        attempt,
        outcome,
    })
}

impl Job for TopicJob {
    const KIND: &'static str = "topic job";
    const HAS_TOKEN: bool = false;

    fn app_id(&self) -> &str {
        &self.app_id
    }
    fn delivery(&self) -> &DeliveryOptions {
        &self.delivery
    }
    fn correlation_id(&self) -> &str {
        &self.correlation_id
    }
    fn marker(&self) -> String {
        format!("{}.~topic", self.notification_id)
    }
    fn message(&self) -> Message {
        Message::for_topic_job(self)
    }
    fn succeeded(&self, attempt: u32, fcm_message_id: String) -> Event {
        topic_outcome(self, attempt, TopicOutcome::Succeeded { fcm_message_id })
    }
    fn failed(
        &self,
        attempt: u32,
        reason: DeliveryFailure,
        error_code: Option<&str>,
        detail: &str,
    ) -> Event {
        topic_outcome(
            self,
            attempt,
            TopicOutcome::Failed {
                reason,
                error_code: error_code.map(str::to_owned),
                detail: detail.to_owned(),
            },
        )
    }
    fn expired(&self, attempt: u32) -> Event {
        topic_outcome(
            self,
            attempt,
            TopicOutcome::Expired {
                expired_at: Utc::now(),
            },
        )
    }
    fn token_invalidated(&self, _: &str) -> Option<Event> {
        None
    }
}

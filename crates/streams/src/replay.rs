//! Reading the event log back for auditors: every event of `XIBAAR_EVENTS` that matches a
//! filter, in stream order, as stored. An ordered consumer (no state on the server, nothing to
//! clean up) reads from the start time or sequence 1 up to the head as it was when the replay
//! began, so a replay of a busy stream ends.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::Value;
use xibaar_core::NotificationId;

use crate::names;

/// Which events a replay yields. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Stored at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Stored at or before this instant.
    pub until: Option<DateTime<Utc>>,
    pub notification: Option<NotificationId>,
    /// Events about this customer: their devices, preferences and deliveries, and
    /// notifications that name them.
    pub customer: Option<String>,
    pub device: Option<String>,
    /// Event types such as `delivery.failed`.
    pub types: Vec<String>,
    /// Stored at or after this stream sequence (where an archive's part of a replay ends).
    pub from_sequence: Option<u64>,
}

/// One stored event.
#[derive(Debug, Clone)]
pub struct Replayed {
    pub sequence: u64,
    /// The envelope exactly as stored.
    pub raw: bytes::Bytes,
    /// The envelope decoded, when the filter had to look inside it.
    decoded: Option<Value>,
}

impl Replayed {
    /// `decoded`: the envelope as the filter decoded it, if it had to.
    pub fn new(sequence: u64, raw: bytes::Bytes, decoded: Option<Value>) -> Self {
        Self {
            sequence,
            raw,
            decoded,
        }
    }

    /// The envelope as JSON (`null` if it is not JSON).
    pub fn into_event(self) -> Value {
        self.decoded.unwrap_or_else(|| decode(&self.raw))
    }
}

/// An envelope as JSON, `null` if it is not JSON.
fn decode(raw: &[u8]) -> Value {
    serde_json::from_slice(raw).unwrap_or(Value::Null)
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading {stream}: {0}", stream = names::EVENTS)]
    Nats(String),
}

fn nats(e: impl std::fmt::Display) -> ReplayError {
    ReplayError::Nats(e.to_string())
}

impl Filter {
    /// Server-side subject filters: the narrowest the filter allows.
    pub fn subjects(&self) -> Vec<String> {
        if let Some(id) = self.notification {
            return vec![
                format!("xibaar.evt.notification.{id}.>"),
                format!("xibaar.evt.delivery.{id}.>"),
            ];
        }
        if !self.types.is_empty() {
            return self
                .types
                .iter()
                .map(|t| {
                    let (aggregate, name) = t.split_once('.').unwrap_or((t, "*"));
                    format!("xibaar.evt.{aggregate}.*.{name}")
                })
                .collect();
        }
        if let Some(device) = &self.device {
            return vec![
                format!("xibaar.evt.device.{device}.>"),
                "xibaar.evt.delivery.>".to_owned(),
            ];
        }
        vec![xibaar_core::subject::EVENTS_ALL.to_owned()]
    }

    /// Whether a message stored on `subject` at `stored_at` is one the filter asks for,
    /// judged by its subject and time alone (what the server checks for a stream replay).
    pub fn selects(&self, subject: &str, stored_at: DateTime<Utc>) -> bool {
        self.since.is_none_or(|since| stored_at >= since)
            && self.until.is_none_or(|until| stored_at <= until)
            && self
                .subjects()
                .iter()
                .any(|pattern| subject_matches(pattern, subject))
    }

    /// Whether an event must be decoded to know whether it [`Filter::matches`]: a replay of
    /// everything copies the stored bytes without decoding them.
    fn looks_inside(&self) -> bool {
        !self.types.is_empty()
            || self.notification.is_some()
            || self.device.is_some()
            || self.customer.is_some()
    }

    /// Decodes `raw` if the filter must look inside it; whether it matches, and the decoded
    /// envelope.
    pub fn check(&self, raw: &[u8]) -> (bool, Option<Value>) {
        if !self.looks_inside() {
            return (true, None);
        }
        let event = decode(raw);
        (self.matches(&event), Some(event))
    }

    /// The checks subjects cannot express.
    pub fn matches(&self, event: &Value) -> bool {
        let data = &event["data"];
        let event_type = event["type"].as_str().unwrap_or_default();
        if !self.types.is_empty() && !self.types.iter().any(|t| t == event_type) {
            return false;
        }
        if let Some(id) = self.notification
            && data["notification_id"].as_str() != Some(id.to_string().as_str())
        {
            return false;
        }
        let is = |value: &Value, wanted: &Option<String>| {
            wanted
                .as_deref()
                .is_none_or(|wanted| value.as_str() == Some(wanted))
        };
        // A page of successes (`delivery.page_succeeded`) is about each of its devices: one of
        // them must be the device and belong to the customer asked for, not one each.
        if let Some(devices) = data["devices"].as_array() {
            return devices.iter().any(|d| {
                is(&d["device_id"], &self.device) && is(&d["customer_id"], &self.customer)
            });
        }
        let names_customer = |customer: &String| {
            data["audience"]["customer_ids"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|c| c.as_str() == Some(customer.as_str())))
        };
        is(&data["device_id"], &self.device)
            && self.customer.as_ref().is_none_or(|customer| {
                data["customer_id"].as_str() == Some(customer.as_str()) || names_customer(customer)
            })
    }
}

/// Every message of `XIBAAR_EVENTS` from `start_sequence` on, in order, through an ordered
/// consumer: no state on the server, nothing to clean up. For readers that keep their own
/// position (the projector's checkpoint, the archiver's archived position).
pub async fn events_from(
    js: &jetstream::Context,
    start_sequence: u64,
) -> Result<jetstream::consumer::pull::Ordered, ReplayError> {
    js.get_stream(names::EVENTS)
        .await
        .map_err(nats)?
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
            ..Default::default()
        })
        .await
        .map_err(|e| ReplayError::Nats(format!("creating an ordered consumer: {e}")))?
        .messages()
        .await
        .map_err(nats)
}

/// Whether `subject` matches a NATS subject filter (`*` one token, `>` the rest). Written
/// here because async-nats keeps its matcher private.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for wanted in pattern.split('.') {
        match (wanted, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (w, Some(t)) if w == t => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// How long a replay waits for the next event before it gives up.
const IDLE: Duration = Duration::from_secs(10);

/// Calls `each` with every matching event in stream order, and `progress` now and then with
/// (events read, last sequence read, head) for long replays. Returns how many matched.
pub async fn replay(
    js: &jetstream::Context,
    filter: &Filter,
    mut each: impl FnMut(Replayed) -> std::io::Result<()>,
    mut progress: impl FnMut(u64, u64, u64),
) -> Result<u64, ReplayError> {
    let stream = js.get_stream(names::EVENTS).await.map_err(nats)?;
    let head = stream.get_info().await.map_err(nats)?.state.last_sequence;
    let deliver_policy = match (filter.from_sequence, filter.since) {
        (Some(start_sequence), _) => DeliverPolicy::ByStartSequence { start_sequence },
        (None, Some(since)) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(
                since.timestamp_nanos_opt().unwrap_or(0),
            ))
            .map_err(nats)?,
        },
        (None, None) => DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects: filter.subjects(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(0);
    }
    let mut messages = consumer.messages().await.map_err(nats)?;
    let (mut read, mut matched) = (0u64, 0u64);
    let mut last_report = tokio::time::Instant::now();
    // One timer for the whole replay, moved on at most once a second (so it fires after 10 to
    // 11 s without an event), instead of a timer set and cancelled for every event.
    let idle = tokio::time::sleep(IDLE);
    tokio::pin!(idle);
    let mut idle_moved = tokio::time::Instant::now();
    loop {
        let message = tokio::select! {
            biased;
            message = messages.next() => match message {
                Some(m) => m.map_err(nats)?,
                None => break,
            },
            _ = &mut idle => return Err(ReplayError::Nats("no event arrived for 10 s".into())),
        };
        if idle_moved.elapsed() >= Duration::from_secs(1) {
            idle_moved = tokio::time::Instant::now();
            idle.as_mut().reset(idle_moved + IDLE);
        }
        let info = message.info().map_err(nats)?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let stored_at = info.published.unix_timestamp_nanos();
        read += 1;
        if sequence > head {
            break;
        }
        // Starting by sequence, the start time is checked here.
        let too_early = filter
            .since
            .is_some_and(|since| stored_at < i128::from(since.timestamp_nanos_opt().unwrap_or(0)));
        // Time ranges are in stream time, like the start: the stream is ordered by it.
        let too_late = filter.until.is_some_and(|until| {
            stored_at > i128::from(until.timestamp_nanos_opt().unwrap_or(i64::MAX))
        });
        if too_late {
            break;
        }
        if !too_early {
            let (selected, decoded) = filter.check(&message.payload);
            if selected {
                matched += 1;
                each(Replayed::new(sequence, message.payload.clone(), decoded)).map_err(nats)?;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            progress(read, sequence, head);
            last_report = tokio::time::Instant::now();
        }
        if pending == 0 || sequence == head {
            break;
        }
    }
    Ok(matched)
}

#[cfg(test)]
mod tests {
    use super::{Filter, subject_matches};

    #[test]
    fn a_page_matches_a_device_and_customer_only_through_one_of_its_devices() {
        let page = serde_json::json!({
            "type": "delivery.page_succeeded",
            "data": {"devices": [
                {"device_id": "d1", "customer_id": "c1"},
                {"device_id": "d2", "customer_id": "c2"},
            ]},
        });
        let filter = |device: Option<&str>, customer: Option<&str>| Filter {
            device: device.map(str::to_owned),
            customer: customer.map(str::to_owned),
            ..Filter::default()
        };
        assert!(filter(Some("d1"), Some("c1")).matches(&page));
        assert!(filter(Some("d2"), None).matches(&page));
        assert!(filter(None, Some("c2")).matches(&page));
        assert!(!filter(Some("d1"), Some("c2")).matches(&page));
        assert!(!filter(Some("d3"), None).matches(&page));

        let single = serde_json::json!({
            "type": "delivery.succeeded",
            "data": {"device_id": "d1", "customer_id": "c1"},
        });
        assert!(filter(Some("d1"), Some("c1")).matches(&single));
        assert!(!filter(Some("d1"), Some("c2")).matches(&single));
        let notification = serde_json::json!({
            "type": "notification.accepted",
            "data": {"audience": {"customer_ids": ["c1", "c2"]}},
        });
        assert!(filter(None, Some("c2")).matches(&notification));
        assert!(!filter(None, Some("c3")).matches(&notification));
    }

    #[test]
    fn subject_filters_match_as_nats_matches_them() {
        assert!(subject_matches(
            "xibaar.evt.>",
            "xibaar.evt.delivery.n.d.succeeded"
        ));
        assert!(!subject_matches("xibaar.evt.>", "xibaar.evt"));
        assert!(subject_matches(
            "xibaar.evt.*.*.failed",
            "xibaar.evt.delivery.n.failed"
        ));
        assert!(!subject_matches(
            "xibaar.evt.*.*.failed",
            "xibaar.evt.delivery.n.d.failed"
        ));
        assert!(!subject_matches(
            "xibaar.evt.device.d1.>",
            "xibaar.evt.device.d2.registered"
        ));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
    }
}

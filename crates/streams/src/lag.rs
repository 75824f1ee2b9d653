//! How far each Xibaar consumer is behind its stream: the figures of `nats consumer report`
//! plus the age of the oldest message not yet acknowledged, which is what an operator means by
//! "behind".

use std::time::Duration;

use async_nats::jetstream;
use serde::Serialize;

use crate::Definitions;

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ConsumerLag {
    pub stream: String,
    pub consumer: String,
    /// Messages matching the consumer's filter not yet delivered.
    pub pending: u64,
    /// Delivered and not yet acknowledged.
    pub ack_pending: u64,
    /// Delivered more than once and not yet acknowledged.
    pub redelivered: u64,
    /// Pull requests waiting for messages (a consumer being read has at least one).
    pub waiting: u64,
    /// Stream sequence below which everything is acknowledged.
    pub ack_floor: u64,
    /// Last stream sequence delivered.
    pub delivered: u64,
    /// The stream's last sequence.
    pub last_sequence: u64,
    /// Age of the oldest message delivered-but-unacknowledged or not yet delivered; 0 when the
    /// consumer has caught up.
    pub seconds_behind: f64,
    /// JetStream reports the consumer paused.
    pub paused: bool,
}

impl ConsumerLag {
    /// Messages the consumer still has to finish.
    pub fn backlog(&self) -> u64 {
        self.pending + self.ack_pending
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LagError {
    #[error("stream {stream}: {source}")]
    Stream {
        stream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("consumer {stream}/{consumer}: {source}")]
    Consumer {
        stream: String,
        consumer: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The lag of every durable consumer in `definitions`, in definition order.
pub async fn consumer_lag(
    js: &jetstream::Context,
    definitions: &Definitions,
) -> Result<Vec<ConsumerLag>, LagError> {
    let mut report = Vec::new();
    for def in definitions
        .streams
        .iter()
        .filter(|d| !d.consumers.is_empty())
    {
        let name = def.config.name.clone();
        let stream_err = |e: Box<dyn std::error::Error + Send + Sync>| LagError::Stream {
            stream: name.clone(),
            source: e,
        };
        let stream = js
            .get_stream(&name)
            .await
            .map_err(|e| stream_err(e.into()))?;
        let state = stream
            .get_info()
            .await
            .map_err(|e| stream_err(e.into()))?
            .state;
        for consumer in &def.consumers {
            let info =
                stream
                    .consumer_info(consumer.name())
                    .await
                    .map_err(|e| LagError::Consumer {
                        stream: name.clone(),
                        consumer: consumer.name().to_owned(),
                        source: e.into(),
                    })?;
            let unfinished = info.num_pending + info.num_ack_pending as u64;
            let seconds_behind = if unfinished == 0 {
                0.0
            } else {
                oldest_age(&stream, &info)
                    .await
                    .map_or(0.0, |d| d.as_secs_f64())
            };
            report.push(ConsumerLag {
                stream: name.clone(),
                consumer: info.name.clone(),
                pending: info.num_pending,
                ack_pending: info.num_ack_pending as u64,
                redelivered: info.num_redelivered as u64,
                waiting: info.num_waiting as u64,
                ack_floor: info.ack_floor.stream_sequence,
                delivered: info.delivered.stream_sequence,
                last_sequence: state.last_sequence,
                seconds_behind,
                paused: info.paused,
            });
        }
    }
    Ok(report)
}

/// The age of the first message after the ack floor that the consumer's filter matches.
async fn oldest_age(
    stream: &jetstream::stream::Stream,
    info: &jetstream::consumer::Info,
) -> Option<Duration> {
    let filter = if info.config.filter_subject.is_empty() {
        ">".to_owned()
    } else {
        info.config.filter_subject.clone()
    };
    let message = stream
        .direct_get_next_for_subject(filter, Some(info.ack_floor.stream_sequence + 1))
        .await
        .ok()?;
    let stored_nanos = message.time.unix_timestamp_nanos();
    let now_nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos() as i128;
    let age = u64::try_from((now_nanos - stored_nanos).max(0)).unwrap_or(u64::MAX);
    Some(Duration::from_nanos(age))
}

/// Publishes the report as gauges named like the NATS Prometheus exporter's
/// (`jetstream_consumer_num_pending{stream_name, consumer_name}` …) plus
/// `xibaar_consumer_seconds_behind`.
pub fn export(report: &[ConsumerLag]) {
    for lag in report {
        let labels = [
            ("stream_name", lag.stream.clone()),
            ("consumer_name", lag.consumer.clone()),
        ];
        metrics::gauge!("jetstream_consumer_num_pending", &labels).set(lag.pending as f64);
        metrics::gauge!("jetstream_consumer_num_ack_pending", &labels).set(lag.ack_pending as f64);
        metrics::gauge!("jetstream_consumer_num_redelivered", &labels).set(lag.redelivered as f64);
        metrics::gauge!("jetstream_consumer_num_waiting", &labels).set(lag.waiting as f64);
        metrics::gauge!("jetstream_consumer_ack_floor_stream_seq", &labels)
            .set(lag.ack_floor as f64);
        metrics::gauge!("jetstream_consumer_delivered_stream_seq", &labels)
            .set(lag.delivered as f64);
        metrics::gauge!("xibaar_consumer_seconds_behind", &labels).set(lag.seconds_behind);
    }
}

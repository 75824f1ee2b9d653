//! `xibaar dlq list|show|retry|drop`: what was dead-lettered and why, and putting it back.
//!
//! A retry republishes the message to the subject it was taken from, under a new
//! `Nats-Msg-Id` (the original one may still be inside the duplicate window), and only then
//! removes it from `XIBAAR_DLQ`. For a delivery job the failed attempts recorded in
//! `XIBAAR_SENT` are cleared first, so the job gets a fresh set of attempts; a job whose push
//! FCM has accepted after all is not retried.

use anyhow::{Context, bail};
use async_nats::{
    HeaderMap,
    jetstream::{self, stream::Stream},
};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::Value;
use xibaar_config::Config;
use xibaar_core::{
    DeliveryJob, TopicJob,
    job::{DEVICE_JOB_TYPE, TOPIC_JOB_TYPE},
};
use xibaar_dispatcher::Marker;
use xibaar_streams::{dlq, names};

use crate::startup;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Dead letters, oldest first.
    List {
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One dead letter with its headers and payload.
    Show { sequence: u64 },
    /// Republish to the original subject with fresh attempts, then remove from the DLQ.
    Retry(Selection),
    /// Remove from the DLQ for good.
    Drop(Selection),
}

#[derive(Args)]
pub struct Selection {
    /// DLQ sequences (from `xibaar dlq list`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub sequences: Vec<u64>,
    /// Every dead letter.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Serialize)]
struct Entry {
    sequence: u64,
    parked_at: String,
    reason: String,
    original_subject: String,
    original_stream: String,
    original_sequence: String,
    kind: String,
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

async fn dlq_stream(config: &Config) -> anyhow::Result<(jetstream::Context, Stream)> {
    let client = startup::connect_nats(config, "xibaar-dlq").await?;
    let js = startup::jetstream(client);
    let stream = js
        .get_stream(names::DLQ)
        .await
        .with_context(|| format!("opening {}", names::DLQ))?;
    Ok((js, stream))
}

/// The dead letters, oldest first, at most `limit`.
async fn entries(
    stream: &Stream,
    limit: usize,
) -> anyhow::Result<Vec<jetstream::message::StreamMessage>> {
    let mut out = Vec::new();
    let mut next = 1;
    while out.len() < limit {
        match stream
            .direct_get_next_for_subject(xibaar_core::subject::DLQ_ALL, Some(next))
            .await
        {
            Ok(message) => {
                next = message.sequence + 1;
                out.push(message);
            }
            Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {
                break;
            }
            Err(e) => return Err(e).context("reading the DLQ"),
        }
    }
    Ok(out)
}

fn entry(message: &jetstream::message::StreamMessage) -> Entry {
    let h = &message.headers;
    Entry {
        sequence: message.sequence,
        parked_at: chrono::DateTime::from_timestamp_nanos(
            i64::try_from(message.time.unix_timestamp_nanos()).unwrap_or(i64::MAX),
        )
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        reason: header(h, dlq::REASON),
        original_subject: header(h, dlq::ORIGINAL_SUBJECT),
        original_stream: header(h, dlq::ORIGINAL_STREAM),
        original_sequence: header(h, dlq::ORIGINAL_SEQUENCE),
        kind: header(h, dlq::ORIGINAL_TYPE),
    }
}

pub async fn run(config: &Config, command: DlqCommand) -> anyhow::Result<()> {
    let (js, stream) = dlq_stream(config).await?;
    match command {
        DlqCommand::List { json, limit } => {
            let listed: Vec<Entry> = entries(&stream, limit).await?.iter().map(entry).collect();
            if json {
                println!("{}", serde_json::to_string(&listed)?);
            } else if listed.is_empty() {
                println!("{} is empty", names::DLQ);
            } else {
                let mut table = comfy_table::Table::new();
                table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
                table.set_header(["seq", "parked at", "kind", "original subject", "reason"]);
                for e in listed {
                    table.add_row([
                        e.sequence.to_string(),
                        e.parked_at,
                        e.kind,
                        e.original_subject,
                        e.reason,
                    ]);
                }
                println!("{table}");
            }
        }
        DlqCommand::Show { sequence } => {
            let message = get(&stream, sequence).await?;
            let mut headers = serde_json::Map::new();
            for (name, values) in message.headers.iter() {
                let values: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
                headers.insert(name.to_string(), values.join(", ").into());
            }
            let payload = serde_json::from_slice::<Value>(&message.payload).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&message.payload).into_owned())
            });
            let shown = serde_json::json!({
                "entry": entry(&message),
                "headers": headers,
                "payload": payload,
            });
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        DlqCommand::Retry(selection) => {
            let sent = js
                .get_key_value(names::SENT_BUCKET)
                .await
                .context("opening the sent-marker bucket")?;
            for message in selected(&stream, &selection).await? {
                match retry(&js, &sent, &message).await {
                    Ok(subject) => {
                        stream
                            .delete_message(message.sequence)
                            .await
                            .with_context(|| {
                                format!(
                                    "republished, but removing DLQ entry {} failed",
                                    message.sequence
                                )
                            })?;
                        println!("{} → {subject}", message.sequence);
                    }
                    Err(e) => bail!("DLQ entry {}: {e:#}", message.sequence),
                }
            }
        }
        DlqCommand::Drop(selection) => {
            for message in selected(&stream, &selection).await? {
                stream
                    .delete_message(message.sequence)
                    .await
                    .with_context(|| format!("removing DLQ entry {}", message.sequence))?;
                println!("{} dropped", message.sequence);
            }
        }
    }
    Ok(())
}

async fn get(stream: &Stream, sequence: u64) -> anyhow::Result<jetstream::message::StreamMessage> {
    stream.direct_get(sequence).await.map_err(|e| {
        if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound {
            anyhow::anyhow!("{} has no entry {sequence}", names::DLQ)
        } else {
            anyhow::Error::new(e).context("reading the DLQ")
        }
    })
}

async fn selected(
    stream: &Stream,
    selection: &Selection,
) -> anyhow::Result<Vec<jetstream::message::StreamMessage>> {
    if selection.all {
        return entries(stream, usize::MAX).await;
    }
    let mut out = Vec::new();
    for sequence in &selection.sequences {
        out.push(get(stream, *sequence).await?);
    }
    Ok(out)
}

/// Republishes one dead letter; the subject it went to.
async fn retry(
    js: &jetstream::Context,
    sent: &jetstream::kv::Store,
    message: &jetstream::message::StreamMessage,
) -> anyhow::Result<String> {
    let subject = header(&message.headers, dlq::ORIGINAL_SUBJECT);
    if subject.is_empty() {
        bail!("it does not record its original subject");
    }
    let kind = header(&message.headers, dlq::ORIGINAL_TYPE);
    if kind == "source_row" {
        bail!(
            "a SQL Server row rejected by its source is not a message to send again: correct the \
             row in its database (its new version is read again), then drop this dead letter"
        );
    }
    let marker = match kind.as_str() {
        DEVICE_JOB_TYPE => serde_json::from_slice::<DeliveryJob>(&message.payload)
            .ok()
            .map(|j| j.marker_key()),
        TOPIC_JOB_TYPE => serde_json::from_slice::<TopicJob>(&message.payload)
            .ok()
            .map(|j| format!("{}.~topic", j.notification_id)),
        _ => None,
    };
    if let Some(key) = marker {
        match sent
            .get(key.as_str())
            .await
            .context("reading the sent-marker")?
        {
            Some(value) if matches!(Marker::decode(&value), Marker::Sent { .. }) => {
                bail!("FCM already accepted this push; drop it instead")
            }
            Some(_) => {
                sent.delete(key.as_str())
                    .await
                    .context("clearing the failed attempts")?;
            }
            None => {}
        }
    }
    let msg_id = format!(
        "dlq-retry:{}:{}",
        message.sequence,
        message.time.unix_timestamp_nanos()
    );
    // The retry continues the trace of the notification it belongs to.
    let traceparent = message
        .headers
        .get(xibaar_streams::trace::TRACEPARENT)
        .map(|tp| tp.as_str());
    let mut headers = xibaar_streams::traced_headers(&msg_id, &kind, traceparent);
    headers.insert(
        "Xibaar-Retried-From",
        format!("{}:{}", names::DLQ, message.sequence).as_str(),
    );
    js.publish_with_headers(subject.clone(), headers, message.payload.clone())
        .await
        .context("republishing")?
        .await
        .context("republishing")?;
    Ok(subject)
}

//! Reading the events into batches, decoded ahead of their transactions.

use async_nats::jetstream;
use futures::StreamExt;
use xibaar_core::{Decoded, EventEnvelope};

use crate::{ProjectorSettings, outcomes};

/// An event of a batch, read and decoded ahead of its transaction.
pub(crate) struct Item {
    pub(crate) message: jetstream::Message,
    pub(crate) sequence: i64,
    pub(crate) decoded: Result<Decoded, xibaar_core::event::DecodeError>,
    /// The delivery outcomes it records (a page of successes records several).
    pub(crate) pending: Vec<outcomes::PendingOutcome>,
}

/// Reads `messages` into batches bounded by size and time, decodes them, and hands them over
/// one at a time; catching up stops after the batch that reaches `until`.
pub(crate) async fn read_batches<E: std::fmt::Display>(
    mut messages: impl futures::Stream<Item = Result<jetstream::Message, E>> + Unpin,
    settings: ProjectorSettings,
    until: Option<u64>,
    batches: tokio::sync::mpsc::Sender<Vec<Item>>,
) {
    let item = |message: jetstream::Message| -> Option<Item> {
        let Ok(info) = message.info() else {
            tracing::error!(subject = %message.subject, "message without JetStream metadata; skipped");
            return None;
        };
        let sequence = i64::try_from(info.stream_sequence).ok()?;
        let decoded = EventEnvelope::decode(&message.payload);
        let pending = match &decoded {
            Ok(Decoded::Known(envelope)) => outcomes::pending(envelope, sequence),
            _ => Vec::new(),
        };
        Some(Item {
            message,
            sequence,
            decoded,
            pending,
        })
    };
    // While NATS refuses (a node lost, a leader being elected), read again after a growing,
    // jittered wait, and say so once a second.
    let mut backoff = xibaar_streams::retry::Backoff::for_nats();
    let mut warn = xibaar_streams::retry::WarnEvery::second();
    loop {
        let mut batch = match messages.next().await {
            None => return,
            Some(Ok(m)) => {
                backoff.reset();
                item(m).into_iter().collect::<Vec<_>>()
            }
            Some(Err(e)) => {
                let wait = backoff.next_delay();
                if let Some(held_back) = warn.allow() {
                    tracing::warn!(error = %e, retry_in = ?wait, held_back, "pull from XIBAAR_EVENTS failed; retrying");
                }
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + settings.batch_wait;
        let reached = |batch: &[Item]| {
            until.is_some_and(|u| batch.last().is_some_and(|i| i.sequence as u64 >= u))
        };
        // A page of successes weighs its devices: a batch is as large a transaction whatever
        // the log's shape.
        let weight = |item: &Item| item.pending.len().max(1);
        let mut size: usize = batch.iter().map(weight).sum();
        while size < settings.batch_size && !reached(&batch) {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(m))) => {
                    if let Some(item) = item(m) {
                        size += weight(&item);
                        batch.push(item);
                    }
                }
                Ok(Some(Err(e))) => {
                    if let Some(held_back) = warn.allow() {
                        tracing::warn!(error = %e, held_back, "pull from XIBAAR_EVENTS failed");
                    }
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        let done = reached(&batch);
        if !batch.is_empty() && batches.send(batch).await.is_err() {
            return;
        }
        if done {
            return;
        }
    }
}

//! One pull lane: a task that pulls a durable consumer in explicit, short-lived batches into a
//! small channel.
//!
//! Why not the client's continuous `messages()` stream: it keeps pull requests outstanding on its
//! own, so at shutdown up to one and a half batches are on their way to a subscription that is
//! about to close, and JetStream redelivers them only after the ack wait (30 s for delivery jobs).
//! Here each batch request expires within a second; on shutdown the lane requests no more,
//! hands back (NAK) whatever its last batch still brings, and ends. Nothing is stranded.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long one pull request waits for messages before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Starts pulling `consumer` in batches of `batch`; messages arrive on the returned receiver,
/// which holds at most `batch` of them.
pub(crate) fn spawn(
    name: String,
    consumer: PullConsumer,
    batch: usize,
    shutdown: CancellationToken,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> mpsc::Receiver<jetstream::Message> {
    let (tx, rx) = mpsc::channel(batch.max(1));
    tasks.spawn(run(name, consumer, batch.max(1), tx, shutdown));
    rx
}

async fn run(
    name: String,
    consumer: PullConsumer,
    batch: usize,
    tx: mpsc::Sender<jetstream::Message>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut handed_back = 0u64;
    // While NATS refuses (a node lost, a leader being elected), pull again after a growing,
    // jittered wait, and say so once a second, not at every try.
    let mut backoff = xibaar_streams::retry::Backoff::for_nats();
    let mut warn = xibaar_streams::retry::WarnEvery::second();
    while !shutdown.is_cancelled() {
        // Pull no more than the channel can take, so pulled messages do not wait long unseen.
        let room = tx.capacity().max(1).min(batch);
        let mut messages = match consumer
            .batch()
            .max_messages(room)
            .expires(PULL_EXPIRES)
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                let wait = backoff.next_delay();
                if let Some(held_back) = warn.allow() {
                    tracing::warn!(lane = %name, error = %e, retry_in = ?wait, held_back, "pull request failed; retrying");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    let wait = backoff.next_delay();
                    if let Some(held_back) = warn.allow() {
                        tracing::warn!(lane = %name, error = %e, retry_in = ?wait, held_back, "pulling failed; retrying");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                    break;
                }
            };
            backoff.reset();
            if shutdown.is_cancelled() {
                hand_back(&message).await;
                handed_back += 1;
                continue;
            }
            tokio::select! {
                permit = tx.reserve() => match permit {
                    Ok(permit) => permit.send(message),
                    Err(_) => {
                        hand_back(&message).await;
                        handed_back += 1;
                    }
                },
                _ = shutdown.cancelled() => {
                    hand_back(&message).await;
                    handed_back += 1;
                }
            }
        }
    }
    if handed_back > 0 {
        tracing::info!(lane = %name, handed_back, "lane stopped; pulled messages handed back");
    }
    Ok(())
}

/// Gives a message back for immediate redelivery (to another replica, or the next start).
pub(crate) async fn hand_back(message: &jetstream::Message) {
    if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
        tracing::warn!(error = %e, "handing a message back failed; it returns after the ack wait");
    }
}

/// The receiver as a stream, for [`crate::PriorityMux`].
pub(crate) fn stream(
    mut rx: mpsc::Receiver<jetstream::Message>,
) -> impl futures::Stream<Item = jetstream::Message> + Unpin {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

//! One pull lane: a task that pulls a durable consumer in explicit, short-lived batches into a
//! small channel.
//!
//! Why not the client's continuous `messages()` stream: it keeps pull requests outstanding on its
//! own, so at shutdown up to one and a half batches are on their way to a subscription that is
//! about to close, and JetStream redelivers them only after the ack wait (30 s for delivery jobs).
//! Here each batch request expires within a second; on shutdown the lane requests no more,
//! hands back (NAK) whatever its last batch still brings, and ends. Nothing is stranded.
//!
//! Every message a lane pulled is said to be in progress three times per ack wait until its
//! handler lets go of it ([`Pulled`] dropped): while it waits in the lane, for room in the
//! sender, for FCM's rate, and while it is handled. FCM's rate shared by several dispatchers
//! can hold a page longer than its ack wait; JetStream would then hand it to another sender
//! while this one still has it, and both would push its devices.

use std::{
    collections::HashMap,
    ops::Deref,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long one pull request waits for messages before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// How often a message in hand is said to be in progress: three times per ack wait.
pub(crate) fn progress_every(ack_wait: Duration) -> Duration {
    (ack_wait / 3).max(Duration::from_millis(100))
}

/// A beat every `every`, the first after `every`, late beats pushed back rather than bunched.
pub(crate) fn beat(every: Duration) -> tokio::time::Interval {
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat
}

/// The ack wait of `consumer` as it was read when it was opened (the server's default when it
/// has none).
pub(crate) fn ack_wait(consumer: &PullConsumer) -> Duration {
    let wait = consumer.cached_info().config.ack_wait;
    if wait.is_zero() {
        Duration::from_secs(30)
    } else {
        wait
    }
}

/// The messages a lane pulled whose handlers have not let go of them.
#[derive(Default)]
struct Held {
    messages: Mutex<HashMap<u64, jetstream::Message>>,
    next: AtomicU64,
}

impl Held {
    fn hold(self: &Arc<Self>, message: jetstream::Message) -> Pulled {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.messages().insert(id, message.clone());
        Pulled {
            message,
            held: self.clone(),
            id,
        }
    }

    fn messages(&self) -> std::sync::MutexGuard<'_, HashMap<u64, jetstream::Message>> {
        self.messages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Says every held message is in progress, every `every`, until `shutdown`.
    async fn keep(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut beat = beat(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = beat.tick() => {}
            }
            let held: Vec<jetstream::Message> = self.messages().values().cloned().collect();
            for message in held {
                // A lost progress ack costs at most a redelivery, as a lost ack does.
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// A message pulled by a lane, said to be in progress until this is dropped.
pub(crate) struct Pulled {
    message: jetstream::Message,
    held: Arc<Held>,
    id: u64,
}

impl Deref for Pulled {
    type Target = jetstream::Message;

    fn deref(&self) -> &jetstream::Message {
        &self.message
    }
}

impl Drop for Pulled {
    fn drop(&mut self) {
        self.held.messages().remove(&self.id);
    }
}

/// Starts pulling `consumer` in batches of `batch`; messages arrive on the returned receiver,
/// which holds at most `batch` of them.
pub(crate) fn spawn(
    name: String,
    consumer: PullConsumer,
    batch: usize,
    shutdown: CancellationToken,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> mpsc::Receiver<Pulled> {
    let (tx, rx) = mpsc::channel(batch.max(1));
    let held = Arc::new(Held::default());
    let every = progress_every(ack_wait(&consumer));
    tasks.spawn(held.clone().keep(every, shutdown.clone()).map(Ok));
    tasks.spawn(run(name, consumer, batch.max(1), tx, held, shutdown));
    rx
}

async fn run(
    name: String,
    consumer: PullConsumer,
    batch: usize,
    tx: mpsc::Sender<Pulled>,
    held: Arc<Held>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut handed_back = 0u64;
    // While NATS refuses (a node lost, a leader being elected), pull again after a growing,
    // jittered wait, and say so once a second, not at every try.
    let mut backoff = xibaar_streams::retry::Backoff::for_nats();
    let mut warn = xibaar_streams::retry::WarnEvery::second();
    while !shutdown.is_cancelled() {
        // Pull once the channel has room for half a batch, not as soon as one message has left
        // it: a sender taking pages one at a time out of a full channel had each of them
        // pulled by a request of its own (docs/decisions.md, "Pull lanes use short batch
        // requests").
        tokio::select! {
            permits = tx.reserve_many(batch.div_ceil(2)) => match permits {
                // Only waiting for the room: the messages are sent one by one below.
                Ok(permits) => drop(permits),
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        }
        // Pull no more than the channel can take, so pulled messages do not wait long unseen.
        let room = tx.capacity().max(1).min(batch);
        let requested = tokio::time::Instant::now();
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
        // The consumer's leader answers every request by its expiry (with messages, or a
        // timeout status); a request that reached a leader as it died, or was sent while the
        // consumer had none, is never answered, and the client would wait 5 s past the expiry
        // before giving up on it (a push could wait 12 s for an election of 7). So a request
        // is given up as any other unanswered JetStream request is, `UNANSWERED` past its
        // expiry. A leader late by more than that sends its messages to an abandoned inbox;
        // they return after the ack wait.
        let given_up_at = requested + PULL_EXPIRES + xibaar_streams::retry::UNANSWERED;
        loop {
            let Ok(next) = tokio::time::timeout_at(given_up_at, messages.next()).await else {
                tracing::debug!(lane = %name, "pull request unanswered; pulling again");
                break;
            };
            let Some(message) = next else { break };
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
            let message = held.hold(message);
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
    mut rx: mpsc::Receiver<Pulled>,
) -> impl futures::Stream<Item = Pulled> + Unpin {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

//! The dispatcher: turns commands into delivery jobs (fan-out) and delivery jobs into FCM
//! pushes (sender).
//!
//! - Fan-out runs one worker per priority level, so a million-device low-priority broadcast
//!   being expanded never delays an urgent command.
//! - The sender pulls the four delivery lanes through a [`PriorityMux`]: urgent first, with a
//!   bounded share for lower levels, all sharing the FCM client's concurrency.

mod fanout;
mod job;
mod lane;
mod mux;
mod page;
mod publish;
mod sender;
pub mod share;
mod slots;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, kv};
use futures::StreamExt;
use sqlx::PgPool;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use xibaar_core::{
    Priority,
    job::{DEVICES_PER_PAGE, PAGE_JOB_TYPE},
};
use xibaar_fcm::FcmClient;

use crate::slots::Slots;
use xibaar_streams::{consumers, names, trace};

pub use fanout::{FanOut, FanOutError, Pacing};
pub use job::Job;
pub use mux::PriorityMux;
pub use page::PageRecord;
pub use sender::{Marker, Outcome, RetryPolicy, Sender};
pub use xibaar_streams::fanout::{FanOutState, Progress};

/// Commands fanned out at once per priority level. Most notifications are one customer's (a
/// bill, a payment): each fan-out is a few JetStream round trips in a row (claim, accepted
/// event, jobs, progress, fanned-out event), 10–20 ms on a three-node cluster, so two at a time
/// capped a level at about a hundred notifications a second. Broadcasts running side by side
/// are held to their lane's backlog by pacing, whatever their number.
const FANOUT_WORKERS_PER_LEVEL: usize = 32;
/// One lower-level pick in this many when urgent work is waiting.
const FAIR_EVERY: u64 = 16;
/// Devices in hand per FCM slot: the others are having their outcome recorded, or wait in a
/// page for a place at FCM.
const RECORDING_FACTOR: usize = 2;
/// Pages in hand beyond that, so that a few pages finishing their last devices do not leave
/// the FCM pipe short at a small concurrency.
const SPARE_PAGES: usize = 2;

/// Devices the sender holds at once (taken and not yet acked): enough to keep `concurrency`
/// requests at FCM while outcomes are recorded, and the bound on pushes repeated after a kill.
pub fn devices_in_hand(concurrency: usize) -> usize {
    (concurrency.max(1) * RECORDING_FACTOR).max(concurrency.max(1) + SPARE_PAGES * DEVICES_PER_PAGE)
}
/// The header naming a message's kind.
const XIBAAR_TYPE: &str = "Xibaar-Type";

#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    pub fanout_page_size: u32,
    pub fanout_max_backlog: u64,
    pub send_concurrency: usize,
    pub retry: RetryPolicy,
}

impl DispatcherSettings {
    pub fn from_config(config: &xibaar_config::Config) -> Self {
        Self {
            fanout_page_size: config.dispatcher.fanout_page_size,
            fanout_max_backlog: config.dispatcher.fanout_max_backlog,
            send_concurrency: config.fcm.concurrency,
            retry: RetryPolicy {
                max_attempts: config.dispatcher.max_attempts.get(),
                base_delay: config.dispatcher.retry_base_delay,
                max_delay: config.dispatcher.retry_max_delay,
            },
        }
    }
}

/// What [`Dispatcher::open`] finds.
struct Opened {
    progress: kv::Store,
    /// The sender consumers on `XIBAAR_DELIVERIES`, by priority.
    senders: [PullConsumer; 4],
    /// The dispatcher consumers of the command streams, by priority.
    commands: [PullConsumer; 4],
    sent: kv::Store,
}

pub struct Dispatcher {
    js: jetstream::Context,
    pool: PgPool,
    fcm: Arc<FcmClient>,
    settings: DispatcherSettings,
}

impl Dispatcher {
    pub fn new(
        js: jetstream::Context,
        pool: PgPool,
        fcm: Arc<FcmClient>,
        settings: DispatcherSettings,
    ) -> Self {
        Self {
            js,
            pool,
            fcm,
            settings,
        }
    }

    /// The buckets and consumers the dispatcher works with.
    async fn open(&self) -> anyhow::Result<Opened> {
        let progress = self
            .js
            .get_key_value(names::FANOUT_BUCKET)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "opening the fan-out progress bucket {}: {e}",
                    names::FANOUT_BUCKET
                )
            })?;
        let deliveries = self
            .js
            .get_stream(names::DELIVERIES)
            .await
            .context("opening XIBAAR_DELIVERIES")?;
        let mut senders = Vec::new();
        let mut commands = Vec::new();
        for priority in Priority::ALL {
            let consumer: PullConsumer = deliveries
                .get_consumer(&consumers::sender(priority))
                .await
                .map_err(|e| anyhow::anyhow!("opening the {priority} sender consumer: {e}"))?;
            senders.push(consumer);
            let consumer: PullConsumer = self
                .js
                .get_stream(priority.command_stream())
                .await
                .with_context(|| format!("opening {}", priority.command_stream()))?
                .get_consumer(consumers::DISPATCHER)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "opening the dispatcher consumer on {}: {e}",
                        priority.command_stream()
                    )
                })?;
            commands.push(consumer);
        }
        let sent = self
            .js
            .get_key_value(names::SENT_BUCKET)
            .await
            .map_err(|e| {
                anyhow::anyhow!("opening the sent-marker bucket {}: {e}", names::SENT_BUCKET)
            })?;
        let four = |_| anyhow::anyhow!("four consumers");
        Ok(Opened {
            progress,
            senders: senders.try_into().map_err(four)?,
            commands: commands.try_into().map_err(four)?,
            sent,
        })
    }

    /// Runs fan-out and sending until `shutdown`; then stops pulling and lets in-flight work
    /// finish (or hands it back to JetStream) before returning.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // A dispatcher started while its NATS node is down, or before the cluster has formed
        // or elected its leaders, waits for them instead of exiting.
        let opened = xibaar_streams::retry::until_ok(
            "JetStream not ready",
            xibaar_streams::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            Duration::from_secs(5),
            shutdown.cancelled(),
            || async { self.open().await.map_err(|e| format!("{e:#}")) },
        )
        .await;
        let Some(Opened {
            progress,
            senders,
            commands,
            sent,
        }) = opened
        else {
            return Ok(());
        };
        let mut tasks = JoinSet::new();
        // FCM's rate is the project's: find the other dispatchers before the first push, and
        // whether any of them reads only jobs of one device before the first fan-out.
        let (heard_tx, mut heard) = tokio::sync::watch::channel(share::Heard::default());
        {
            let (client, fcm, shutdown) = (self.js.client(), self.fcm.clone(), shutdown.clone());
            tasks.spawn(async move {
                share::keep_share(client, fcm, heard_tx, shutdown).await;
                Ok(())
            });
        }
        tokio::select! {
            _ = heard.wait_for(|heard| heard.ready) => {}
            _ = shutdown.cancelled() => {}
        }
        let fanout = Arc::new(FanOut {
            js: self.js.clone(),
            pool: self.pool.clone(),
            page_size: self.settings.fanout_page_size,
            progress,
            pacing: Pacing {
                senders: senders.clone(),
                // The lanes hold pages: the backlog in devices, counted in pages.
                max_backlog: self
                    .settings
                    .fanout_max_backlog
                    .div_ceil(publish::devices_per_page(self.settings.fanout_page_size) as u64),
                shutdown: shutdown.clone(),
            },
            heard,
        });
        for (priority, consumer) in Priority::ALL.into_iter().zip(commands) {
            let commands = lane::spawn(
                format!("{}.{}", priority.command_stream(), consumers::DISPATCHER),
                consumer,
                FANOUT_WORKERS_PER_LEVEL,
                shutdown.clone(),
                &mut tasks,
            );
            tasks.spawn(fanout_lane(
                priority,
                commands,
                fanout.clone(),
                shutdown.clone(),
            ));
        }
        // A page in hand has its record brought up to date as often as it is said to be in
        // progress (see `lane`), by the shortest of its consumers' ack waits.
        let ack_wait = senders
            .iter()
            .map(lane::ack_wait)
            .min()
            .unwrap_or(Duration::from_secs(30));
        let sender = Arc::new(Sender {
            js: self.js.clone(),
            fcm: self.fcm.clone(),
            retry: self.settings.retry.clone(),
            sent,
            progress_every: lane::progress_every(ack_wait),
        });
        let mut lanes = Vec::new();
        for (priority, consumer) in Priority::ALL.into_iter().zip(senders) {
            let name = consumers::sender(priority);
            // A small buffer per lane: buffered jobs wait while more urgent ones go first, and a
            // job must not outwait its ack deadline in the buffer. Jobs are mostly pages: the
            // buffer holds about as many devices as the sender keeps in hand.
            let batch = devices_in_hand(self.settings.send_concurrency)
                .div_ceil(DEVICES_PER_PAGE)
                .clamp(4, 256);
            lanes.push(lane::stream(lane::spawn(
                name,
                consumer,
                batch,
                shutdown.clone(),
                &mut tasks,
            )));
        }
        let lanes: [_; 4] = lanes
            .try_into()
            .map_err(|_| anyhow::anyhow!("four lanes"))?;
        tasks.spawn(send_loop(
            lanes,
            sender,
            self.settings.send_concurrency,
            shutdown.clone(),
        ));
        tracing::info!("dispatcher running");
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = format!("{e:#}"), "dispatcher task failed");
                    shutdown.cancel();
                    result = Err(e);
                }
                Err(e) => {
                    shutdown.cancel();
                    result = Err(anyhow::anyhow!("dispatcher task panicked: {e}"));
                }
            }
        }
        tracing::info!("dispatcher stopped");
        result
    }
}

async fn fanout_lane(
    priority: Priority,
    commands: tokio::sync::mpsc::Receiver<lane::Pulled>,
    fanout: Arc<FanOut>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut commands = lane::stream(commands);
    let slots = Arc::new(Semaphore::new(FANOUT_WORKERS_PER_LEVEL));
    let mut running = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p?,
        };
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = commands.next() => m,
        };
        let Some(message) = message else { break };
        let fanout = fanout.clone();
        let span = tracing::info_span!("fan_out", %priority, subject = %message.subject);
        trace::continue_from_headers(&span, message.headers.as_ref());
        running.spawn(async move {
            let _permit = permit;
            let started = std::time::Instant::now();
            match fanout.handle(&message).await {
                Ok(targeted) => {
                    match targeted {
                        Some(targeted) => tracing::info!(%priority, targeted, elapsed = ?started.elapsed(), "fanned out"),
                        None => tracing::info!(%priority, "canceled; not fanned out"),
                    }
                    if let Err(e) = message.ack().await {
                        tracing::warn!(error = %e, "acking a command failed; it will be fanned out again (deduplicated)");
                    }
                }
                Err(FanOutError::Poison(reason)) => {
                    tracing::error!(%reason, "command cannot be processed; parked in XIBAAR_DLQ");
                    match xibaar_streams::dlq::dead_letter(&fanout.js, &message, &reason).await {
                        Ok(()) => {
                            let _ = message.ack_with(AckKind::Term).await;
                        }
                        Err(e) => tracing::error!(error = %e, "parking a command in XIBAAR_DLQ failed; it will be redelivered"),
                    }
                }
                Err(FanOutError::Interrupted) => {
                    tracing::info!(%priority, "fan-out held back at shutdown; handed back, it resumes after its last recorded device");
                    lane::hand_back(&message).await;
                }
                Err(FanOutError::Transient(reason)) => {
                    tracing::warn!(%reason, "fan-out failed; the command will be retried");
                    let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(2)))).await;
                }
            }
        }.instrument(span));
        while running.try_join_next().is_some() {}
    }
    // Commands already pulled but not started go back at once instead of after the ack wait.
    // The lane ends within a pull expiry; until then whatever it still passes on goes back too.
    while let Some(message) = commands.next().await {
        lane::hand_back(&message).await;
    }
    // In-flight fan-outs finish: they are idempotent, and finishing beats redoing.
    while running.join_next().await.is_some() {}
    Ok(())
}

async fn send_loop<S>(
    lanes: [S; 4],
    sender: Arc<Sender>,
    concurrency: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    S: futures::Stream<Item = lane::Pulled> + Unpin,
{
    let mut mux = PriorityMux::new(lanes, FAIR_EVERY);
    // `slots`: pushes at FCM (up to its concurrency), given most urgent first. `in_hand`:
    // devices taken and not yet acked, including those whose outcome is being recorded, so the
    // FCM pipe stays full meanwhile.
    let slots = Slots::new(concurrency.max(1), FAIR_EVERY);
    let in_hand_limit = devices_in_hand(concurrency);
    let in_hand = Arc::new(Semaphore::new(in_hand_limit));
    let mut running = JoinSet::new();
    let fcm = sender.fcm.clone();
    loop {
        // Every project's circuit is open: take no work until one may send again (jobs left in
        // the stream keep their place and their retries).
        if let Some(pause) = fcm.paused_for() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause.min(Duration::from_secs(1))) => continue,
            }
        }
        // Room for one device first, so that the job taken next is the most urgent one waiting
        // when room appears; then room for the rest of its devices.
        let mut held = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = in_hand.clone().acquire_owned() => p?,
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = mux.next() => n,
        };
        let Some((priority, message)) = next else {
            break;
        };
        let devices = devices_in(&message).min(in_hand_limit);
        if devices > 1 {
            tokio::select! {
                more = in_hand.clone().acquire_many_owned(devices as u32 - 1) => held.merge(more?),
                _ = shutdown.cancelled() => {
                    lane::hand_back(&message).await;
                    break;
                }
            }
        }
        let (sender, slots, stop) = (sender.clone(), slots.clone(), shutdown.clone());
        let span = tracing::info_span!("push", %priority, subject = %message.subject, devices);
        trace::continue_from_headers(&span, message.headers.as_ref());
        running.spawn(
            async move {
                let _held = held;
                let handled = if is_page(&message) {
                    sender.handle_page(&message, priority, &slots, &stop).await
                } else {
                    let slot = slots.acquire(priority).await;
                    sender
                        .handle(&message, slot)
                        .await
                        .map(|outcome| sender::count(outcome, priority))
                };
                if let Err(e) = handled {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "delivery job not recorded; it will be redelivered"
                    );
                }
            }
            .instrument(span),
        );
        while running.try_join_next().is_some() {}
    }
    // Jobs already pulled but not started go back at once, for another sender (or the next
    // start) to take without waiting out the ack wait.
    // The lanes end within a pull expiry; until then whatever they still pass on goes back too.
    let mut handed_back = 0;
    while let Some((_, message)) = mux.next().await {
        lane::hand_back(&message).await;
        handed_back += 1;
    }
    // Jobs already at FCM finish and record their outcome; pages hand back their devices not
    // yet sent.
    let finishing = running.len();
    while running.join_next().await.is_some() {}
    tracing::info!(handed_back, finished = finishing, "sender stopped");
    Ok(())
}

fn is_page(message: &jetstream::Message) -> bool {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(XIBAAR_TYPE))
        .is_some_and(|v| v.as_str() == PAGE_JOB_TYPE)
}

/// How many devices a job carries: a page says so in `Xibaar-Devices`; one that does not is
/// counted as a full page.
fn devices_in(message: &jetstream::Message) -> usize {
    if !is_page(message) {
        return 1;
    }
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(publish::DEVICES_HEADER))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(DEVICES_PER_PAGE)
        .max(1)
}

//! Fan-out: one command in, delivery pages (up to 100 active devices of its audience each) out.
//!
//! Order of effects, so that a crash at any point loses nothing and repeats nothing that
//! JetStream's duplicate window does not absorb: `notification.accepted` event, delivery pages
//! (a `Nats-Msg-Id` from the notification and the page's last device, pipelined),
//! `notification.fanned_out` event, then the command's ack. A redelivered command repeats the
//! same publishes with the same ids, which JetStream drops.
//!
//! Progress: before the pages of a page of the audience are published,
//! `XIBAAR_FANOUT/<notification>` records where each of them ends, after the last device of the
//! pages before (see [`crate::publish`]). A fan-out restarted after a crash (or after the
//! duplicate window has passed) publishes the recorded pages again, cut at the same devices,
//! then reads on: nobody is skipped, and a page already stored is dropped as a repeat.
//!
//! Pacing: a high-, normal- or low-priority fan-out publishes a page only while its lane holds
//! fewer than `max_backlog` pages not yet acked by the senders, so a million-device broadcast is
//! expanded as it is sent instead of being stored all at once, and its later pages are read
//! from the registry close to their sending time. Urgent fan-outs are never held back. A
//! fan-out held back at shutdown hands its command back; it resumes after its last recorded
//! device.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, kv};
use bytes::Bytes;
use futures::StreamExt;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use xibaar_core::{
    Actor, Audience, Command, Event, EventEnvelope, Priority, SendNotification, TopicJob,
    event::{FcmTarget, NotificationAccepted, NotificationFannedOut},
    job::TOPIC_JOB_TYPE,
    notification::preference_filter,
};
use xibaar_streams::Pipeline;

use xibaar_streams::fanout::{FanOutState, Progress};
use xibaar_streams::publish_event;

/// How many publishes are in flight at once during a fan-out.
const PUBLISH_WINDOW: usize = 1024;
/// How often a held-back fan-out looks at its lane's backlog again.
const PACING_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum FanOutError {
    /// The command can never be processed: dead-letter it.
    #[error("undecodable command: {0}")]
    Poison(String),
    /// NATS or Postgres failed: try again later.
    #[error("{0}")]
    Transient(String),
    /// Shutdown came while the fan-out was held back: hand the command back, to resume after
    /// the last recorded device.
    #[error("held back at shutdown")]
    Interrupted,
}

/// Holds high-, normal- and low-priority fan-outs back while their lane is full.
pub struct Pacing {
    /// The senders' consumers on `XIBAAR_DELIVERIES`, in [`Priority::ALL`] order.
    pub senders: [PullConsumer; 4],
    /// Pages a lane may hold (published, not yet acked) before a fan-out waits.
    pub max_backlog: u64,
    pub shutdown: CancellationToken,
}

impl Pacing {
    /// Waits until the lane of `priority` has room for `jobs` more, drawing on `room` (jobs
    /// known to fit since the backlog was last read) before reading the backlog again. A lane
    /// under its limit takes a whole page, so it holds at most `max_backlog` plus a page per
    /// fan-out.
    pub(crate) async fn admit(
        &self,
        priority: Priority,
        jobs: u64,
        room: &mut u64,
    ) -> Result<(), FanOutError> {
        if priority == Priority::Urgent {
            return Ok(());
        }
        if *room >= jobs {
            *room -= jobs;
            return Ok(());
        }
        let consumer = &self.senders[priority.rank()];
        let mut held_since = None;
        let backlog = loop {
            let info = consumer.get_info().await.map_err(|e| {
                FanOutError::Transient(format!("reading the {priority} lane's backlog: {e}"))
            })?;
            let backlog = info.num_pending + info.num_ack_pending as u64;
            if backlog < self.max_backlog {
                break backlog;
            }
            held_since.get_or_insert_with(Instant::now);
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(FanOutError::Interrupted),
                _ = tokio::time::sleep(PACING_POLL) => {}
            }
        };
        if let Some(since) = held_since {
            metrics::histogram!("xibaar_dispatcher_fanout_hold_seconds", "priority" => priority.as_str())
                .record(since.elapsed().as_secs_f64());
        }
        *room = (self.max_backlog - backlog).saturating_sub(jobs);
        Ok(())
    }
}

pub struct FanOut {
    pub js: jetstream::Context,
    pub pool: PgPool,
    pub page_size: u32,
    /// The fan-out progress bucket.
    pub progress: kv::Store,
    pub pacing: Pacing,
    /// What is known of the other dispatchers: while one of an earlier version runs, jobs are
    /// stored one per device.
    pub heard: tokio::sync::watch::Receiver<crate::share::Heard>,
}

/// Claims `key` for a fan-out: `Ok(None)` when the notification was canceled, otherwise the
/// progress to resume from (nothing stored yet for a fresh claim).
async fn claim(progress: &kv::Store, key: &str) -> Result<Option<Progress>, FanOutError> {
    let fresh = Progress {
        after: None,
        after_customer: None,
        published: 0,
        pages: Some(Vec::new()),
    };
    let transient =
        |e: &dyn std::fmt::Display| FanOutError::Transient(format!("claiming the fan-out: {e}"));
    match progress
        .create(key, FanOutState::Progress(fresh.clone()).encode())
        .await
    {
        Ok(_) => return Ok(Some(fresh)),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(transient(&e)),
    }
    match progress.get(key).await.map_err(|e| transient(&e))? {
        Some(value) => match FanOutState::decode(&value) {
            Some(FanOutState::Canceled { .. }) => Ok(None),
            Some(FanOutState::Progress(p)) => Ok(Some(p)),
            None => Ok(Some(fresh)),
        },
        // Removed in between (it ages out after days): start from the beginning.
        None => Ok(Some(fresh)),
    }
}

/// How long a fan-out that NATS or Postgres refuses is retried in place before its command is
/// handed back: past a leader's election (4–10 s). Retrying here, not by a NAK, keeps the
/// fan-out going as soon as the new leader answers; a NAK sent while the consumer's own leader
/// is being elected is lost, and the command would wait out its ack wait.
const FANOUT_RETRY_FOR: Duration = Duration::from_secs(20);
/// How many notifications of one page are fanned out at once.
const PAGE_CONCURRENCY: usize = 16;

impl FanOut {
    /// Fans out the command's notifications (a page's at [`PAGE_CONCURRENCY`] at once): the
    /// jobs created, or `None` when every one was canceled before its fan-out. A broadcast's
    /// fan-out outlasts the command's ack wait: the caller keeps saying it is in progress (the
    /// dispatcher's lanes do, for every message they pulled).
    pub async fn handle(&self, message: &jetstream::Message) -> Result<Option<u64>, FanOutError> {
        let command: Command = serde_json::from_slice(&message.payload)
            .map_err(|e| FanOutError::Poison(e.to_string()))?;
        if let Some(reason) = command.malformed() {
            return Err(FanOutError::Poison(reason.into()));
        }
        let notifications = command.notifications();
        // A `FuturesUnordered` filled by hand rather than `buffer_unordered` over a closure:
        // the closure's borrow of `self` does not satisfy the spawned task's `Send` bound.
        let mut waiting = notifications.iter();
        let mut outcomes = futures::stream::FuturesUnordered::new();
        for send in waiting.by_ref().take(PAGE_CONCURRENCY) {
            outcomes.push(self.fan_out_retrying(send));
        }
        let mut targeted = None;
        // Every notification is finished or has failed before the page is acked or handed
        // back. A page tried again pushes nothing twice: each notification's claim holds its
        // progress, so a finished one publishes no job again (only its two events, which the
        // projector folds once).
        let mut failed = None;
        while let Some(outcome) = outcomes.next().await {
            if let Some(send) = waiting.next() {
                outcomes.push(self.fan_out_retrying(send));
            }
            match outcome {
                Ok(Some(n)) => *targeted.get_or_insert(0) += n,
                Ok(None) => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(targeted),
        }
    }

    /// [`FanOut::fan_out`], retried on transient failures with growing, jittered waits (it is
    /// idempotent: the claim, the progress and the jobs' ids make a repeat publish nothing
    /// new). Its lane tells JetStream meanwhile that the command is still being worked on.
    async fn fan_out_retrying(&self, send: &SendNotification) -> Result<Option<u64>, FanOutError> {
        let started = std::time::Instant::now();
        let mut backoff = xibaar_streams::retry::Backoff::for_nats();
        let mut warn = xibaar_streams::retry::WarnEvery::second();
        loop {
            match self.fan_out(send).await {
                Err(FanOutError::Transient(reason)) if started.elapsed() < FANOUT_RETRY_FOR => {
                    let wait = backoff.next_delay();
                    if let Some(held_back) = warn.allow() {
                        tracing::warn!(%reason, retry_in = ?wait, held_back, "fan-out failed; retrying");
                    }
                    tokio::select! {
                        _ = self.pacing.shutdown.cancelled() => return Err(FanOutError::Interrupted),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                other => return other,
            }
        }
    }

    /// One notification: the jobs created, or `None` when it was canceled before its fan-out.
    async fn fan_out(&self, send: &SendNotification) -> Result<Option<u64>, FanOutError> {
        let Some(resumed) = claim(&self.progress, &send.notification_id.to_string()).await? else {
            tracing::info!(notification = %send.notification_id, "canceled before its fan-out; nothing sent");
            return Ok(None);
        };
        let causation = Some(format!("send:{}", send.notification_id));
        let correlation = send.notification_id.to_string();
        let transient = |what: &str| {
            let what = what.to_owned();
            move |e: &dyn std::fmt::Display| FanOutError::Transient(format!("{what}: {e}"))
        };
        let accepted = EventEnvelope::new(
            Event::NotificationAccepted(NotificationAccepted {
                notification_id: send.notification_id,
                priority: send.priority,
                audience: send.audience.clone(),
                content: send.content.clone(),
                category: send.category,
                idempotency_key: send.idempotency_key.clone(),
                delivery: send.delivery.clone(),
                accepted_at: send.accepted_at,
            }),
            correlation.clone(),
            causation.clone(),
            send.requested_by.clone(),
        );
        let accepted_stored = async {
            publish_event(&self.js, &accepted)
                .await
                .map(|_| ())
                .map_err(|e| transient("publishing notification.accepted")(&e))
        };

        let targeted = if send.audience.is_fcm_fan_out() {
            accepted_stored.await?;
            self.publish_topic_job(send, &correlation).await?
        } else {
            self.publish_jobs(send, &correlation, accepted_stored, resumed)
                .await?
        };

        let fanned_out = EventEnvelope::new(
            Event::NotificationFannedOut(NotificationFannedOut {
                notification_id: send.notification_id,
                priority: send.priority,
                targeted,
            }),
            correlation,
            causation,
            Actor::system("dispatcher"),
        );
        publish_event(&self.js, &fanned_out)
            .await
            .map_err(|e| transient("publishing notification.fanned_out")(&e))?;
        metrics::counter!("xibaar_dispatcher_jobs_created_total", "priority" => send.priority.as_str())
            .increment(targeted);
        Ok(Some(targeted))
    }

    pub(crate) async fn page(
        &self,
        send: &SendNotification,
        opted_in_to: Option<xibaar_core::Category>,
        at: &Progress,
    ) -> Result<Vec<xibaar_store::Recipient>, FanOutError> {
        let after = at.after.as_ref().map(|device_id| xibaar_store::PageAfter {
            device_id,
            customer_id: at.after_customer.as_ref(),
        });
        xibaar_store::audience_page(
            &self.pool,
            &send.audience,
            opted_in_to,
            after,
            self.page_size,
        )
        .await
        .map_err(|e| FanOutError::Transient(format!("reading the audience: {e}")))
    }

    /// A topic or condition audience is one FCM request: one job, FCM does the fan-out.
    async fn publish_topic_job(
        &self,
        send: &SendNotification,
        correlation: &str,
    ) -> Result<u64, FanOutError> {
        let (app_id, target) = match &send.audience {
            Audience::Topic { app_id, topic } => (
                app_id.clone(),
                FcmTarget::Topic {
                    topic: topic.clone(),
                },
            ),
            Audience::Condition { app_id, condition } => (
                app_id.clone(),
                FcmTarget::Condition {
                    condition: condition.clone(),
                },
            ),
            other => {
                return Err(FanOutError::Poison(format!(
                    "{other:?} is not an FCM topic audience"
                )));
            }
        };
        let job = TopicJob {
            notification_id: send.notification_id,
            priority: send.priority,
            app_id,
            target,
            // FCM sends a topic's devices one text: the default language.
            content: send.content.localized(None),
            delivery: send.delivery.clone(),
            correlation_id: correlation.to_owned(),
            accepted_at: send.accepted_at,
        };
        let payload = serde_json::to_vec(&job)
            .map_err(|e| FanOutError::Poison(format!("encoding a topic job: {e}")))?;
        let headers = xibaar_streams::headers(&job.msg_id(), TOPIC_JOB_TYPE);
        let stored = match self
            .js
            .publish_with_headers(job.subject(), headers, Bytes::from(payload))
            .await
        {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
        stored.map_err(|e| FanOutError::Transient(format!("storing the topic job: {e}")))?;
        Ok(1)
    }

    /// `accepted` stores `notification.accepted`; no job is published before it is stored
    /// (outcomes of jobs must find their notification), but reading the progress and the first
    /// page of the audience overlap with it: an urgent notification saves two round trips.
    ///
    /// Each page of the audience is cut into pages of delivery jobs; their last devices are
    /// recorded before they are published, so a fan-out resumed after a crash cuts the same
    /// pages again (whatever changed in the registry meanwhile) and JetStream drops those it
    /// holds.
    async fn publish_jobs(
        &self,
        send: &SendNotification,
        correlation: &str,
        accepted: impl std::future::Future<Output = Result<(), FanOutError>>,
        resumed: Progress,
    ) -> Result<u64, FanOutError> {
        let opted_in_to = preference_filter(send.priority, send.category);
        let start = async { self.page(send, opted_in_to, &resumed).await };
        let (stored, first) = tokio::join!(accepted, start);
        stored?;
        let mut prefetched = Some(first?);
        if let Some(after) = &resumed.after {
            tracing::info!(%after, published = resumed.published, "resuming a fan-out");
        }
        let mut out = crate::publish::Out {
            fanout: self,
            send,
            correlation,
            key: send.notification_id.to_string(),
            pipeline: Pipeline::new(self.js.clone(), PUBLISH_WINDOW),
            // Every job of the fan-out is in its trace: read the span's traceparent once.
            traceparent: xibaar_streams::trace::current_traceparent(),
            room: 0,
        };
        let mut position = resumed;
        match position.pages.take() {
            None => {
                let page = prefetched.take().unwrap_or_default();
                let full_page = page.len() == self.page_size as usize;
                if !page.is_empty() {
                    tracing::info!(
                        devices = page.len(),
                        "resuming a fan-out recorded one job per device: its next page goes out in that shape"
                    );
                }
                out.publish_single_jobs(&mut position, page).await?;
                if !full_page {
                    return Ok(position.published);
                }
            }
            Some(ends) if !ends.is_empty() => {
                out.publish_again(&mut position, &ends, opted_in_to).await?;
                prefetched = None;
            }
            Some(_) => {}
        }
        loop {
            let page = match prefetched.take() {
                Some(page) => page,
                None => self.page(send, opted_in_to, &position).await?,
            };
            if page.is_empty() {
                break;
            }
            let full_page = page.len() == self.page_size as usize;
            out.publish_pages(&mut position, page).await?;
            if !full_page {
                break;
            }
        }
        out.flush().await?;
        Ok(position.published)
    }
}

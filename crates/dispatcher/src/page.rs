//! A page of delivery jobs: up to a hundred devices of one notification in one job, so that
//! JetStream stores, hands out and acknowledges one message for all of them, while each device
//! keeps what a job of its own had.
//!
//! - Each device gets its own push, at an FCM place of the page's priority (urgent first), and
//!   its own outcome. The devices FCM accepted are recorded together, in one
//!   `delivery.page_succeeded` event for those answered while others of the page were still
//!   at FCM (stored once none is, or [`SUCCESSES_HELD_FOR`] after the first); a failure or an
//!   expiry is an event of its own, stored as soon as it is known.
//! - A device that fails for good gets its own dead letter: a job of its own, which `xibaar dlq
//!   retry` sends alone.
//! - Devices whose attempt failed, or whose project's circuit is open, are tried again by
//!   handing the page back with the longest of their delays (at least FCM's `Retry-After`).
//!   Before that, `XIBAAR_SENT/<notification>.page.<customer>.<device>` (the page's last device)
//!   records which devices are done and how many attempts the others have used; the page
//!   comes back and only those are tried.
//! - The ack comes once every device is done. The outcome events, stored before it, are the
//!   record that a push happened; a page redelivered after a crash (no ack) pushes again the
//!   devices its record does not name, so duplicates are bounded by the devices in hand, as
//!   they were with one job per device.
//! - On shutdown, devices not yet at FCM are not sent: the page is recorded and handed back.
//! - A page can take longer than its ack wait (FCM's rate shared by several dispatchers paces
//!   a hundred devices over a minute). Its lane says it is in progress meanwhile, and the round
//!   brings its record up to date at the same beat, so that a crash pushes again at most the
//!   devices done since.

use std::{
    collections::{BTreeMap, BTreeSet},
    pin::pin,
    sync::Arc,
    time::Duration,
};

use async_nats::jetstream::{self, AckKind};
use futures::{
    FutureExt, StreamExt,
    future::{BoxFuture, Fuse, FusedFuture},
    stream::FuturesUnordered,
};
use tokio_util::sync::CancellationToken;
use xibaar_core::{
    DeliveryPage, Event, Priority,
    event::{DeliveriesSucceeded, DeliveryFailure, SucceededDevice},
    job::DEVICE_JOB_TYPE,
};
use xibaar_fcm::Message;

use crate::{
    job::Recipient,
    sender::{self, Outcome, Sender, Verdict, ack},
    slots::Slots,
};

/// The longest a success waits for others of its page before it is stored: the customer's
/// inbox and live stream show it after that.
const SUCCESSES_HELD_FOR: Duration = Duration::from_millis(100);

/// How long the page's record is retried: past a bucket leader's election.
const RECORD_RETRY_FOR: Duration = Duration::from_secs(15);
/// How long outcomes and records are still tried once the sender is told to stop: a stop with
/// JetStream unreachable must not wait out every retry.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The value under a page's key in `XIBAAR_SENT`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PageRecord {
    /// Devices (by their place in the page) whose outcome is stored.
    pub done: BTreeSet<usize>,
    /// Failed attempts so far of the devices not done.
    #[serde(default)]
    pub failed: BTreeMap<usize, u32>,
}

impl PageRecord {
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .expect("a page record always serializes")
            .into()
    }
}

impl Sender {
    /// Delivers a page's devices not yet done, each as far as this round takes it, then acks
    /// the page or hands it back for the rest. Errors are returned only when an outcome could
    /// not be stored within its retries (JetStream unreachable); the page then comes back after
    /// the ack wait, and its devices whose outcome was not recorded in an earlier round are
    /// pushed again.
    pub async fn handle_page(
        &self,
        message: &jetstream::Message,
        priority: Priority,
        slots: &Arc<Slots>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let page = match serde_json::from_slice::<DeliveryPage>(&message.payload)
            .map_err(|e| format!("undecodable delivery page: {e}"))
            .and_then(|page| match page.malformed() {
                Some(reason) => Err(reason.to_owned()),
                None => Ok(page),
            }) {
            Ok(page) => page,
            Err(reason) => {
                tracing::error!(%reason, "delivery page parked in XIBAAR_DLQ");
                xibaar_streams::dlq::dead_letter(&self.js, message, &reason).await?;
                ack(message, AckKind::Term).await;
                sender::count(Outcome::Failed, priority);
                return Ok(());
            }
        };
        let key = page.marker_key().expect("a well-formed page has devices");
        let redelivered = message.info().map(|i| i.delivered > 1).unwrap_or(false);
        let mut record = PageRecord::default();
        if redelivered && let Some(value) = self.sent.get(key.as_str()).await? {
            record = PageRecord::decode(&value).unwrap_or_default();
        }
        let round = Round {
            sender: self,
            page: &page,
            message,
            priority,
            read: record.clone(),
            stop,
        };
        round.run(record, &key, slots).await
    }
}

/// One delivery of a page.
struct Round<'a> {
    sender: &'a Sender,
    page: &'a DeliveryPage,
    message: &'a jetstream::Message,
    priority: Priority,
    /// The page's record as this round found it.
    read: PageRecord,
    stop: &'a CancellationToken,
}

/// What storing the outcome of some devices (by their place in the page) came to.
struct Stored {
    done: Vec<(usize, Outcome)>,
    result: anyhow::Result<()>,
}

impl Round<'_> {
    /// Completes `grace` after the sender was told to stop: what JetStream has not stored by
    /// then (it is unreachable) is left for the page's redelivery.
    async fn stopped_for(&self, grace: Duration) {
        self.stop.cancelled().await;
        tokio::time::sleep(grace).await;
    }

    fn recipient(&self, index: usize) -> Recipient<'_> {
        let device = &self.page.devices[index];
        Recipient {
            notification_id: self.page.notification_id,
            priority: self.page.priority,
            device_id: &device.device_id,
            customer_id: &device.customer_id,
        }
    }

    async fn run(
        self,
        mut record: PageRecord,
        key: &str,
        slots: &Arc<Slots>,
    ) -> anyhow::Result<()> {
        let (page, stop) = (self.page, self.stop);
        let todo: Vec<usize> = (0..page.devices.len())
            .filter(|i| !record.done.contains(i))
            .collect();
        let failed_before = |record: &PageRecord, i: usize| record.failed.get(&i).copied();
        let mut stores = FuturesUnordered::new();
        // Past its time: every device left expires instead of a stale push.
        if sender::expires_past(page.delivery.expires_at, Duration::ZERO) {
            for &i in &todo {
                let attempt = failed_before(&record, i).unwrap_or(0);
                stores.push(self.store(i, Verdict::Expired { attempt }, attempt).boxed());
            }
            return self.finish(record, stores, Vec::new(), None, key).await;
        }
        let mut waiting = todo.into_iter();
        let mut pushes = FuturesUnordered::new();
        let mut acquiring = pin!(Fuse::terminated());
        let mut next = waiting.next();
        if next.is_some() {
            acquiring.set(slots.acquire(self.priority).fuse());
        }
        // Devices to try again, and when.
        let mut again: Vec<usize> = Vec::new();
        let mut later: Option<Duration> = None;
        let mut first_error = None;
        // The page's record kept up to date while it is in hand.
        let mut beat = crate::lane::beat(self.sender.progress_every);
        let mut recorded = self.read.clone();
        let mut recording = pin!(Fuse::terminated());
        // Devices FCM accepted, not yet stored, and when they will be at the latest.
        let mut succeeded: Vec<(usize, SucceededDevice)> = Vec::new();
        let mut held = pin!(Fuse::terminated());
        loop {
            if !succeeded.is_empty() && pushes.is_empty() {
                stores.push(self.store_successes(std::mem::take(&mut succeeded)).boxed());
                held.set(Fuse::terminated());
            }
            if next.is_none() && pushes.is_empty() && stores.is_empty() {
                break;
            }
            tokio::select! {
                // A stop comes before the next place: no push starts after it.
                biased;
                _ = stop.cancelled(), if next.is_some() => {
                    // Devices not yet at FCM go back with the page.
                    again.extend(next.take());
                    again.extend(waiting.by_ref());
                    acquiring.set(Fuse::terminated());
                }
                slot = &mut acquiring, if next.is_some() => {
                    let index = next.take().expect("a device waits for this place");
                    let message = Message::for_page_device(page, index)
                        .expect("a well-formed page gives each device its content");
                    let fcm = self.sender.fcm.clone();
                    let app_id = page.devices[index].app_id.clone();
                    pushes.push(async move {
                        let answer = fcm.send(&app_id, &message).await;
                        drop(slot);
                        (index, answer)
                    });
                    next = waiting.next();
                    if next.is_some() {
                        acquiring.set(slots.acquire(self.priority).fuse());
                    }
                }
                Some((index, answer)) = pushes.next(), if !pushes.is_empty() => {
                    let before = failed_before(&record, index).unwrap_or(0);
                    let attempt = before + 1;
                    let verdict = self.sender.judge(
                        &page.devices[index].app_id,
                        page.delivery.expires_at,
                        attempt,
                        before,
                        answer,
                        true,
                    );
                    match verdict {
                        Verdict::Sent { fcm_message_id } => {
                            let device = &page.devices[index];
                            tracing::debug!(attempt, %fcm_message_id, device = %device.device_id, "pushed");
                            if succeeded.is_empty() {
                                held.set(tokio::time::sleep(SUCCESSES_HELD_FOR).fuse());
                            }
                            succeeded.push((index, SucceededDevice {
                                device_id: device.device_id.clone(),
                                customer_id: device.customer_id.clone(),
                                attempt,
                                fcm_message_id,
                            }));
                        }
                        Verdict::Retry { delay, detail } => {
                            tracing::info!(error = %detail, attempt, ?delay, device = %page.devices[index].device_id, "FCM send failed; will retry");
                            record.failed.insert(index, attempt);
                            sender::count(Outcome::Retrying, self.priority);
                            again.push(index);
                            later = later.max(Some(delay));
                        }
                        Verdict::Pause { delay } => {
                            sender::count(Outcome::Paused, self.priority);
                            again.push(index);
                            later = later.max(Some(delay));
                        }
                        verdict => stores.push(self.store(index, verdict, attempt).boxed()),
                    }
                }
                Some(stored) = stores.next(), if !stores.is_empty() => {
                    self.stored(stored, &mut record, &mut first_error);
                }
                () = &mut held => {
                    stores.push(self.store_successes(std::mem::take(&mut succeeded)).boxed());
                }
                () = &mut recording => {}
                _ = beat.tick() => {
                    if record != recorded && recording.is_terminated() {
                        recorded = record.clone();
                        recording.set(self.write_record(recorded.encode(), key).fuse());
                    }
                }
            }
        }
        // A record still being written is finished first: the last one written is the newest.
        if !recording.is_terminated() {
            recording.await;
        }
        // An outcome JetStream would not store within its retries: a record would not be
        // stored either. The page comes back after its ack wait.
        if let Some(e) = first_error {
            return Err(e);
        }
        self.finish(record, stores, again, later, key).await
    }

    /// The events of a device's final `verdict` (and its dead letter), stored.
    async fn store(&self, index: usize, verdict: Verdict, attempt: u32) -> Stored {
        let outcome = verdict.outcome();
        let result = self
            .stored_unless_stopped(self.store_verdict(index, verdict, attempt))
            .await;
        Stored {
            done: vec![(index, outcome)],
            result,
        }
    }

    /// One `delivery.page_succeeded` for `devices`, stored.
    async fn store_successes(&self, devices: Vec<(usize, SucceededDevice)>) -> Stored {
        let (done, devices): (Vec<_>, Vec<_>) = devices
            .into_iter()
            .map(|(index, device)| ((index, Outcome::Sent), device))
            .unzip();
        let event = Event::DeliveriesSucceeded(DeliveriesSucceeded {
            notification_id: self.page.notification_id,
            priority: self.page.priority,
            devices,
        });
        let result = self
            .stored_unless_stopped(self.sender.store_event(
                &self.page.correlation_id,
                self.message,
                event,
            ))
            .await;
        Stored { done, result }
    }

    /// `storing`, given up [`STOP_GRACE`] after the sender was told to stop.
    async fn stored_unless_stopped(
        &self,
        storing: impl std::future::Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            stored = storing => stored,
            _ = self.stopped_for(STOP_GRACE) => Err(anyhow::anyhow!(
                "the sender stopped before the outcome was stored"
            )),
        }
    }

    async fn store_verdict(
        &self,
        index: usize,
        verdict: Verdict,
        attempt: u32,
    ) -> anyhow::Result<()> {
        let recipient = self.recipient(index);
        let event = |event: Event| {
            self.sender
                .store_event(&self.page.correlation_id, self.message, event)
        };
        match verdict {
            Verdict::Expired { attempt } => event(recipient.expired(attempt)).await,
            Verdict::Final {
                reason,
                code,
                detail,
                dead_letter,
            } => {
                if reason == DeliveryFailure::InvalidToken {
                    let token = &self.page.devices[index].token;
                    event(recipient.token_invalidated(token, code.as_deref().unwrap_or("")))
                        .await?;
                }
                if dead_letter {
                    self.dead_letter(index, &format!("{}: {detail}", reason.as_str()))
                        .await?;
                }
                event(recipient.failed(attempt, reason, code.as_deref(), &detail)).await
            }
            Verdict::Retry { .. } | Verdict::Pause { .. } => {
                unreachable!("a device tried again stores no outcome")
            }
            Verdict::Sent { .. } => {
                unreachable!("successes are stored together (`store_successes`)")
            }
        }
    }

    /// Parks device `index` in the DLQ as a job of its own.
    async fn dead_letter(&self, index: usize, reason: &str) -> anyhow::Result<()> {
        let job = self
            .page
            .job(index)
            .expect("a well-formed page gives each device its job");
        let payload = serde_json::to_vec(&job)?;
        xibaar_streams::dlq::park(
            &self.sender.js,
            self.message,
            xibaar_streams::dlq::Parked {
                subject: &job.subject(),
                kind: Some(DEVICE_JOB_TYPE),
                payload: payload.into(),
                part: Some(index),
            },
            reason,
        )
        .await?;
        Ok(())
    }

    fn stored(
        &self,
        stored: Stored,
        record: &mut PageRecord,
        first_error: &mut Option<anyhow::Error>,
    ) {
        match stored.result {
            Ok(()) => {
                for (index, outcome) in stored.done {
                    record.done.insert(index);
                    record.failed.remove(&index);
                    sender::count(outcome, self.priority);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }

    /// Waits for the outcomes still being stored, then acks the page, or records it and hands
    /// it back for the devices in `again` (after `later`).
    async fn finish<'s>(
        &'s self,
        mut record: PageRecord,
        mut stores: FuturesUnordered<BoxFuture<'s, Stored>>,
        mut again: Vec<usize>,
        mut later: Option<Duration>,
        key: &str,
    ) -> anyhow::Result<()> {
        loop {
            let mut first_error = None;
            while let Some(stored) = stores.next().await {
                self.stored(stored, &mut record, &mut first_error);
            }
            if let Some(e) = first_error {
                return Err(e);
            }
            if again.is_empty() {
                ack(self.message, AckKind::Ack).await;
                return Ok(());
            }
            // The page comes back as one: when its longest wait would outlast the
            // notification, every device left expires now.
            if let Some(delay) = later
                && sender::expires_past(self.page.delivery.expires_at, delay)
            {
                for i in again.drain(..) {
                    let attempt = record.failed.get(&i).copied().unwrap_or(0);
                    stores.push(self.store(i, Verdict::Expired { attempt }, attempt).boxed());
                }
                later = None;
                continue;
            }
            // Nothing new to record (a page taken as the sender stopped): it just goes back.
            if record != self.read {
                self.write_record(record.encode(), key).await;
            }
            ack(self.message, AckKind::Nak(later)).await;
            return Ok(());
        }
    }

    /// Stores which devices are done and the attempts of the others, retried through a
    /// leader's election. Failing that the page still goes back; its devices done are then
    /// pushed again when it returns.
    async fn write_record(&self, value: bytes::Bytes, key: &str) {
        let stored = tokio::select! {
            stored = xibaar_streams::retry::within(
                RECORD_RETRY_FOR,
                |_: &async_nats::jetstream::kv::PutError| true,
                || self.sender.sent.put(key, value.clone()),
            ) => stored,
            _ = self.stopped_for(STOP_GRACE) => Err(None),
        };
        if let Err(e) = stored {
            let error = e.map_or_else(|| "timed out".to_owned(), |e| e.to_string());
            tracing::warn!(%error, key, "recording a page's progress failed; its devices done would be pushed again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_record_round_trips_and_reads_empty_failures() {
        let record = PageRecord {
            done: [0, 3, 99].into(),
            failed: [(1, 2)].into(),
        };
        assert_eq!(PageRecord::decode(&record.encode()), Some(record));
        let old = PageRecord::decode(br#"{"done":[5]}"#).unwrap();
        assert_eq!(old.done, [5].into());
        assert!(old.failed.is_empty());
    }
}

//! A fan-out's jobs: pages of delivery jobs, their progress in `XIBAAR_FANOUT`, the lane's
//! pacing; and, after progress recorded by a version that stored one job per device, the next
//! page in that shape.

use bytes::Bytes;
use xibaar_core::{
    DeliveryJob, DeliveryPage, SendNotification,
    job::{DEVICE_JOB_TYPE, DEVICES_PER_PAGE, PAGE_JOB_TYPE},
};
use xibaar_streams::{
    Pipeline,
    fanout::{FanOutState, PageEnd, Progress},
};

use crate::fanout::{FanOut, FanOutError};

/// How long one put of a fan-out's progress is waited for before it is tried again.
const RECORD_ATTEMPT: std::time::Duration = std::time::Duration::from_secs(1);
/// How long it is tried in place before the fan-out fails (and is retried from its claim).
const RECORD_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// The header of a delivery page telling how many devices it carries, so that the sender can
/// make room for them before it reads the page.
pub(crate) const DEVICES_HEADER: &str = "Xibaar-Devices";

/// Devices per delivery page: [`DEVICES_PER_PAGE`], or fewer when the fan-out reads fewer at a
/// time.
pub(crate) fn devices_per_page(fanout_page_size: u32) -> usize {
    DEVICES_PER_PAGE.min(fanout_page_size.max(1) as usize)
}

fn page_end(recipient: &xibaar_store::Recipient) -> PageEnd {
    PageEnd {
        device_id: recipient.device_id.clone(),
        customer_id: recipient.customer_id.clone(),
    }
}

/// A fan-out's publishing: its jobs, its progress, its pacing.
pub(crate) struct Out<'a> {
    pub(crate) fanout: &'a FanOut,
    pub(crate) send: &'a SendNotification,
    pub(crate) correlation: &'a str,
    pub(crate) key: String,
    pub(crate) pipeline: Pipeline,
    pub(crate) traceparent: Option<String>,
    pub(crate) room: u64,
}

impl Out<'_> {
    /// One page of the audience: its pages of delivery jobs recorded, then published.
    pub(crate) async fn publish_pages(
        &mut self,
        position: &mut Progress,
        page: Vec<xibaar_store::Recipient>,
    ) -> Result<(), FanOutError> {
        if self.fanout.heard.borrow().older_senders {
            return self.publish_single_jobs(position, page).await;
        }
        let per_page = devices_per_page(self.fanout.page_size);
        let chunks: Vec<&[xibaar_store::Recipient]> = page.chunks(per_page).collect();
        self.fanout
            .pacing
            .admit(self.send.priority, chunks.len() as u64, &mut self.room)
            .await?;
        // Where the pages end, before any of them is published: a resumed fan-out cuts the
        // same ones.
        let ends: Vec<PageEnd> = chunks
            .iter()
            .filter_map(|chunk| chunk.last().map(page_end))
            .collect();
        let intent = Progress {
            pages: Some(ends.clone()),
            ..position.clone()
        };
        self.record(&intent).await?;
        for chunk in &chunks {
            self.publish_page(chunk).await?;
        }
        self.flush().await?;
        let last = ends.last().expect("a page of the audience is not empty");
        position.after = Some(last.device_id.clone());
        position.after_customer = Some(last.customer_id.clone());
        position.published += page.len() as u64;
        Ok(())
    }

    /// Pages recorded but maybe not stored before a crash: the devices up to their last end
    /// read again and cut at the same ends. A page whose devices changed meanwhile keeps its
    /// id, so JetStream still drops it if it holds it.
    pub(crate) async fn publish_again(
        &mut self,
        position: &mut Progress,
        ends: &[PageEnd],
        opted_in_to: Option<xibaar_core::Category>,
    ) -> Result<(), FanOutError> {
        let transient = |e: xibaar_store::StoreError| {
            FanOutError::Transient(format!("reading the pages to publish again: {e}"))
        };
        let end_keys: Vec<(&str, &str)> = ends
            .iter()
            .map(|e| (e.device_id.as_str(), e.customer_id.as_str()))
            .collect();
        let mut pages: Vec<Vec<xibaar_store::Recipient>> = vec![Vec::new(); ends.len()];
        let mut reading = position.clone();
        loop {
            let read = self.fanout.page(self.send, opted_in_to, &reading).await?;
            let Some(last) = read.last() else { break };
            reading.after = Some(last.device_id.clone());
            reading.after_customer = Some(last.customer_id.clone());
            let full = read.len() == self.fanout.page_size as usize;
            let keys: Vec<(&str, &str)> = read
                .iter()
                .map(|r| (r.device_id.as_str(), r.customer_id.as_str()))
                .collect();
            let places = xibaar_store::pages_of(&self.fanout.pool, &keys, &end_keys)
                .await
                .map_err(transient)?;
            let past = places.last().is_some_and(|p| *p >= ends.len());
            for (recipient, place) in read.into_iter().zip(places) {
                if let Some(page) = pages.get_mut(place) {
                    page.push(recipient);
                }
            }
            if past || !full {
                break;
            }
        }
        tracing::info!(
            pages = ends.len(),
            "publishing again the pages recorded before the fan-out stopped"
        );
        for (page, end) in pages.iter().zip(ends) {
            if page.is_empty() {
                continue;
            }
            // Named by its recorded end even when that device is gone.
            self.publish_page_named(page, end).await?;
            position.published += page.len() as u64;
        }
        self.flush().await?;
        let last = ends.last().expect("not empty");
        position.after = Some(last.device_id.clone());
        position.after_customer = Some(last.customer_id.clone());
        Ok(())
    }

    /// One page of the audience as jobs of one device: the page after progress recorded by a
    /// version that stored them (it may hold such jobs already, so it goes out in that shape
    /// again, with the same ids, which JetStream drops), and every page while a dispatcher of
    /// that version runs (it reads nothing else). Recorded first in that version's shape, so
    /// that a fan-out resumed by either version publishes the page in the same shape.
    pub(crate) async fn publish_single_jobs(
        &mut self,
        position: &mut Progress,
        page: Vec<xibaar_store::Recipient>,
    ) -> Result<(), FanOutError> {
        self.fanout
            .pacing
            .admit(self.send.priority, page.len() as u64, &mut self.room)
            .await?;
        let intent = Progress {
            pages: None,
            ..position.clone()
        };
        self.record(&intent).await?;
        let Some(last) = page.last().map(page_end) else {
            return Ok(());
        };
        let count = page.len() as u64;
        for recipient in page {
            let job = DeliveryJob {
                notification_id: self.send.notification_id,
                priority: self.send.priority,
                device_id: recipient.device_id,
                customer_id: recipient.customer_id,
                token: recipient.token,
                platform: recipient.platform,
                app_id: recipient.app_id,
                content: self.send.content.for_locale(recipient.locale.as_deref()),
                delivery: self.send.delivery.clone(),
                correlation_id: self.correlation.to_owned(),
                accepted_at: self.send.accepted_at,
            };
            let payload = serde_json::to_vec(&job)
                .map_err(|e| FanOutError::Poison(format!("encoding a delivery job: {e}")))?;
            let headers = xibaar_streams::traced_headers(
                &job.msg_id(),
                DEVICE_JOB_TYPE,
                self.traceparent.as_deref(),
            );
            self.pipeline
                .publish(job.subject(), headers, Bytes::from(payload))
                .await
                .map_err(|e| FanOutError::Transient(format!("publishing a delivery job: {e}")))?;
        }
        self.flush().await?;
        position.after = Some(last.device_id);
        position.after_customer = Some(last.customer_id);
        position.published += count;
        // Still in that version's shape: the next record says otherwise before any page.
        position.pages = None;
        Ok(())
    }

    async fn publish_page(
        &mut self,
        recipients: &[xibaar_store::Recipient],
    ) -> Result<(), FanOutError> {
        let end = page_end(recipients.last().expect("a page is not empty"));
        self.publish_page_named(recipients, &end).await
    }

    /// Publishes `recipients` as one delivery page, named by `end`.
    async fn publish_page_named(
        &mut self,
        recipients: &[xibaar_store::Recipient],
        end: &PageEnd,
    ) -> Result<(), FanOutError> {
        let send = self.send;
        let mut page = DeliveryPage::new(
            send.notification_id,
            send.priority,
            send.delivery.clone(),
            self.correlation.to_owned(),
            send.accepted_at,
        );
        for r in recipients {
            // The device's language when the notification has it, else the default.
            page.push(
                r.device_id.clone(),
                r.customer_id.clone(),
                r.token.clone(),
                r.platform,
                r.app_id.clone(),
                send.content.for_locale(r.locale.as_deref()),
            );
        }
        let msg_id =
            xibaar_core::job::page_msg_id(send.notification_id, &end.customer_id, &end.device_id);
        let payload = serde_json::to_vec(&page)
            .map_err(|e| FanOutError::Poison(format!("encoding a delivery page: {e}")))?;
        let mut headers =
            xibaar_streams::traced_headers(&msg_id, PAGE_JOB_TYPE, self.traceparent.as_deref());
        headers.insert(DEVICES_HEADER, page.devices.len().to_string().as_str());
        self.pipeline
            .publish(page.subject(), headers, Bytes::from(payload))
            .await
            .map_err(|e| FanOutError::Transient(format!("publishing a delivery page: {e}")))
    }

    pub(crate) async fn flush(&mut self) -> Result<(), FanOutError> {
        self.pipeline
            .flush()
            .await
            .map(|_| ())
            .map_err(|e| FanOutError::Transient(format!("storing delivery jobs: {e}")))
    }

    /// Records `progress`, before the pages it names are published: so it stands on the
    /// path of every push. While the bucket's leader is being elected a put may go unanswered;
    /// given [`RECORD_ATTEMPT`] instead of the usual 2 s, it lands as soon as the new leader
    /// answers (a put of the same value twice is harmless).
    async fn record(&mut self, progress: &Progress) -> Result<(), FanOutError> {
        let value = FanOutState::Progress(progress.clone()).encode();
        let (store, key) = (&self.fanout.progress, self.key.as_str());
        xibaar_streams::retry::within_giving_each(
            RECORD_RETRY_FOR,
            RECORD_ATTEMPT,
            |_: &async_nats::jetstream::kv::PutError| true,
            || store.put(key, value.clone()),
        )
        .await
        .map(|_| ())
        .map_err(|e| {
            let e = e.map_or_else(|| "timed out".to_owned(), |e| e.to_string());
            FanOutError::Transient(format!("recording fan-out progress: {e}"))
        })
    }
}

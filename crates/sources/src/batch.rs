//! One batch stored: its notifications a page at a time, its other rows (attribute events,
//! dead letters) as they come; in flight after a crash, pages already stored are skipped.

use std::time::Duration;

use async_nats::jetstream::stream::DirectGetErrorKind;
use chrono::Utc;
use xibaar_streams::Pipeline;

use crate::{
    emit::{self, Message, Origin},
    read::Built,
    row::Row,
    source::{PollError, Runner},
    state::InFlight,
};

/// Publishes in flight at once.
const WINDOW: usize = 512;

/// What a batch stored.
pub(crate) struct Written {
    /// Notifications and events stored.
    pub emitted: u64,
    /// Rows dead-lettered.
    pub rejected: u64,
}

impl Runner {
    /// Stores the batch's rows, every one of them acknowledged by JetStream when it returns.
    /// `built`: what the rows became as they were read (empty when they were not: each is
    /// built here).
    /// `recovering`: the batch a crash left in flight, whose stored pages are skipped.
    pub(crate) async fn write_batch(
        &self,
        rows: &[Row],
        built: Vec<Built>,
        origins: &[Origin],
        mut recovering: Option<InFlight>,
    ) -> Result<Written, PollError> {
        let plan = &self.plan;
        let name = &plan.name;
        let columns = plan.columns.as_ref().expect("bound when connected");
        let now = Utc::now();
        let mut pipeline = Pipeline::new(self.js.clone(), WINDOW);
        let mut rejected = 0u64;
        let mut emitted = 0u64;
        // Notifications go out a page at a time; rows that become events or dead letters are
        // stored on their own, as they come.
        let page_rows = emit::page_rows(plan.max_rate);
        let mut page = Page::default();
        // `max_rate`: row i of the batch goes out no sooner than i / rate after its start (a
        // fixed schedule is all a single publisher needs; no token bucket to share). A page
        // goes when its last row may.
        let started = tokio::time::Instant::now();
        let due = |i: usize| {
            plan.max_rate
                .map(|rate| started + Duration::from_secs_f64(i as f64 / f64::from(rate)))
        };
        let mut built = built.into_iter();
        for (i, (row, origin)) in rows.iter().zip(origins).enumerate() {
            let built = built.next().unwrap_or_else(|| emit::emit(plan, row, now));
            match built {
                Ok(emit::Emitted::Notification(send)) => {
                    page.notifications.push(send);
                    page.last_row = i;
                    if page.notifications.len() >= page_rows {
                        emitted += self
                            .store_page(&mut pipeline, &mut page, origins, &mut recovering, due(i))
                            .await?;
                    }
                }
                Ok(emit::Emitted::Event(message)) => {
                    // Attribute events only restate the row: storing one twice changes
                    // nothing, so a recovery does not look for them.
                    if let Some(at) = due(i) {
                        tokio::time::sleep_until(at).await;
                    }
                    pipeline
                        .publish(message.subject, message.headers, message.payload)
                        .await
                        .map_err(|e| PollError::Nats(format!("publishing: {e}")))?;
                    emitted += 1;
                }
                Err(reason) => {
                    rejected += 1;
                    let (subject, headers, payload) =
                        emit::dead_letter(plan, columns, row, origin, &reason);
                    tracing::warn!(source = %name, key = %origin.key, %reason, "row rejected; kept in XIBAAR_DLQ");
                    pipeline
                        .publish(subject, headers, payload)
                        .await
                        .map_err(|e| PollError::Nats(format!("dead-lettering: {e}")))?;
                }
            }
        }
        let last = page.last_row;
        emitted += self
            .store_page(
                &mut pipeline,
                &mut page,
                origins,
                &mut recovering,
                due(last),
            )
            .await?;
        pipeline
            .flush()
            .await
            .map_err(|e| PollError::Nats(format!("publishing: {e}")))?;
        Ok(Written { emitted, rejected })
    }

    /// Publishes the page's notifications as one command (none if the page is empty, or if a
    /// recovery finds the very same page stored): how many it published. `origins`: the
    /// batch's rows' places.
    async fn store_page(
        &self,
        pipeline: &mut Pipeline,
        page: &mut Page,
        origins: &[Origin],
        recovering: &mut Option<InFlight>,
        due: Option<tokio::time::Instant>,
    ) -> Result<u64, PollError> {
        let count = page.notifications.len() as u64;
        let whole = self.dispatchers.want_whole_pages();
        let Some(message) = emit::page(std::mem::take(&mut page.notifications), whole) else {
            return Ok(0);
        };
        if let Some(in_flight) = recovering {
            // The watermark of the page's last row.
            if origins[page.last_row].watermark > in_flight.through {
                *recovering = None;
            } else if self.already_stored(&message).await? {
                return Ok(0);
            }
        }
        if let Some(at) = due {
            tokio::time::sleep_until(at).await;
        }
        pipeline
            .publish(message.subject, message.headers, message.payload)
            .await
            .map_err(|e| PollError::Nats(format!("publishing: {e}")))?;
        Ok(count)
    }

    /// Whether a page of the in-flight range is in its command stream already: the same
    /// notifications, stored under its first one's subject. A page paged differently the
    /// first time (rows added under the watermark since) is stored again; the dispatcher's
    /// per-notification claim keeps its notifications from going out twice.
    async fn already_stored(&self, message: &Message) -> Result<bool, PollError> {
        let Some((priority, ids)) = &message.page else {
            return Ok(false);
        };
        let stream = self
            .js
            .get_stream_no_info(priority.command_stream())
            .await
            .map_err(|e| PollError::Nats(e.to_string()))?;
        match stream.direct_get_last_for_subject(&message.subject).await {
            Ok(stored) => {
                let Ok(stored) = serde_json::from_slice::<xibaar_core::Command>(&stored.payload)
                else {
                    return Ok(false);
                };
                Ok(stored
                    .notifications()
                    .iter()
                    .map(|n| n.notification_id)
                    .eq(ids.iter().copied()))
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(false),
            Err(e) => Err(PollError::Nats(e.to_string())),
        }
    }
}

/// Notifications gathered for one stored page.
#[derive(Default)]
struct Page {
    notifications: Vec<emit::Encoded>,
    /// Its last row's place in the batch.
    last_row: usize,
}

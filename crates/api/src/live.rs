//! Hands the live inbox streams of customers whose inbox gained items their new items. The
//! projector announces the customers with `pg_notify` in the transaction that adds the items,
//! so a wake-up always finds the items committed. The hub reads the new items of every
//! customer with a stream open in one query per announcement, not one per stream: a broadcast
//! to ten thousand open streams is one read, not ten thousand. Each stream sends what is above
//! its own position, which is also what makes `Last-Event-ID` resumption exact.
//!
//! Whenever the hub cannot vouch for having read everything (the announcement's query failed,
//! a customer it names had nothing above the hub's position, the listening connection dropped,
//! more items arrived than a stream is handed at once), it asks the streams concerned to read
//! for themselves instead.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::HeaderValue;
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use xibaar_core::CustomerId;
use xibaar_store::InboxItem;

use crate::{problem::ApiError, routes::read_failed};

/// New items handed to a customer's streams at once, at most; more make them read.
const HANDED: usize = 16;

/// What the hub tells a customer's streams.
#[derive(Debug, Default, Clone)]
pub struct Wake {
    /// The customer's newest items the hub read, oldest first (at most [`HANDED`]).
    pub items: Arc<Vec<xibaar_store::InboxItem>>,
    /// Bumped when the streams must read from the table themselves.
    pub reads: u64,
    /// The position the hub reads this customer's announced items above.
    after: i64,
}

/// Customers with a live stream open, and what each stream is to send.
#[derive(Default)]
pub struct InboxHub {
    watchers: Mutex<HashMap<String, watch::Sender<Wake>>>,
    /// The highest item position the hub knows committed: a customer's first stream has its
    /// announced items read above it (older ones the stream reads itself).
    head: Mutex<i64>,
}

/// A stream's registration; dropping it unregisters the customer when it was their last one.
pub struct Subscription {
    hub: Arc<InboxHub>,
    customer: String,
    pub changes: watch::Receiver<Wake>,
}

/// Live streams open on this api, whichever way they are served.
const OPEN_STREAMS: &str = "xibaar_api_live_streams";

impl Drop for Subscription {
    fn drop(&mut self) {
        metrics::gauge!(OPEN_STREAMS).decrement(1.0);
        let mut watchers = self.hub.lock();
        if watchers
            .get(&self.customer)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            watchers.remove(&self.customer);
        }
    }
}

impl InboxHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Wake>>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(self: &Arc<Self>, customer: &str) -> Subscription {
        let changes = self
            .lock()
            .entry(customer.to_owned())
            .or_insert_with(|| {
                let after = *self.head.lock().unwrap_or_else(|e| e.into_inner());
                watch::channel(Wake {
                    after,
                    ..Wake::default()
                })
                .0
            })
            .subscribe();
        metrics::gauge!(OPEN_STREAMS).increment(1.0);
        Subscription {
            hub: self.clone(),
            customer: customer.to_owned(),
            changes,
        }
    }

    /// Reads the new items of the customers in an announcement that have a stream open, and
    /// hands each customer's streams theirs.
    async fn deliver(&self, pool: &PgPool, announced: &str) {
        let (customers, after): (Vec<&str>, Vec<i64>) = {
            let watchers = self.lock();
            // Each customer once: a name read twice would join their items twice.
            let mut named = HashSet::new();
            announced
                .lines()
                .filter(|c| named.insert(*c))
                .filter_map(|c| Some((c, watchers.get(c)?.borrow().after)))
                .unzip()
        };
        if customers.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let rows = match xibaar_store::inbox_new(pool, &customers, &after).await {
            Ok(rows) => {
                tracing::debug!(customers = customers.len(), items = rows.len(), elapsed = ?started.elapsed(), "announced inbox items read");
                rows
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading announced inbox items failed; the streams read them");
                self.make_read(customers.iter().copied());
                return;
            }
        };
        let mut by_customer: HashMap<&str, Vec<xibaar_store::InboxItem>> = HashMap::new();
        let mut head = 0;
        for (customer, item) in &rows {
            head = head.max(item.position);
            by_customer
                .entry(customer.as_str())
                .or_default()
                .push(item.clone());
        }
        {
            let mut known = self.head.lock().unwrap_or_else(|e| e.into_inner());
            *known = (*known).max(head);
        }
        let watchers = self.lock();
        for customer in customers {
            let Some(tx) = watchers.get(customer) else {
                continue;
            };
            match by_customer.remove(customer) {
                Some(items) => tx.send_modify(|wake| {
                    wake.after = items.iter().map(|i| i.position).fold(wake.after, i64::max);
                    let handed = Arc::make_mut(&mut wake.items);
                    handed.extend(items);
                    if handed.len() > HANDED {
                        handed.drain(..handed.len() - HANDED);
                        // Some were dropped before every stream took them.
                        wake.reads += 1;
                    }
                }),
                // Announced, yet nothing above what the hub read: it cannot vouch.
                None => tx.send_modify(|wake| wake.reads += 1),
            }
        }
    }

    fn make_read<'a>(&self, customers: impl Iterator<Item = &'a str>) {
        let watchers = self.lock();
        for customer in customers {
            if let Some(tx) = watchers.get(customer) {
                tx.send_modify(|wake| wake.reads += 1);
            }
        }
    }

    fn wake_all(&self) {
        for tx in self.lock().values() {
            tx.send_modify(|wake| wake.reads += 1);
        }
    }

    /// Listens on [`xibaar_store::INBOX_CHANNEL`] until `shutdown`, then ends every open stream.
    pub fn spawn_listener(self: Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.listen(&pool) => {}
                }
                // The connection failed: what it would have announced is unknown.
                self.wake_all();
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            // Dropping the senders ends the streams, so the server's graceful stop is not held.
            self.lock().clear();
        });
    }

    async fn listen(&self, pool: &PgPool) {
        let mut listener = match PgListener::connect_with(pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for inbox items; retrying");
                return;
            }
        };
        if let Err(e) = listener.listen(xibaar_store::INBOX_CHANNEL).await {
            tracing::debug!(error = %e, "cannot listen for inbox items; retrying");
            return;
        }
        match xibaar_store::inbox_head(pool).await {
            Ok(head) => *self.head.lock().unwrap_or_else(|e| e.into_inner()) = head,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the inbox head; retrying");
                return;
            }
        }
        // Items committed before LISTEN took effect are found by the streams' own reads.
        self.wake_all();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => self.deliver(pool, notification.payload()).await,
                Ok(None) => {
                    // `try_recv` reports a lost connection instead of reconnecting silently,
                    // so the streams are woken for what may have been missed.
                    tracing::debug!("inbox listener connection lost; reconnecting");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "inbox listener failed; reconnecting");
                    return;
                }
            }
        }
    }
}

/// New items of one customer's stream kept at once, at most, as the table is read.
const READ_PAGE: i64 = 100;

/// One open live stream: its customer, the last item it sent, and what it has yet to send.
pub(crate) struct Live {
    pool: PgPool,
    customer: CustomerId,
    last: i64,
    ready: VecDeque<InboxItem>,
    subscription: Subscription,
    /// The hub's read request last satisfied by reading the table (`None`: not read yet).
    reads_done: Option<u64>,
}

/// The handed items above `last`, each once and in order. The hub hands them oldest first;
/// keeping only an item above the one kept before makes a repeated item harmless.
fn newer_than(items: &[InboxItem], mut last: i64) -> impl Iterator<Item = InboxItem> + '_ {
    items
        .iter()
        .filter(move |item| {
            let newer = item.position > last;
            last = last.max(item.position);
            newer
        })
        .cloned()
}

/// The position a `Last-Event-ID` header resumes after; `None` without one.
pub(crate) fn resume_after(header: Option<&HeaderValue>) -> Result<Option<i64>, ApiError> {
    header
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|p| *p >= 0)
                .ok_or_else(|| {
                    ApiError::validation("Last-Event-ID", "must be an id this stream sent")
                })
        })
        .transpose()
}

impl Live {
    /// Opens `customer`'s stream after the item at `after`, or at their newest item now.
    pub(crate) async fn open(
        hub: &Arc<InboxHub>,
        pool: &PgPool,
        customer: CustomerId,
        after: Option<i64>,
    ) -> Result<Self, ApiError> {
        // Registered before the first read, so an item committed in between still wakes it.
        let subscription = hub.subscribe(customer.as_str());
        let last = match after {
            Some(after) => after,
            None => {
                xibaar_store::inbox_summary(pool, &customer)
                    .await
                    .map_err(read_failed)?
                    .1
            }
        };
        Ok(Self {
            pool: pool.clone(),
            customer,
            last,
            ready: VecDeque::new(),
            subscription,
            reads_done: None,
        })
    }

    /// The stream's next item, in position order, once there is one; `None` when the api
    /// stops. Cancelling it loses nothing: an item is taken only when it is returned.
    pub(crate) async fn next(&mut self) -> Option<InboxItem> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                self.last = item.position;
                return Some(item);
            }
            // Marked before looking: a wake-up meanwhile is not lost.
            let wake = self.subscription.changes.borrow_and_update().clone();
            // Asked to read (or never read yet): the table, from this stream's own position,
            // has everything in order, what the hub handed over included.
            if self.reads_done != Some(wake.reads) {
                // Boxed: an idle stream does not carry the size of a query in flight.
                let read = Box::pin(xibaar_store::inbox_after(
                    &self.pool,
                    &self.customer,
                    self.last,
                    READ_PAGE,
                ));
                match read.await {
                    Ok(items) => {
                        // A full page may have more behind it: read again after sending it.
                        if items.len() < READ_PAGE as usize {
                            self.reads_done = Some(wake.reads);
                        }
                        self.ready.extend(items);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading new inbox items failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                continue;
            }
            self.ready.extend(newer_than(&wake.items, self.last));
            if !self.ready.is_empty() {
                continue;
            }
            if self.subscription.changes.changed().await.is_err() {
                return None; // the api is stopping
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use xibaar_store::InboxItem;

    use super::{InboxHub, newer_than};

    fn item(position: i64) -> InboxItem {
        InboxItem {
            notification_id: uuid::Uuid::now_v7(),
            position,
            title: format!("item {position}"),
            body: String::new(),
            language: None,
            data: serde_json::json!({}),
            category: None,
            priority: "normal".into(),
            received_at: chrono::Utc::now(),
            read_at: None,
        }
    }

    #[test]
    fn a_stream_takes_each_handed_item_above_its_position_once() {
        let handed: Vec<InboxItem> = [3, 4, 4, 5, 5, 5, 7].into_iter().map(item).collect();
        let taken: Vec<i64> = newer_than(&handed, 4).map(|i| i.position).collect();
        assert_eq!(taken, [5, 7]);
        assert_eq!(newer_than(&handed, 7).count(), 0);
    }

    /// A customer named several times in one announcement (one name per item the projector
    /// added) has each of their new items handed once.
    #[tokio::test]
    async fn a_customer_announced_several_times_is_handed_each_item_once() {
        let pg = xibaar_testkit::Postgres::start().await.unwrap();
        let pool = pg.pool("hub").await.unwrap();
        xibaar_store::migrate(&pool).await.unwrap();
        for position in [11_i64, 12, 13] {
            let id = uuid::Uuid::now_v7();
            sqlx::query(
                "INSERT INTO notifications (notification_id, priority, title, audience, \
                 requested_by, status, accepted_at) \
                 VALUES ($1, 'normal', $2, '{}', 'test', 'accepted', now())",
            )
            .bind(id)
            .bind(format!("item {position}"))
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO inbox (customer_id, notification_id, position, received_at) \
                 VALUES ('ivy', $1, $2, now())",
            )
            .bind(id)
            .bind(position)
            .execute(&pool)
            .await
            .unwrap();
        }
        let hub = Arc::new(InboxHub::default());
        *hub.head.lock().unwrap() = 10;
        let ivy = hub.subscribe("ivy");
        hub.deliver(&pool, "ivy\nivy\nivy").await;
        let wake = ivy.changes.borrow().clone();
        let handed: Vec<i64> = wake.items.iter().map(|i| i.position).collect();
        assert_eq!(handed, [11, 12, 13]);
        assert_eq!(wake.reads, 0, "the hub read them all: no stream need read");
    }
}

//! Wakes the live inbox streams of customers whose inbox gained items. The projector announces
//! them with `pg_notify` in the transaction that adds the items, so a wake-up always finds the
//! items committed; the streams then read them from the table by position, which is also what
//! makes `Last-Event-ID` resumption exact. A lost notification (the listening connection
//! dropped) wakes every stream instead.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Customers with a live stream open, each with a counter bumped on every wake-up.
#[derive(Default)]
pub struct InboxHub {
    watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
}

/// A stream's registration; dropping it unregisters the customer when it was their last one.
pub struct Subscription {
    hub: Arc<InboxHub>,
    customer: String,
    pub changes: watch::Receiver<u64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
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
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(self: &Arc<Self>, customer: &str) -> Subscription {
        let changes = self
            .lock()
            .entry(customer.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Subscription {
            hub: self.clone(),
            customer: customer.to_owned(),
            changes,
        }
    }

    fn wake(&self, customers: &str) {
        let watchers = self.lock();
        for customer in customers.lines() {
            if let Some(tx) = watchers.get(customer) {
                tx.send_modify(|n| *n += 1);
            }
        }
    }

    fn wake_all(&self) {
        for tx in self.lock().values() {
            tx.send_modify(|n| *n += 1);
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
        // Items committed before LISTEN took effect are found by the streams' own reads.
        self.wake_all();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => self.wake(notification.payload()),
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

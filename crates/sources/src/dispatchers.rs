//! Which pages the running dispatchers read. A source states once what a page's notifications
//! share (`shared`), which dispatchers of earlier versions cannot read: while one of them is
//! heard (and for [`STALE`](presence::STALE) after), pages go out whole. Listened to on the
//! dispatchers' own presence announcements ([`presence::Roster`]), as fan-outs do for delivery
//! pages.
//!
//! Nothing is awaited at start: a dispatcher is heard within [`INTERVAL`](presence::INTERVAL),
//! and a page written before that reaches an earlier dispatcher only when the sources were
//! upgraded before the dispatchers, against the documented order (docs/operations.md); that
//! dispatcher parks the page in the DLQ, from where `xibaar dlq retry` sends it once a current
//! one runs.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use xibaar_core::presence;

/// Whether a dispatcher that reads only whole pages is running.
#[derive(Debug, Clone, Default)]
pub struct Dispatchers {
    earlier: Arc<AtomicBool>,
}

impl Dispatchers {
    /// Pages must go out whole: a dispatcher that reads nothing else was heard.
    pub fn want_whole_pages(&self) -> bool {
        self.earlier.load(Ordering::Relaxed)
    }

    /// Listens to the dispatchers' announcements until `stop`.
    pub async fn listen(client: &async_nats::Client, stop: CancellationToken) -> Self {
        let dispatchers = Self::default();
        let mut announcements = match client.subscribe(presence::SUBJECTS).await {
            Ok(subscription) => subscription,
            Err(e) => {
                // NATS not answering stops the sources' publishing as well.
                tracing::warn!(error = %e, "cannot hear the dispatchers; pages state their common fields once");
                return dispatchers;
            }
        };
        let earlier = dispatchers.earlier.clone();
        tokio::spawn(async move {
            let mut heard = presence::Roster::default();
            let mut tick = tokio::time::interval(presence::INTERVAL / 4);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    message = announcements.next() => {
                        let Some(message) = message else { return };
                        heard.hear(message.subject.as_str(), &message.payload);
                    }
                    _ = tick.tick() => {}
                }
                heard.forget_stale();
                let now = heard.any_not_reading(presence::SHARED_PAGES);
                if earlier.swap(now, Ordering::Relaxed) != now {
                    if now {
                        tracing::info!(
                            "a dispatcher of an earlier version is running: sources write whole pages until it is gone"
                        );
                    } else {
                        tracing::info!(
                            "no dispatcher of an earlier version is left: pages state their common fields once"
                        );
                    }
                }
            }
        });
        dispatchers
    }
}

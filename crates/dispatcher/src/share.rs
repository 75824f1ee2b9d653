//! FCM's quota belongs to the Firebase project, not to a process: with several dispatchers the
//! configured per-project rate (`fcm.rate_limit_per_minute`) must hold for all of them
//! together. Each dispatcher announces itself on core NATS every [`INTERVAL`]
//! (`xibaar.dispatchers.present.<instance>`), counts the dispatchers heard within [`STALE`],
//! and keeps to that share of the rate.
//!
//! The announcement also says what the dispatcher reads ([`xibaar_core::presence`]): delivery
//! pages, and notification pages that state their common fields once. Earlier versions
//! announce nothing and read only jobs of one device; while one of them is heard, fan-outs
//! publish jobs of one device ([`Heard::older_senders`]), so a rolling upgrade parks nothing in
//! the DLQ. Sources listen for themselves (`xibaar_sources::dispatchers`).
//!
//! The sum never exceeds the rate for long: a dispatcher starting listens for one interval
//! before its first push, so it knows the others, and the others lower their share within an
//! interval of hearing it. In that interval the newcomer may send while the others still hold
//! their old share; it starts with an empty bucket, so that costs at most its own first
//! interval's share. When a dispatcher stops or dies the others raise their share once it has
//! been silent for [`STALE`]: until then they send less than they may, never more.

use std::{num::NonZeroU32, sync::Arc, time::Instant};

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use xibaar_fcm::FcmClient;

use xibaar_core::presence::{self, SUBJECTS};
pub use xibaar_core::presence::{INTERVAL, STALE};

/// What a dispatcher knows of the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heard {
    /// The first interval has been listened to (or NATS could not be heard: then alone).
    pub ready: bool,
    /// A dispatcher of an earlier version, which reads only jobs of one device, was heard
    /// within [`STALE`].
    pub older_senders: bool,
}

/// Keeps `fcm`'s share of every project's rate to `1 / dispatchers heard`, and `heard` up to
/// date.
pub(crate) async fn keep_share(
    client: async_nats::Client,
    fcm: Arc<FcmClient>,
    heard_tx: watch::Sender<Heard>,
    shutdown: CancellationToken,
) {
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let subject = presence::subject(&instance);
    let announcement = bytes::Bytes::from(presence::announcement());
    let mut heard = presence::Roster::default();
    heard.hear(&subject, &announcement);
    let mut presence = match client.subscribe(SUBJECTS).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot hear the other dispatchers; keeping the whole FCM rate");
            None
        }
    };
    let started = Instant::now();
    let mut share = 0_u32;
    let mut tick = tokio::time::interval(INTERVAL / 4);
    let mut last_announce: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            message = async {
                match presence.as_mut() {
                    Some(p) => p.next().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(message) = message {
                    heard.hear(message.subject.as_str(), &message.payload);
                }
            }
            _ = tick.tick() => {
                if last_announce.is_none_or(|at| at.elapsed() >= INTERVAL) {
                    // Fire and forget: a lost announcement only delays the others' count.
                    let _ = client
                        .publish(subject.clone(), announcement.clone())
                        .await;
                    last_announce = Some(Instant::now());
                }
            }
        }
        heard.forget_stale();
        // Itself, whether or not its own announcement came back.
        heard.hear(&subject, &announcement);
        let count = u32::try_from(heard.len()).unwrap_or(u32::MAX);
        if count != share {
            share = count;
            fcm.set_share(NonZeroU32::new(count).unwrap_or(NonZeroU32::MIN));
            tracing::info!(
                dispatchers = count,
                "keeping to this share of each Firebase project's rate"
            );
        }
        let now = Heard {
            ready: heard_tx.borrow().ready || started.elapsed() >= INTERVAL + INTERVAL / 4,
            older_senders: heard.any_not_reading(presence::DELIVERY_PAGES),
        };
        if now != *heard_tx.borrow() {
            if now.older_senders != heard_tx.borrow().older_senders {
                if now.older_senders {
                    tracing::info!(
                        "a dispatcher of an earlier version is running: fan-outs store jobs of one device until it is gone"
                    );
                } else {
                    tracing::info!(
                        "no dispatcher of an earlier version is left: fan-outs store pages"
                    );
                }
            }
            let _ = heard_tx.send(now);
        }
    }
}

//! Dispatchers announce themselves on core NATS every [`INTERVAL`]
//! (`xibaar.dispatchers.present.<instance>`), and say in the announcement what they read: words
//! separated by spaces. Other processes listen to shape what they write for the dispatchers
//! that run: fan-outs store jobs of one device while a dispatcher that does not read
//! [`DELIVERY_PAGES`] is heard, sources write pages without `shared` while one that does not
//! read [`SHARED_PAGES`] is heard. Versions before the words were introduced announce nothing.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// How often a dispatcher announces itself.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// A dispatcher not heard for this long is gone.
pub const STALE: Duration = Duration::from_secs(7);
/// Every dispatcher's announcements.
pub const SUBJECTS: &str = "xibaar.dispatchers.present.*";

/// Reads delivery jobs that are pages of devices (`delivery_page`).
pub const DELIVERY_PAGES: &str = crate::job::PAGE_JOB_TYPE;
/// Reads pages of notifications that state their common fields once (`shared`).
pub const SHARED_PAGES: &str = "send_notifications.shared";

/// What this version's dispatchers announce.
pub fn announcement() -> String {
    format!("{DELIVERY_PAGES} {SHARED_PAGES}")
}

/// Where the dispatcher `instance` announces itself.
pub fn subject(instance: &str) -> String {
    format!("xibaar.dispatchers.present.{instance}")
}

/// Whether the dispatcher that announced `announcement` reads `what`.
pub fn reads(announcement: &[u8], what: &str) -> bool {
    announcement
        .split(|&b| b == b' ')
        .any(|word| word == what.as_bytes())
}

/// The dispatchers heard within [`STALE`], and what each announced: what the dispatchers'
/// own share of the rate and the writers that shape their output for them both keep.
#[derive(Debug, Default)]
pub struct Roster {
    heard: HashMap<String, (Instant, Vec<u8>)>,
}

impl Roster {
    /// An announcement heard on `subject` (`xibaar.dispatchers.present.<instance>`).
    pub fn hear(&mut self, subject: &str, announcement: &[u8]) {
        if let Some(instance) = subject.rsplit('.').next() {
            self.heard
                .insert(instance.to_owned(), (Instant::now(), announcement.to_vec()));
        }
    }

    /// Forgets the dispatchers not heard for [`STALE`].
    pub fn forget_stale(&mut self) {
        self.heard.retain(|_, (at, _)| at.elapsed() < STALE);
    }

    /// How many dispatchers are heard.
    pub fn len(&self) -> usize {
        self.heard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heard.is_empty()
    }

    /// Whether a dispatcher heard does not read `what`.
    pub fn any_not_reading(&self, what: &str) -> bool {
        self.heard
            .values()
            .any(|(_, announcement)| !reads(announcement, what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_roster_knows_who_does_not_read_what() {
        let mut roster = Roster::default();
        roster.hear("xibaar.dispatchers.present.a", announcement().as_bytes());
        assert!(!roster.any_not_reading(SHARED_PAGES));
        roster.hear("xibaar.dispatchers.present.b", b"delivery_page");
        assert!(roster.any_not_reading(SHARED_PAGES));
        assert!(!roster.any_not_reading(DELIVERY_PAGES));
        // Heard again with the current announcement: one entry, no earlier reader left.
        roster.hear("xibaar.dispatchers.present.b", announcement().as_bytes());
        assert_eq!(roster.len(), 2);
        assert!(!roster.any_not_reading(SHARED_PAGES));
        roster.forget_stale();
        assert_eq!(roster.len(), 2);
    }

    #[test]
    fn an_announcement_says_what_its_dispatcher_reads() {
        let now = announcement();
        assert!(reads(now.as_bytes(), DELIVERY_PAGES));
        assert!(reads(now.as_bytes(), SHARED_PAGES));
        // The previous version's.
        assert!(reads(b"delivery_page", DELIVERY_PAGES));
        assert!(!reads(b"delivery_page", SHARED_PAGES));
        // Earlier ones announced nothing.
        assert!(!reads(b"", DELIVERY_PAGES));
        assert!(!reads(b"delivery_pages", DELIVERY_PAGES));
    }
}

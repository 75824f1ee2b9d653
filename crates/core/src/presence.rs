//! Dispatchers announce themselves on core NATS every [`INTERVAL`]
//! (`xibaar.dispatchers.present.<instance>`), and say in the announcement what they read: words
//! separated by spaces. Other processes listen to shape what they write for the dispatchers
//! that run: fan-outs store jobs of one device while a dispatcher that does not read
//! [`DELIVERY_PAGES`] is heard, sources write pages without `shared` while one that does not
//! read [`SHARED_PAGES`] is heard. Versions before the words were introduced announce nothing.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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

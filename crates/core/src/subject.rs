//! Subject names. Every subject the pipeline publishes on is built here.

use crate::{ids::DeviceId, ids::NotificationId, priority::Priority};

pub const COMMANDS_ALL: &str = "xibaar.cmd.>";
pub const DELIVERIES_ALL: &str = "xibaar.dlv.>";
pub const EVENTS_ALL: &str = "xibaar.evt.>";
pub const DLQ_ALL: &str = "xibaar.dlq.>";

pub fn command(priority: Priority, id: NotificationId) -> String {
    format!("xibaar.cmd.{priority}.{id}")
}

/// Where a scheduled command waits, in its priority's command stream, until JetStream's message
/// scheduler publishes it to [`command`] at its time.
pub fn schedule(priority: Priority, id: NotificationId) -> String {
    format!("xibaar.sched.{priority}.{id}")
}

pub fn command_filter(priority: Priority) -> String {
    format!("xibaar.cmd.{priority}.>")
}

pub fn delivery(priority: Priority, id: NotificationId, device: &DeviceId) -> String {
    format!("xibaar.dlv.{priority}.{id}.{device}")
}

/// The single job of a topic or condition notification. `~` cannot start a device id.
pub fn topic_delivery(priority: Priority, id: NotificationId) -> String {
    format!("xibaar.dlv.{priority}.{id}.~topic")
}

/// A page of a notification's devices. `~` cannot start a device id.
pub fn delivery_page(priority: Priority, id: NotificationId) -> String {
    format!("xibaar.dlv.{priority}.{id}.~page")
}

pub fn delivery_filter(priority: Priority) -> String {
    format!("xibaar.dlv.{priority}.>")
}

/// `xibaar.evt.<aggregate>.<id>.<event>`, e.g. `xibaar.evt.delivery.<notification>.succeeded`.
pub fn event(event_type: &str, aggregate_id: &str) -> String {
    let (aggregate, name) = event_type.split_once('.').unwrap_or((event_type, "event"));
    format!("xibaar.evt.{aggregate}.{aggregate_id}.{name}")
}

/// Dead letters keep the subject they were taken from: `xibaar.dlq.<original subject minus xibaar.>`.
pub fn dead_letter(original: &str) -> String {
    let rest = original.strip_prefix("xibaar.").unwrap_or(original);
    format!("xibaar.dlq.{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_subjects_put_the_aggregate_first() {
        assert_eq!(
            event("delivery.succeeded", "n1"),
            "xibaar.evt.delivery.n1.succeeded"
        );
        assert_eq!(dead_letter("xibaar.dlv.low.n.d"), "xibaar.dlq.dlv.low.n.d");
    }
}

//! JetStream plumbing shared by every role: the stream and consumer definitions of `streams/`,
//! applying them, connecting, and pipelined publishing.

mod apply;
mod coalesce;
mod connect;
mod definitions;
pub mod dlq;
pub mod fanout;
pub mod lag;
mod publish;
pub mod replay;
pub mod retry;
pub mod trace;

pub use apply::{ApplyError, Change, apply};
pub use coalesce::CoalescingPublisher;
pub use connect::{ConnectError, connect, server_list};
pub use definitions::{ConsumerDef, DefinitionError, Definitions, StreamDef};
pub use publish::{
    Pipeline, PipelineSummary, event_headers, headers, publish_event, traced_headers,
};

/// Durable consumer names, as declared in `streams/consumers/`.
pub mod consumers {
    use xibaar_core::Priority;

    pub const DISPATCHER: &str = "dispatcher";

    pub fn sender(priority: Priority) -> String {
        format!("sender-{priority}")
    }
}

/// Stream names, as declared in `streams/`.
pub mod names {
    pub const DELIVERIES: &str = "XIBAAR_DELIVERIES";
    pub const EVENTS: &str = "XIBAAR_EVENTS";
    pub const DLQ: &str = "XIBAAR_DLQ";
    /// The sent-marker key-value bucket (stream `KV_XIBAAR_SENT`).
    pub const SENT_BUCKET: &str = "XIBAAR_SENT";
    /// Fan-out progress per notification (stream `KV_XIBAAR_FANOUT`).
    pub const FANOUT_BUCKET: &str = "XIBAAR_FANOUT";
    /// Idempotency claims per keyed notification (stream `KV_XIBAAR_IDEMPOTENCY`).
    pub const IDEMPOTENCY_BUCKET: &str = "XIBAAR_IDEMPOTENCY";
    /// The archived position and the archiver's lease (stream `KV_XIBAAR_ARCHIVE`).
    pub const ARCHIVE_BUCKET: &str = "XIBAAR_ARCHIVE";
    /// Each source's watermark, status and pause (stream `KV_XIBAAR_SOURCES`).
    pub const SOURCES_BUCKET: &str = "XIBAAR_SOURCES";
}

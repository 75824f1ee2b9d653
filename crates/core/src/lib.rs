//! The Xibaar domain: priorities, identifiers, commands, delivery jobs and the event catalog.
//!
//! Everything that crosses a process boundary (HTTP, NATS, SQL) is parsed into these types at the
//! edge; code inside the pipeline trusts them.

pub mod command;
mod content_rules;
mod encode;
pub mod event;
pub mod ids;
mod instant;
pub mod job;
pub mod language;
pub mod notification;
pub mod page;
pub mod presence;
pub mod priority;
pub mod request;
pub mod schema;
pub mod segment;
pub mod subject;

pub use command::{Command, NotificationPage, SendNotification};
pub use event::{Actor, ActorKind, Decoded, Event, EventEnvelope, EventMeta};
pub use ids::{CustomerId, DeviceId, FcmToken, InvalidId, NotificationId};
pub use job::{DeliveryJob, DeliveryPage, PageDevice, TopicJob};
pub use language::{Language, Text};
pub use notification::{Audience, Category, Content, ContentError, DeliveryOptions, Platform};
pub use priority::{Priority, UnknownPriority};
pub use request::{RequestError, SendRequest};
pub use segment::{Contract, CustomerAttributes};

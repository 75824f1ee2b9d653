//! A page of notifications on the wire: what its notifications have in common stated once.
//!
//! A source's page holds a hundred notifications accepted at one instant, by one actor, at one
//! priority, in one category, with one expiry: a quarter of each notification's bytes, which
//! nats-server stored a hundred times over (docs/decisions.md, "A page states once what its
//! notifications share"). On the wire a page is
//! `{"shared": {…}, "notifications": [{…}, …]}`: each of the fields of [`PageShared`] is in
//! `shared` when every notification of the page has it with the same value, and in each
//! notification otherwise. Pages written before `shared` existed (every field in every
//! notification) read the same way.
//!
//! A page always shares its priority (a page is one priority), so a reader of the earlier
//! shape fails on a page that shares fields (`missing field priority`) instead of reading it
//! without them.

use std::borrow::Borrow;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, ser::SerializeMap, ser::SerializeStruct};

use crate::{
    Audience, Category, Content, NotificationId, Priority, SendNotification, event::Actor,
    notification::DeliveryOptions,
};

/// Notifications stored together and fanned out one by one, each under its own id: the
/// dispatcher's per-notification claim, not the page's `Nats-Msg-Id`, is what keeps a
/// notification that arrives again in another page from being sent twice.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "PageWire")]
pub struct NotificationPage {
    /// At least one, all of the same priority.
    pub notifications: Vec<SendNotification>,
}

/// The fields a page may state once for its notifications, in the order they are written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PageShared {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::instant::serialize_option"
    )]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::instant::serialize_option"
    )]
    pub send_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<Actor>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::instant::serialize_option"
    )]
    pub accepted_at: Option<DateTime<Utc>>,
}

impl PageShared {
    /// A notification's own values of these fields.
    pub fn of(n: &SendNotification) -> Self {
        Self::with_actor(n, n.requested_by.clone())
    }

    fn with_actor(n: &SendNotification, actor: Actor) -> Self {
        Self {
            priority: Some(n.priority),
            category: n.category,
            expires_at: n.delivery.expires_at,
            send_at: n.delivery.send_at,
            requested_by: Some(actor),
            accepted_at: Some(n.accepted_at),
        }
    }

    /// What every one of `all` has, with the same value (nothing when `all` is empty).
    pub fn common<T: Borrow<Self>>(all: impl IntoIterator<Item = T>) -> Self {
        let mut all = all.into_iter();
        let Some(first) = all.next() else {
            return Self::default();
        };
        let mut common = first.borrow().clone();
        fn keep<V: PartialEq>(common: &mut Option<V>, other: &Option<V>) {
            if common.as_ref() != other.as_ref() {
                *common = None;
            }
        }
        for other in all {
            let other = other.borrow();
            keep(&mut common.priority, &other.priority);
            keep(&mut common.category, &other.category);
            keep(&mut common.expires_at, &other.expires_at);
            keep(&mut common.send_at, &other.send_at);
            keep(&mut common.requested_by, &other.requested_by);
            keep(&mut common.accepted_at, &other.accepted_at);
        }
        common
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// [`PageShared::of`] without copying the actor, when the notification is done with.
impl From<SendNotification> for PageShared {
    fn from(mut n: SendNotification) -> Self {
        // An empty id does not allocate.
        let actor = std::mem::replace(&mut n.requested_by, Actor::system(""));
        Self::with_actor(&n, actor)
    }
}

/// A page as read: the shape written now and the earlier one alike.
#[derive(Deserialize, JsonSchema)]
#[schemars(
    rename = "NotificationPage",
    description = "Notifications of one priority stored as one message. Each field of \
                   `shared` is every notification's that does not state it itself."
)]
struct PageWire {
    #[serde(default)]
    shared: PageShared,
    /// At least one.
    notifications: Vec<PageEntry>,
}

/// A notification of a page: its own fields, and those of the page's `shared` fields that the
/// page does not state for it.
#[derive(Deserialize, JsonSchema)]
struct PageEntry {
    notification_id: NotificationId,
    audience: Audience,
    content: Content,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    collapse_key: Option<String>,
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default)]
    category: Option<Category>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    send_at: Option<DateTime<Utc>>,
    #[serde(default)]
    requested_by: Option<Actor>,
    #[serde(default)]
    accepted_at: Option<DateTime<Utc>>,
}

impl TryFrom<PageWire> for NotificationPage {
    type Error = String;

    fn try_from(wire: PageWire) -> Result<Self, String> {
        let shared = wire.shared;
        let missing = |field: &str| {
            format!(
                "missing field `{field}`: neither the notification nor the page's `shared` has it"
            )
        };
        let notifications = wire
            .notifications
            .into_iter()
            .map(|e| {
                Ok(SendNotification {
                    notification_id: e.notification_id,
                    priority: e
                        .priority
                        .or(shared.priority)
                        .ok_or_else(|| missing("priority"))?,
                    audience: e.audience,
                    content: e.content,
                    category: e.category.or(shared.category),
                    idempotency_key: e.idempotency_key,
                    delivery: DeliveryOptions {
                        expires_at: e.expires_at.or(shared.expires_at),
                        collapse_key: e.collapse_key,
                        send_at: e.send_at.or(shared.send_at),
                    },
                    requested_by: match e.requested_by {
                        Some(actor) => actor,
                        None => shared
                            .requested_by
                            .clone()
                            .ok_or_else(|| missing("requested_by"))?,
                    },
                    accepted_at: e
                        .accepted_at
                        .or(shared.accepted_at)
                        .ok_or_else(|| missing("accepted_at"))?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { notifications })
    }
}

impl JsonSchema for NotificationPage {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        PageWire::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        PageWire::json_schema(generator)
    }
}

/// As [`write_page`] writes it: `shared` (when anything is), then each notification with
/// the fields `shared` does not hold.
impl Serialize for NotificationPage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let own: Vec<PageShared> = self.notifications.iter().map(PageShared::of).collect();
        let shared = PageShared::common(&own);
        let mut page = serializer.serialize_struct("NotificationPage", 2)?;
        if shared.is_empty() {
            page.skip_field("shared")?;
        } else {
            page.serialize_field("shared", &shared)?;
        }
        let entries: Vec<Entry<'_>> = self
            .notifications
            .iter()
            .zip(&own)
            .map(|(n, own)| Entry {
                n,
                own,
                shared: &shared,
            })
            .collect();
        page.serialize_field("notifications", &entries)?;
        page.end()
    }
}

struct Entry<'a> {
    n: &'a SendNotification,
    own: &'a PageShared,
    shared: &'a PageShared,
}

impl Serialize for Entry<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Instant<'a>(&'a DateTime<Utc>);
        impl Serialize for Instant<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                crate::instant::serialize(self.0, s)
            }
        }
        let (n, own, shared) = (self.n, self.own, self.shared);
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("notification_id", &n.notification_id)?;
        map.serialize_entry("audience", &n.audience)?;
        map.serialize_entry("content", &n.content)?;
        if let Some(key) = &n.idempotency_key {
            map.serialize_entry("idempotency_key", key)?;
        }
        if let Some(key) = &n.delivery.collapse_key {
            map.serialize_entry("collapse_key", key)?;
        }
        if shared.priority.is_none() {
            map.serialize_entry("priority", &n.priority)?;
        }
        if let (Some(category), None) = (&own.category, &shared.category) {
            map.serialize_entry("category", category)?;
        }
        if let (Some(at), None) = (&own.expires_at, &shared.expires_at) {
            map.serialize_entry("expires_at", &Instant(at))?;
        }
        if let (Some(at), None) = (&own.send_at, &shared.send_at) {
            map.serialize_entry("send_at", &Instant(at))?;
        }
        if shared.requested_by.is_none() {
            map.serialize_entry("requested_by", &n.requested_by)?;
        }
        if shared.accepted_at.is_none() {
            map.serialize_entry("accepted_at", &Instant(&n.accepted_at))?;
        }
        map.end()
    }
}

/// Appends the JSON of the page command (`{"type":"send_notifications",…}`) whose
/// notifications are `entries`: each the start written by
/// [`SendNotification::write_page_entry`] and its own [`PageShared`] values. `shared` is what
/// the page states once: [`PageShared::common`] of theirs, or nothing (each notification
/// whole, the shape earlier dispatchers read).
pub fn write_page<'a>(
    out: &mut Vec<u8>,
    shared: &PageShared,
    entries: impl IntoIterator<Item = (&'a [u8], &'a PageShared)>,
) {
    out.extend_from_slice(br#"{"type":""#);
    out.extend_from_slice(crate::command::PAGE_TYPE.as_bytes());
    out.push(b'"');
    if !shared.is_empty() {
        out.extend_from_slice(br#","shared":{"#);
        crate::encode::shared(out, true, shared, &PageShared::default());
        out.push(b'}');
    }
    out.extend_from_slice(br#","notifications":["#);
    for (i, (start, own)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(start);
        crate::encode::shared(out, false, own, shared);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

#[cfg(test)]
#[path = "page_tests.rs"]
mod tests;

//! A notification's JSON written directly, byte for byte what `serde_json` writes for it.
//!
//! A source encodes every row's notification, and through `serde_json` that was a fifth of its
//! CPU: `serde_json` looks at every byte of every string, keys included, through a table, and
//! the flattened delivery options go through its map machinery. Here the keys are constants,
//! and a string with nothing to escape (nearly all) is found so 32 bytes at a time and copied;
//! the rarer audiences, and the strings that need escaping, are still written by `serde_json`.
//! The test below holds the two to the same bytes for every field; it builds its notifications
//! field by field, so that a field added to these types does not compile there until it is
//! written here too.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    Actor, Audience, SendNotification,
    language::{Language, Text},
    notification::{Content, DeliveryOptions},
    page::PageShared,
};

impl SendNotification {
    /// Appends this notification's JSON (as `serde_json::to_writer` writes it) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        self.write_fields(out);
    }

    /// The JSON of this notification's [`Command::SendNotification`](crate::Command), without
    /// copying the notification into a command.
    pub fn command_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(640);
        out.extend_from_slice(br#"{"type":"send_notification","#);
        self.write_fields(&mut out);
        out
    }

    /// The start of this notification in a page ([`crate::page::write_page`]): its own
    /// fields, without those of [`PageShared`] and without the closing brace.
    pub fn write_page_entry(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        key(out, true, "notification_id");
        uuid(out, &self.notification_id.0);
        key(out, false, "audience");
        audience(out, &self.audience);
        key(out, false, "content");
        content(out, &self.content);
        if let Some(idempotency_key) = &self.idempotency_key {
            key(out, false, "idempotency_key");
            string(out, idempotency_key);
        }
        if let Some(collapse_key) = &self.delivery.collapse_key {
            key(out, false, "collapse_key");
            string(out, collapse_key);
        }
    }

    /// The fields and the closing brace.
    fn write_fields(&self, out: &mut Vec<u8>) {
        key(out, true, "notification_id");
        uuid(out, &self.notification_id.0);
        key(out, false, "priority");
        plain(out, self.priority.as_str());
        key(out, false, "audience");
        audience(out, &self.audience);
        key(out, false, "content");
        content(out, &self.content);
        if let Some(category) = self.category {
            key(out, false, "category");
            plain(out, category.as_str());
        }
        if let Some(idempotency_key) = &self.idempotency_key {
            key(out, false, "idempotency_key");
            string(out, idempotency_key);
        }
        delivery(out, &self.delivery);
        key(out, false, "requested_by");
        actor(out, &self.requested_by);
        key(out, false, "accepted_at");
        instant(out, &self.accepted_at);
        out.push(b'}');
    }
}

/// The fields of `own` that `except` does not hold, in [`PageShared`]'s order; the first after
/// a comma unless `first`.
pub(crate) fn shared(out: &mut Vec<u8>, first: bool, own: &PageShared, except: &PageShared) {
    let mut first = first;
    let mut next = |out: &mut Vec<u8>, name: &str| {
        key(out, first, name);
        first = false;
    };
    if let (Some(priority), None) = (own.priority, except.priority) {
        next(out, "priority");
        plain(out, priority.as_str());
    }
    if let (Some(category), None) = (own.category, except.category) {
        next(out, "category");
        plain(out, category.as_str());
    }
    if let (Some(at), None) = (&own.expires_at, &except.expires_at) {
        next(out, "expires_at");
        instant(out, at);
    }
    if let (Some(at), None) = (&own.send_at, &except.send_at) {
        next(out, "send_at");
        instant(out, at);
    }
    if let (Some(by), None) = (&own.requested_by, &except.requested_by) {
        next(out, "requested_by");
        actor(out, by);
    }
    if let (Some(at), None) = (&own.accepted_at, &except.accepted_at) {
        next(out, "accepted_at");
        instant(out, at);
    }
}

/// The audiences a source or an api request names most; the others through `serde_json`.
fn audience(out: &mut Vec<u8>, audience: &Audience) {
    match audience {
        Audience::Customers { customer_ids } => {
            out.extend_from_slice(br#"{"kind":"customers","customer_ids":["#);
            for (i, customer) in customer_ids.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Subject-safe: nothing to escape.
                plain(out, customer.as_str());
            }
            out.extend_from_slice(b"]}");
        }
        Audience::Everyone => out.extend_from_slice(br#"{"kind":"everyone"}"#),
        other => serde_value(out, other),
    }
}

fn content(out: &mut Vec<u8>, content: &Content) {
    out.push(b'{');
    key(out, true, "title");
    string(out, &content.title);
    key(out, false, "body");
    string(out, &content.body);
    if !content.data.is_empty() {
        key(out, false, "data");
        strings(out, &content.data);
    }
    if let Some(image_url) = &content.image_url {
        key(out, false, "image_url");
        string(out, image_url);
    }
    if let Some(language) = &content.language {
        key(out, false, "language");
        string(out, language.as_str());
    }
    if !content.translations.is_empty() {
        key(out, false, "translations");
        translations(out, &content.translations);
    }
    out.push(b'}');
}

fn translations(out: &mut Vec<u8>, translations: &BTreeMap<Language, Text>) {
    object(out, translations.iter(), Language::as_str, |out, text| {
        out.extend_from_slice(br#"{"title":"#);
        string(out, &text.title);
        out.extend_from_slice(br#","body":"#);
        string(out, &text.body);
        out.push(b'}');
    });
}

fn strings(out: &mut Vec<u8>, map: &BTreeMap<String, String>) {
    object(out, map.iter(), String::as_str, |out, value| {
        string(out, value)
    });
}

/// A JSON object of `entries`, in their order.
fn object<'a, K: 'a, V: 'a>(
    out: &mut Vec<u8>,
    entries: impl Iterator<Item = (&'a K, &'a V)>,
    name: impl Fn(&K) -> &str,
    value: impl Fn(&mut Vec<u8>, &V),
) {
    out.push(b'{');
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, name(k));
        out.push(b':');
        value(out, v);
    }
    out.push(b'}');
}

/// The delivery options' fields, flattened into the notification's.
fn delivery(out: &mut Vec<u8>, delivery: &DeliveryOptions) {
    if let Some(at) = &delivery.expires_at {
        key(out, false, "expires_at");
        instant(out, at);
    }
    if let Some(collapse_key) = &delivery.collapse_key {
        key(out, false, "collapse_key");
        string(out, collapse_key);
    }
    if let Some(at) = &delivery.send_at {
        key(out, false, "send_at");
        instant(out, at);
    }
}

/// An actor as `serde_json` writes it: its kind names nothing to escape.
fn actor(out: &mut Vec<u8>, actor: &Actor) {
    out.extend_from_slice(br#"{"kind":"#);
    plain(out, actor.kind.as_str());
    out.extend_from_slice(br#","id":"#);
    string(out, &actor.id);
    out.push(b'}');
}

/// An instant as chrono's serde writes it, quoted.
fn instant(out: &mut Vec<u8>, at: &chrono::DateTime<chrono::Utc>) {
    crate::instant::with_text(at, |text| plain(out, text));
}

/// A UUID as its hyphenated lower-case text, quoted.
fn uuid(out: &mut Vec<u8>, id: &uuid::Uuid) {
    plain(
        out,
        id.hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
}

/// `"name":`, after a comma unless `first`. Names are constants with nothing to escape.
fn key(out: &mut Vec<u8>, first: bool, name: &str) {
    if !first {
        out.push(b',');
    }
    plain(out, name);
    out.push(b':');
}

/// A string known to need no escaping, quoted.
fn plain(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

/// A string as `serde_json` writes it.
fn string(out: &mut Vec<u8>, text: &str) {
    if crate::content_rules::needs_no_escape(text) {
        plain(out, text);
    } else {
        serde_value(out, text);
    }
}

fn serde_value<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("writing JSON into memory cannot fail");
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::{
        Actor, ActorKind, Audience, Category, CustomerId, DeviceId, NotificationId, Priority,
    };

    fn text(title: &str, body: &str) -> Text {
        Text {
            title: title.into(),
            body: body.into(),
        }
    }

    /// Every field set, with strings that need escaping.
    fn full() -> SendNotification {
        let at = chrono::Utc
            .timestamp_opt(1_764_812_989, 331_665_242)
            .unwrap();
        SendNotification {
            notification_id: NotificationId(uuid::Uuid::from_u128(0xabcdef)),
            priority: Priority::Urgent,
            audience: Audience::Device {
                customer_id: Some(CustomerId::parse("c-1").unwrap()),
                device_id: DeviceId::parse("d_1").unwrap(),
            },
            content: Content {
                title: "Coupure \"planifiée\"\n\\".into(),
                body: "Yeen ñu ngi leen di xamal\u{1}\t€ ".repeat(5),
                data: BTreeMap::from([
                    ("a\"b".into(), "x\u{1f}".into()),
                    ("screen".into(), "bills".into()),
                ]),
                image_url: Some("https://example.com/i.png?a=\"1\"".into()),
                language: Some(Language::parse("fr").unwrap()),
                translations: BTreeMap::from([
                    (Language::parse("en").unwrap(), text("Outage", "Tonight")),
                    (
                        Language::parse("wo").unwrap(),
                        text("Dagg\r", "Tey \"ci\" guddi"),
                    ),
                ]),
            },
            category: Some(Category::Outage),
            idempotency_key: Some("key \"1\"".into()),
            delivery: DeliveryOptions {
                expires_at: Some(at + chrono::Duration::seconds(600)),
                collapse_key: Some("outage\\zone".into()),
                send_at: Some(at + chrono::Duration::seconds(60)),
            },
            requested_by: Actor {
                kind: ActorKind::Client,
                id: "billing \"system\"".into(),
            },
            accepted_at: at,
        }
    }

    /// Nothing optional set.
    fn bare() -> SendNotification {
        SendNotification {
            notification_id: NotificationId(uuid::Uuid::nil()),
            priority: Priority::Low,
            audience: Audience::Everyone,
            content: Content {
                title: String::new(),
                body: "x".into(),
                data: BTreeMap::new(),
                image_url: None,
                language: None,
                translations: BTreeMap::new(),
            },
            category: None,
            idempotency_key: None,
            delivery: DeliveryOptions {
                expires_at: None,
                collapse_key: None,
                send_at: None,
            },
            requested_by: Actor {
                kind: ActorKind::System,
                id: "sources".into(),
            },
            accepted_at: chrono::Utc.timestamp_opt(0, 0).unwrap(),
        }
    }

    #[test]
    fn a_notification_and_its_command_are_written_as_serde_json_writes_them() {
        let mut variants = vec![full(), bare()];
        // Each optional part alone, and each audience.
        let f = full();
        let mut n = bare();
        n.content.data = f.content.data.clone();
        variants.push(n);
        let mut n = bare();
        n.content.image_url = f.content.image_url.clone();
        n.content.translations = f.content.translations.clone();
        variants.push(n);
        let mut n = bare();
        n.delivery.send_at = f.delivery.send_at;
        n.category = Some(Category::Billing);
        variants.push(n);
        let mut n = bare();
        n.delivery.collapse_key = f.delivery.collapse_key.clone();
        n.idempotency_key = f.idempotency_key.clone();
        variants.push(n);
        for audience in [
            Audience::Customers {
                customer_ids: vec![
                    CustomerId::parse("a").unwrap(),
                    CustomerId::parse("b").unwrap(),
                ],
            },
            Audience::Category {
                category: Category::Billing,
            },
            Audience::Segment {
                commune: Some("Pikine \"Est\"".into()),
                zone: None,
                contract: None,
                language: Some(Language::parse("wo").unwrap()),
            },
            Audience::Topic {
                app_id: "app".into(),
                topic: "t".into(),
            },
        ] {
            let mut n = full();
            n.audience = audience;
            variants.push(n);
        }
        // Long text, plain and with one escape at either end of a 32-byte chunk.
        for (i, body) in [
            "é".repeat(300),
            format!("{}\"", "a".repeat(31)),
            format!("\n{}", "b".repeat(64)),
        ]
        .into_iter()
        .enumerate()
        {
            let mut n = bare();
            n.content.body = body;
            n.priority = [Priority::Normal, Priority::High, Priority::Urgent][i];
            variants.push(n);
        }
        for (category, kind) in Category::ALL.into_iter().zip(
            [ActorKind::Customer, ActorKind::Client, ActorKind::System]
                .into_iter()
                .cycle(),
        ) {
            let mut n = bare();
            n.category = Some(category);
            n.requested_by.kind = kind;
            n.audience = Audience::Customers {
                customer_ids: vec![CustomerId::parse("c-9").unwrap()],
            };
            variants.push(n);
        }
        for n in variants {
            let mut written = Vec::new();
            n.write_json(&mut written);
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&n).unwrap()
            );
            assert_eq!(
                String::from_utf8(n.command_json()).unwrap(),
                serde_json::to_string(&crate::Command::SendNotification(n.clone())).unwrap()
            );
        }
    }
}

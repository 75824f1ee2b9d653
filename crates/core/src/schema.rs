//! JSON Schemas of everything Xibaar writes to NATS, generated from the Rust types. The files
//! under `schemas/` are this output; a test fails when they drift.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings, json_schema};

use crate::{
    command::Command,
    event::{
        CustomerAttributesChanged, DeliveriesSucceeded, DeliveryExpired, DeliveryFailed,
        DeliverySucceeded, DeviceRegistered, DeviceRemoved, DeviceTokenInvalidated, InboxAllRead,
        InboxItemRead, NotificationAccepted, NotificationCanceled, NotificationFannedOut,
        NotificationScheduled, PreferencesChanged, TopicDelivery, WireEnvelope,
    },
    job::{DeliveryJob, DeliveryPage, TopicJob},
};

/// Stand-in for the event's data in the envelope schema.
struct AnyData;

impl JsonSchema for AnyData {
    fn schema_name() -> Cow<'static, str> {
        "EventData".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "description": "the event's data; its schema is events/<type>.v<version>.json"
        })
    }
}

fn schema<T: JsonSchema>() -> Schema {
    SchemaGenerator::new(SchemaSettings::draft2020_12()).into_root_schema_for::<T>()
}

/// `(path under schemas/, schema)` for every message type.
pub fn catalog() -> Vec<(String, Schema)> {
    let mut out = vec![
        (
            "events/envelope.json".to_owned(),
            schema::<WireEnvelope<AnyData>>(),
        ),
        ("commands/command.json".to_owned(), schema::<Command>()),
        ("jobs/delivery_job.json".to_owned(), schema::<DeliveryJob>()),
        ("jobs/topic_job.json".to_owned(), schema::<TopicJob>()),
        (
            "jobs/delivery_page.json".to_owned(),
            schema::<DeliveryPage>(),
        ),
    ];
    let events: [(&str, Schema); 16] = [
        ("notification.accepted", schema::<NotificationAccepted>()),
        ("notification.fanned_out", schema::<NotificationFannedOut>()),
        ("delivery.succeeded", schema::<DeliverySucceeded>()),
        ("delivery.failed", schema::<DeliveryFailed>()),
        ("device.registered", schema::<DeviceRegistered>()),
        (
            "device.token_invalidated",
            schema::<DeviceTokenInvalidated>(),
        ),
        ("delivery.expired", schema::<DeliveryExpired>()),
        ("notification.scheduled", schema::<NotificationScheduled>()),
        ("preferences.changed", schema::<PreferencesChanged>()),
        ("delivery.topic", schema::<TopicDelivery>()),
        ("notification.canceled", schema::<NotificationCanceled>()),
        ("device.removed", schema::<DeviceRemoved>()),
        ("inbox.item_read", schema::<InboxItemRead>()),
        ("inbox.all_read", schema::<InboxAllRead>()),
        (
            "customer.attributes_changed",
            schema::<CustomerAttributesChanged>(),
        ),
        ("delivery.page_succeeded", schema::<DeliveriesSucceeded>()),
    ];
    for (event_type, schema) in events {
        let version = crate::event::CATALOG
            .iter()
            .find(|(t, _)| *t == event_type)
            .map_or(1, |(_, v)| *v);
        out.push((format!("events/{event_type}.v{version}.json"), schema));
    }
    out
}

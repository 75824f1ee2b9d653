//! An example for every request and response body of the OpenAPI document, by schema name (or
//! media type, for the bodies that are not JSON). Generators and the interactive reference
//! show them; `redocly lint` (tests/it/openapi_contract.rs) checks each one against its schema,
//! so an example that drifts from its type fails the suite.

use serde_json::{Value, json};

const NOTIFICATION: &str = "0193f0d2-6c1e-7b3a-9f4d-2a1b3c4d5e6f";

/// The example of a body whose schema is `name`.
pub(crate) fn for_schema(name: &str) -> Option<Value> {
    let example = match name {
        "SendRequest" => json!({
            "priority": "high",
            "audience": {"kind": "customers", "customer_ids": ["customer-42"]},
            "content": {"title": "Your bill is ready", "body": "12 500 FCFA due on 15 March",
                        "data": {"kind": "bill", "bill_id": "B-2026-0315"}},
            "category": "billing",
            "ttl_seconds": 86400,
            "collapse_key": "bill-B-2026-0315"
        }),
        "RegisterDevice" => json!({
            "device_id": "phone-1", "token": "fcm-registration-token-of-the-phone",
            "platform": "android", "app_id": "1:1234567890:android:0a1b2c3d4e5f",
            "app_version": "4.2.0", "locale": "fr-SN"
        }),
        "DeviceChanged" => json!({"device_id": "phone-1", "status": "registered"}),
        "DeviceList" => json!({"devices": [{
            "device_id": "phone-1", "customer_id": "customer-42", "platform": "android",
            "app_id": "1:1234567890:android:0a1b2c3d4e5f", "app_version": "4.2.0",
            "locale": "wo", "status": "active",
            "registered_at": "2026-11-02T08:15:00Z", "updated_at": "2026-11-20T19:02:11Z"
        }]}),
        "InboxPage" => json!({
            "items": [{
                "notification_id": NOTIFICATION, "title": "Coupure à la Médina",
                "body": "Les équipes sont sur place ; retour prévu à 14 h", "data": {"kind": "outage"},
                "category": "outage", "priority": "urgent",
                "received_at": "2026-11-23T10:04:05Z", "read_at": null
            }],
            "next_cursor": "1842", "unread_count": 1
        }),
        "UnreadCount" => json!({"unread_count": 3}),
        "ItemMarked" => json!({"notification_id": NOTIFICATION, "status": "read"}),
        "AllMarked" => json!({"marked_read": 3}),
        "Preferences" => json!({"categories": {
            "billing": true, "outage": true, "prepaid": true, "marketing": false
        }}),
        "ChangePreferences" => json!({"categories": {"marketing": true}}),
        "PreferencesChange" => json!({"changed": {"marketing": true}}),
        "SendAccepted" => json!({"notification_id": NOTIFICATION, "status": "accepted"}),
        "NotificationStatus" => json!({
            "notification_id": NOTIFICATION, "priority": "high", "title": "Your bill is ready",
            "requested_by": "client:billing", "status": "completed", "targeted": 2, "sent": 2,
            "failed": 0, "invalid": 0, "expired": 0,
            "accepted_at": "2026-11-23T10:04:05Z", "send_at": null,
            "fanned_out_at": "2026-11-23T10:04:05Z", "completed_at": "2026-11-23T10:04:06Z"
        }),
        "Canceled" => json!({"notification_id": NOTIFICATION, "status": "canceled"}),
        "Timeline" => json!({"notification_id": NOTIFICATION, "events": [{
            "id": "0193f0d2-6c1f-7000-8000-000000000001", "type": "notification.accepted",
            "version": 2, "occurred_at": "2026-11-23T10:04:05Z",
            "correlation_id": NOTIFICATION, "actor": {"kind": "system", "id": "dispatcher"},
            "data": {"notification_id": NOTIFICATION}
        }]}),
        "DailyStats" => json!({"from": "2026-11-01", "to": "2026-11-30", "days": [
            {"day": "2026-11-23", "priority": "urgent", "outcome": "succeeded", "deliveries": 9812}
        ]}),
        "OpsSnapshot" => json!({
            "at": "2026-11-23T10:04:05Z",
            "processes": [{"instance": "app-1-dispatcher", "role": "dispatcher", "seconds_since_heartbeat": 1.2}],
            "priorities": [{"priority": "urgent", "commands_pending": 0, "jobs_pending": 12, "seconds_behind": 0.1}],
            "consumers": [], "streams": [],
            "throughput": {"accepted_per_second": 40.0, "pushes_per_second": 2150.5,
                "events_per_second": 2190.0, "jobs_per_second": {"sent": 2150.5},
                "accepted_total": 1200, "pushes_total": 64000},
            "fcm": {"responses_per_second": {"OK": 2150.5}, "error_rate": 0.0,
                "rate_limit_waiting": 0.0, "circuits": []},
            "dlq_depth": 0, "projection_gap": 14,
            "sources": {"bill_issued": {"state": "running", "kind": "notifications",
                "rows_read": 41200, "emitted": 41198, "rejected": 2, "errors": {"transient": 1},
                "last_error": null, "watermark": [912044],
                "newest_row_at": "2026-11-23T10:03:58Z", "lag_seconds": 7.0,
                "updated_at": "2026-11-23T10:04:04Z"}},
            "problems": []
        }),
        "Problem" => json!({
            "type": "urn:xibaar:problem:validation", "title": "Invalid request", "status": 422,
            "detail": "1 field(s) are invalid",
            "errors": [{"field": "audience.customer_id", "message": "is required: a device id names a phone within one customer"}]
        }),
        _ => return None,
    };
    Some(example)
}

/// The example of a body that is not JSON, by media type.
pub(crate) fn for_media_type(content_type: &str, operation_id: &str) -> Option<Value> {
    match (content_type, operation_id) {
        ("text/event-stream", "streamInbox") => Some(Value::String(format!(
            "event: inbox_item\nid: 1842\ndata: {}\n\n",
            for_schema("InboxPage")?["items"][0]
        ))),
        ("text/event-stream", _) => Some(Value::String(format!(
            "event: snapshot\ndata: {}\n\n",
            for_schema("OpsSnapshot")?
        ))),
        ("text/html", _) => Some(Value::String(
            "<!doctype html><title>Xibaar ops</title>…".into(),
        )),
        _ => None,
    }
}

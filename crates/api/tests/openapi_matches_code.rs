//! `schemas/openapi.json` is the document the code generates, and the document is valid
//! OpenAPI 3.1 whose every operation answers with declared problems. Run with
//! `XIBAAR_UPDATE_SCHEMAS=1` to rewrite the file after a deliberate change.

use std::path::PathBuf;

use serde_json::Value;

#[test]
fn the_checked_in_openapi_document_is_what_the_code_generates() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/openapi.json");
    let generated = format!("{}\n", xibaar_api::openapi::json());
    if std::env::var_os("XIBAAR_UPDATE_SCHEMAS").is_some() {
        std::fs::write(&file, &generated).unwrap();
        return;
    }
    let existing = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{} cannot be read: {e}", file.display()));
    assert!(
        existing == generated,
        "schemas/openapi.json drifted from the code (rerun with XIBAAR_UPDATE_SCHEMAS=1 if the change is intended)"
    );
}

#[test]
fn every_operation_is_described_and_every_reference_resolves() {
    let doc: Value = serde_json::from_str(xibaar_api::openapi::json()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path} declares no success"
            );
            assert!(op["summary"].is_string(), "{method} {path} has no summary");
            if op.get("security").is_some() {
                for status in ["401", "403", "429", "503"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} lacks {status}"
                    );
                }
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "415", "422"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path} lacks {status}"
                    );
                }
            }
        }
    }
    assert_eq!(operations, 18, "every route is in the document");
    // Every `$ref` names something the document defines.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "unresolved {r}");
    }
}

fn collect_refs(value: &Value, refs: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => refs.push(r.clone()),
                    _ => collect_refs(v, refs),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
        _ => {}
    }
}

/// Generated clients name their methods after operation ids: an id changed or used twice
/// breaks every client built on the document, so the list is fixed here. A new operation adds
/// its line; an existing line never changes within `/v1` (docs/api.md).
const OPERATION_IDS: [(&str, &str, &str); 18] = [
    ("post", "/v1/notifications", "sendNotification"),
    ("get", "/v1/notifications/{id}", "getNotificationStatus"),
    ("delete", "/v1/notifications/{id}", "cancelNotification"),
    (
        "get",
        "/v1/notifications/{id}/timeline",
        "getNotificationTimeline",
    ),
    ("post", "/v1/devices", "registerDevice"),
    ("get", "/v1/devices", "listDevices"),
    ("delete", "/v1/devices/{id}", "removeDevice"),
    ("get", "/v1/me/inbox", "listInbox"),
    ("get", "/v1/me/inbox/unread-count", "getUnreadCount"),
    ("post", "/v1/me/inbox/{id}/read", "markInboxItemRead"),
    ("post", "/v1/me/inbox/read-all", "markAllInboxRead"),
    ("get", "/v1/me/stream", "streamInbox"),
    ("get", "/v1/me/preferences", "getPreferences"),
    ("put", "/v1/me/preferences", "changePreferences"),
    ("get", "/v1/stats/daily", "getDailyStats"),
    ("get", "/v1/ops/snapshot", "getOpsSnapshot"),
    ("get", "/v1/ops/stream", "streamOps"),
    ("get", "/ops", "getOpsPage"),
];

#[test]
fn operation_ids_are_unique_and_never_change() {
    let doc: Value = serde_json::from_str(xibaar_api::openapi::json()).unwrap();
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            found.push((method.clone(), path.clone(), id.to_owned()));
        }
    }
    let mut ids: Vec<&str> = found.iter().map(|(_, _, id)| id.as_str()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "an operationId is used twice: {found:?}");
    let mut expected: Vec<(String, String, String)> = OPERATION_IDS
        .iter()
        .map(|(m, p, id)| ((*m).to_owned(), (*p).to_owned(), (*id).to_owned()))
        .collect();
    expected.sort();
    found.sort();
    assert_eq!(found, expected, "operation ids are part of the contract");
}

#[test]
fn every_operation_has_a_tag_for_its_audience_and_security_or_explicitly_none() {
    let doc: Value = serde_json::from_str(xibaar_api::openapi::json()).unwrap();
    let audiences = ["customer-app", "back-office", "audit", "ops"];
    assert!(!doc["servers"].as_array().unwrap().is_empty());
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let tags = op["tags"].as_array().unwrap();
            assert!(
                tags.len() == 1 && audiences.contains(&tags[0].as_str().unwrap()),
                "{method} {path}: {tags:?}"
            );
            assert!(
                op["security"].is_array(),
                "{method} {path} says nothing of security"
            );
            for (status, response) in op["responses"].as_object().unwrap() {
                for (media, content) in response["content"].as_object().into_iter().flatten() {
                    assert!(
                        content.get("example").is_some(),
                        "{method} {path} {status} {media} has no example"
                    );
                }
            }
            for (media, content) in op["requestBody"]["content"]
                .as_object()
                .into_iter()
                .flatten()
            {
                assert!(
                    content.get("example").is_some(),
                    "{method} {path} body {media} has no example"
                );
            }
        }
    }
}

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

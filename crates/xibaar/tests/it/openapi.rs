//! The OpenAPI document the api serves, its docs page, and a property-based pass over every
//! operation with schemathesis (PyPI, installed by `scripts/install-tools`): generated valid and
//! invalid requests never get a 5xx, a status the document does not declare, or a body or
//! content type outside it.

use std::{process::Command, time::Duration};

use serde_json::Value;
use xibaar_api::scopes;
use xibaar_testkit::{Tools, eventually, workspace_root};

use crate::support::{Pipeline, notification};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_its_checked_in_openapi_document_and_a_docs_page() {
    let p = Pipeline::start().await;
    let served = p.get_json("/openapi.json", None).await;
    let file = workspace_root().join("schemas/openapi.json");
    let checked_in: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert_eq!(served, checked_in);
    assert_eq!(served["openapi"], "3.1.0");

    let docs = p.http.get(format!("{}/docs", p.api)).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(
        docs.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = docs.text().await.unwrap();
    assert!(page.contains("Xibaar API"), "{page}");
    assert!(
        page.contains("/v1/me/inbox"),
        "the page carries the document"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_response_outside_the_document() {
    let p = Pipeline::start().await;
    // Something to read: a device, a delivered notification in the inbox.
    p.register_device("fuzz", "fuzz-phone", "token-fuzz-phone")
        .await;
    p.wait_for_devices(1).await;
    let id = p
        .accept(&notification("high", &["fuzz"], "Property pass"))
        .await;
    p.wait_completed(&id, Duration::from_secs(30)).await;
    // One token for every operation: a customer id as subject (customer endpoints) with every
    // back-office scope (whose budget is large enough for the run).
    let token = p.token(
        "fuzz",
        &[scopes::SEND, scopes::READ, scopes::AUDIT, scopes::OPS],
    );
    let work = tempfile::tempdir().unwrap();
    let schema = workspace_root().join("schemas/openapi.json");
    let output = tokio::task::spawn_blocking({
        let api = p.api.clone();
        let dir = work.path().to_owned();
        let id = id.clone();
        move || {
            Command::new(&Tools::get().unwrap().schemathesis)
                .current_dir(dir)
                .arg("--config-file")
                .arg(workspace_root().join("schemas/schemathesis.toml"))
                .arg("run")
                .arg(schema)
                .args(["--url", &api])
                .args(["--header", &format!("Authorization: Bearer {token}")])
                .args([
                    "--checks",
                    "not_a_server_error,status_code_conformance,content_type_conformance,\
                     response_headers_conformance,response_schema_conformance",
                ])
                // The live streams never end; they have their own tests.
                .args(["--exclude-path-regex", "/stream$"])
                .args(["--phases", "examples,coverage,fuzzing"])
                .args(["--max-examples", "40", "--seed", "7", "--workers", "2"])
                .args(["--request-timeout", "10", "--no-color"])
                .env("XIBAAR_FUZZ_NOTIFICATION", &id)
                .env("XIBAAR_FUZZ_DEVICE", "fuzz-phone")
                .output()
                .expect("schemathesis runs")
        }
    })
    .await
    .unwrap();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "schemathesis failed:\n{report}");
    // Every operation ran (the live streams aside), and reached its logic.
    assert!(report.contains("Tested: 16"), "{report}");
    // Every operation reached its logic. Removing the one device succeeds once, and later
    // attempts rightly answer 404 (which Schemathesis may warn about once the removal is
    // projected): that operation counts when the device is gone.
    let starved: Vec<&str> = report
        .lines()
        .skip_while(|l| !l.contains("Missing test data:"))
        .skip(1)
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| l.starts_with("- "))
        .collect();
    assert!(
        starved.iter().all(|l| *l == "- DELETE /v1/devices/{id}"),
        "{report}"
    );
    let removed = eventually(Duration::from_secs(10), || async {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM devices WHERE device_id = 'fuzz-phone'")
                .fetch_one(&p.pool)
                .await
                .ok()?;
        (left == 0).then_some(())
    })
    .await
    .is_some();
    assert!(removed, "the fuzzing never removed its device:\n{report}");
}

//! The api's contract as tools nobody here wrote read it: redocly's recommended rules (examples
//! checked against their schemas), and a TypeScript client generated from the served document
//! (openapi-typescript + openapi-fetch), type-checked with `tsc --strict` and run through the
//! customer app's and the back office's journeys against a running pipeline.

use std::process::Command;

use xibaar_api::scopes;
use xibaar_testkit::{Tools, workspace_root};

use crate::support::{APP_ID, Pipeline};

fn run(what: &str, command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

#[test]
fn redocly_lint_passes_with_the_recommended_rules_and_every_example_valid() {
    let tools = Tools::get().unwrap();
    let root = workspace_root();
    let text = run(
        "redocly lint",
        Command::new(tools.npm_bin.join("redocly"))
            .arg("lint")
            .arg("--config")
            .arg(root.join("schemas/redocly.yaml"))
            .arg(root.join("schemas/openapi.json")),
    );
    assert!(text.contains("Your API description is valid"), "{text}");
    // Its summary names warnings as "You have N warning(s)"; the Node 20 banner says
    // "Deprecation warning" and is no finding.
    assert!(!text.contains("You have"), "redocly warned:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_typescript_client_drives_the_customer_and_back_office_journeys() {
    let tools = Tools::get().unwrap();
    let p = Pipeline::start().await;
    // In the npm tools' folder, so that Node finds openapi-fetch the way an app's build does.
    let npm_root = tools.npm_bin.parent().unwrap().parent().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("client-")
        .tempdir_in(npm_root)
        .unwrap();
    let served = p
        .http
        .get(format!("{}/openapi.json", p.api))
        .send()
        .await
        .unwrap();
    std::fs::write(
        dir.path().join("openapi.json"),
        served.bytes().await.unwrap(),
    )
    .unwrap();
    std::fs::copy(
        workspace_root().join("crates/xibaar/tests/client/journeys.ts"),
        dir.path().join("journeys.ts"),
    )
    .unwrap();
    std::fs::write(dir.path().join("package.json"), r#"{"type": "module"}"#).unwrap();
    std::fs::write(
        dir.path().join("tsconfig.json"),
        r#"{"compilerOptions": {"strict": true, "target": "ES2022", "module": "NodeNext",
            "moduleResolution": "NodeNext", "lib": ["ES2022", "DOM", "DOM.Iterable"],
            "outDir": "out", "types": []}, "files": ["journeys.ts"]}"#,
    )
    .unwrap();
    let path = dir.path().to_owned();
    let customer = "ts-customer";
    let env = [
        ("API", p.api.clone()),
        ("APP_ID", APP_ID.to_owned()),
        ("CUSTOMER_ID", customer.to_owned()),
        ("CUSTOMER_TOKEN", p.token(customer, &[])),
        (
            "BACK_OFFICE_TOKEN",
            p.token("billing", &[scopes::SEND, scopes::READ, scopes::AUDIT]),
        ),
    ];
    let npm_bin = tools.npm_bin.clone();
    let output = tokio::task::spawn_blocking(move || {
        run(
            "openapi-typescript",
            Command::new(npm_bin.join("openapi-typescript"))
                .current_dir(&path)
                .args(["openapi.json", "-o", "api.d.ts"]),
        );
        run(
            "tsc --strict",
            Command::new(npm_bin.join("tsc"))
                .current_dir(&path)
                .args(["-p", "."]),
        );
        run(
            "the journeys",
            Command::new("node")
                .current_dir(&path)
                .arg("out/journeys.js")
                .envs(env),
        )
    })
    .await
    .unwrap();
    assert!(output.contains("journeys passed"), "{output}");
}

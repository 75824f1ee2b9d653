//! The README's walk-through, run as written (a syntax error or a failing command fails it)
//! against a running pipeline. Only the addresses change: the README names `scripts/run-local`'s
//! fixed ports and app id, the test pipeline has its own.

use std::process::Command;

use xibaar_testkit::workspace_root;

use crate::support::{APP_ID, Pipeline};

/// The first `sh` block after the heading "## Send your first notification".
fn walk_through() -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme
        .split("## Send your first notification")
        .nth(1)
        .expect("the README has its walk-through");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the walk-through is a sh block");
    block.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walk_through_runs_as_written() {
    let p = Pipeline::start().await;
    let script = walk_through()
        .replace("http://127.0.0.1:8080", &p.api)
        .replace("http://127.0.0.1:4005", &p.standin.url())
        .replace("http://127.0.0.1:9464", &p.ops)
        .replace("\"local-app\"", &format!("\"{APP_ID}\""));
    // A checkout's layout: the binary under target/debug, the configuration in .xibaar.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("target/debug")).unwrap();
    std::fs::create_dir_all(dir.path().join(".xibaar")).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_xibaar"),
        dir.path().join("target/debug/xibaar"),
    )
    .unwrap();
    std::fs::copy(&p.config_path, dir.path().join(".xibaar/local.toml")).unwrap();
    // Any failing command fails the run; curl fails on an HTTP error status.
    let prelude = "set -euo pipefail\ncurl() { command curl -fsS \"$@\"; echo; }\n";
    let cwd = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .current_dir(cwd)
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the walk-through failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("targeted 1, sent 1, failed 0"),
        "the send did not reach the phone:\n{stdout}"
    );
    assert!(
        stdout.contains("delivery.page_succeeded"),
        "the audit shows no outcome:\n{stdout}"
    );
    assert!(
        stdout.contains("#token="),
        "the ops page's address is printed:\n{stdout}"
    );
    assert_eq!(p.pushed_tokens(), ["demo-fcm-token-1"]);
}

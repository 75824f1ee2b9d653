//! The README's walk-through, with the real binary.

use std::process::Command;

use crate::support::Pipeline;

fn xibaar(p: &Pipeline, args: &[&str]) -> (bool, String) {
    p.cli(args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walk_through_sends_a_notification_that_shows_as_delivered() {
    let p = Pipeline::start().await;
    let (ok, token) = xibaar(&p, &["token", "--sub", "customer-42"]);
    assert!(ok, "{token}");
    let response = p
        .http
        .post(format!("{}/v1/devices", p.api))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({
            "device_id": "phone-1", "token": "demo-fcm-token-1", "platform": "android",
            "app_id": crate::support::APP_ID
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    p.wait_for_devices(1).await;

    let (ok, out) = xibaar(
        &p,
        &[
            "send",
            "--customer",
            "customer-42",
            "--priority",
            "urgent",
            "--title",
            "Power cut",
            "--body",
            "Back by 14:00",
            "--data",
            "kind=outage",
            "--wait",
            "--timeout",
            "10s",
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("completed in") && out.contains("targeted 1, sent 1, failed 0"),
        "{out}"
    );
    let received = p.standin.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].message["notification"]["title"], "Power cut");

    let (ok, out) = xibaar(&p, &["streams", "apply"]);
    assert!(ok, "{out}");
    assert!(out.lines().all(|l| l.ends_with(": unchanged")), "{out}");

    let (ok, out) = xibaar(&p, &["send", "--title", "nobody"]);
    assert!(!ok && out.contains("say who to notify"), "{out}");

    // A topic and a category from the command line.
    let (ok, out) = xibaar(
        &p,
        &[
            "send",
            "--topic",
            "outage-medina",
            "--app-id",
            crate::support::APP_ID,
            "--priority",
            "urgent",
            "--title",
            "Medina",
            "--wait",
            "--timeout",
            "10s",
        ],
    );
    assert!(ok && out.contains("targeted 1, sent 1"), "{out}");
    assert!(
        p.standin
            .received()
            .iter()
            .any(|r| r.message["topic"] == "outage-medina"),
        "the stand-in got no topic message"
    );
    let (ok, out) = xibaar(
        &p,
        &[
            "send",
            "--everyone",
            "--category",
            "marketing",
            "--title",
            "Offer",
            "--wait",
            "--timeout",
            "10s",
        ],
    );
    assert!(
        ok && out.contains("targeted 0"),
        "nobody opted in to marketing: {out}"
    );
    let (ok, out) = xibaar(&p, &["send", "--topic", "t", "--title", "x"]);
    assert!(!ok && out.contains("--app-id"), "{out}");
}

#[test]
fn an_invalid_config_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[dispatcher]\nmax_attempts = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xibaar"))
        .arg("--config")
        .arg(&path)
        .arg("up")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dispatcher.max_attempts"), "{stderr}");

    std::fs::write(
        &path,
        "[auth]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xibaar"))
        .arg("--config")
        .arg(&path)
        .arg("dispatcher")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fcm.apps"), "{stderr}");
}

//! The official Firebase Admin SDK (PyPI `firebase-admin`, pinned in
//! deploy/tools-requirements.txt) accepts the stand-in: its OAuth exchange as Google's library
//! makes it, success, and each error class as the SDK's own exception.

use std::process::Command;

use xibaar_fcm_standin::{ErrorRule, ScriptedError, StandIn, StandInConfig};

#[tokio::test]
async fn the_firebase_admin_sdk_sends_through_the_standin_and_sees_every_error_class() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    for (token, error) in [
        ("dead-token", ScriptedError::Unregistered),
        ("foreign-token", ScriptedError::SenderIdMismatch),
        ("bad-payload-token", ScriptedError::InvalidArgument),
        ("apns-token", ScriptedError::ThirdPartyAuthError),
    ] {
        standin.add_rule(ErrorRule::for_token(token, error));
    }
    // Without `Retry-After`: urllib3, under the SDK, waits out a 429's `Retry-After` and retries.
    standin.add_rule(ErrorRule::for_token(
        "busy-token",
        ScriptedError::QuotaExceeded,
    ));
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sa.json");
    xibaar_fcm_standin::write_service_account(&key, &standin.token_uri()).unwrap();

    let tools = xibaar_testkit::Tools::get().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/official_sdk.py");
    let url = standin.url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&tools.python)
            .arg(script)
            .arg(url)
            .arg(key)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let name = results["success"]["ok"].as_str().unwrap_or_default();
    assert!(
        name.starts_with("projects/xibaar-local/messages/"),
        "{results}"
    );
    for (call, exception) in [
        ("unregistered", "UnregisteredError"),
        ("sender_id_mismatch", "SenderIdMismatchError"),
        ("invalid_argument", "InvalidArgumentError"),
        ("quota_exceeded", "QuotaExceededError"),
        ("third_party_auth", "ThirdPartyAuthError"),
    ] {
        assert_eq!(results[call]["error"], exception, "{call}: {results}");
    }
    assert_eq!(results["send_each"]["success_count"], 2, "{results}");
    assert_eq!(
        results["send_each"]["errors"],
        serde_json::json!([null, "UnregisteredError", null])
    );
    // The stand-in recorded exactly the three pushes it accepted, with what the SDK sent.
    let received = standin.received();
    assert_eq!(received.len(), 3);
    assert_eq!(received[0].message["android"]["collapse_key"], "outage");
    assert_eq!(received[0].message["notification"]["title"], "Coupure");
}

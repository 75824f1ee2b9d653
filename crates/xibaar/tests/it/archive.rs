//! The archive under the real binary: the pipeline archives its event log to an S3 server
//! that checks signatures; once the stream has dropped most of it, replay, audit, the
//! timeline and a rebuild read the archive and give what the whole stream gave. An archiver
//! killed mid-upload resumes with no gap and no repeat; a retention that could lose events is
//! refused.

use std::time::Duration;

use serde_json::{Value, json};
use xibaar::Roles;
use xibaar_streams::names;
use xibaar_testkit::{NatsServer, S3Server, eventually};

use crate::support::{Nats, Pipeline, notification, read_models};

/// `xibaar <args>` on the pipeline's configuration: its stdout, after checking it succeeded.
fn stdout_of(p: &Pipeline, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xibaar"))
        .arg("--config")
        .arg(&p.config_path)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xibaar {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Two outputs the same, line by line; on a difference, where it is (not both whole outputs).
fn assert_same(actual: &str, expected: &str, what: &str) {
    let (a, e): (Vec<&str>, Vec<&str>) = (actual.lines().collect(), expected.lines().collect());
    if let Some(i) = (0..a.len().max(e.len())).find(|&i| a.get(i) != e.get(i)) {
        panic!(
            "{what}: {} lines, expected {}; first difference at line {}:\n  got      {:?}\n  expected {:?}",
            a.len(),
            e.len(),
            i + 1,
            a.get(i),
            e.get(i)
        );
    }
    assert_eq!(actual, expected, "{what}: same lines, different bytes");
}

/// Waits until every event stored so far is in a sealed segment.
async fn archived_to_head(p: &Pipeline) {
    let js = p.jetstream().await;
    let head = p.events_head().await;
    let done = eventually(Duration::from_secs(90), || {
        let js = js.clone();
        async move {
            let lag = xibaar_archive::archive_lag(&js).await.ok()?;
            (lag.archived_through >= head).then_some(())
        }
    })
    .await;
    let lag = xibaar_archive::archive_lag(&js).await.unwrap();
    assert!(
        done.is_some(),
        "archived through {} of {head}",
        lag.archived_through
    );
}

async fn send_to_customers(p: &Pipeline, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let body = notification("normal", &["c1", "c2", "c3"], &format!("bill {i}"));
        ids.push(p.accept(&body).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_the_stream_dropped_is_replayed_audited_and_rebuilt_from_the_archive_as_before() {
    let mut p = Pipeline::prepare_on(Nats::Server(NatsServer::start().await.unwrap())).await;
    let s3 = S3Server::start().await.unwrap();
    p.add_archive(&s3, "segment_max_events = 8\nsegment_max_age = \"1s\"\n");
    p.start_in_process(Roles::ALL).await;
    for (customer, device) in [("c1", "phone-1"), ("c2", "phone-2"), ("c3", "phone-3")] {
        p.register_device(customer, device, &format!("tok-{device}"))
            .await;
    }
    p.wait_for_devices(3).await;
    let ids = send_to_customers(&p, 12).await;
    // Every push made and every outcome stored and projected (the successes a page of devices
    // at a time, so the number of events depends on how FCM's answers fell).
    let stored = eventually(Duration::from_secs(60), || async {
        let projected: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
            .fetch_one(&p.pool)
            .await
            .ok()?;
        (p.standin.received().len() == 36 && projected == 36).then_some(())
    })
    .await;
    assert!(stored.is_some(), "{} events", p.events_head().await);
    p.wait_projected(&p.pool).await;
    archived_to_head(&p).await;

    let everything = stdout_of(&p, &["replay"]);
    let successes = stdout_of(&p, &["replay", "--type", "delivery.page_succeeded"]);
    let of_c2 = stdout_of(&p, &["replay", "--customer", "c2"]);
    let audit = stdout_of(&p, &["audit", "notification", &ids[3], "--json"]);
    let auditor = p.token("auditor", &["audit:read"]);
    let timeline_url = format!("/v1/notifications/{}/timeline", ids[3]);
    let timeline = p.get_json(&timeline_url, Some(&auditor)).await;
    let live = read_models(&p.pool).await;
    let head = p.events_head().await;
    assert_eq!(everything.lines().count() as u64, head);

    // The stream keeps only its last five events, as a short retention would leave it.
    let js = p.jetstream().await;
    js.get_stream(names::EVENTS)
        .await
        .unwrap()
        .purge()
        .sequence(head - 4)
        .await
        .unwrap();
    assert_eq!(p.stream_messages(names::EVENTS).await, 5);

    assert_same(&stdout_of(&p, &["replay"]), &everything, "replay");
    assert_same(
        &stdout_of(&p, &["replay", "--type", "delivery.page_succeeded"]),
        &successes,
        "replay --type",
    );
    assert_same(
        &stdout_of(&p, &["replay", "--customer", "c2"]),
        &of_c2,
        "replay --customer",
    );
    assert_same(
        &stdout_of(&p, &["audit", "notification", &ids[3], "--json"]),
        &audit,
        "audit",
    );
    assert_eq!(p.get_json(&timeline_url, Some(&auditor)).await, timeline);
    let status: Value =
        serde_json::from_str(&stdout_of(&p, &["archive", "status", "--json"])).unwrap();
    assert_eq!(status["lag"]["lost"], 0);
    assert_eq!(status["lag"]["archived_through"], json!(head));

    // The read models folded again from archive + stream equal the live ones, row for row.
    Pipeline::rebuilt(p.spawn_rebuild()).await;
    assert_eq!(read_models(&p.pool).await, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_archiver_killed_mid_upload_resumes_with_no_gap_and_no_repeat() {
    let mut p = Pipeline::prepare_on(Nats::Server(NatsServer::start().await.unwrap())).await;
    let s3 = S3Server::start().await.unwrap();
    p.add_archive(
        &s3,
        "segment_max_events = 15\nsegment_max_age = \"200ms\"\nlease = \"1s\"\n",
    );
    p.start_in_process(Roles {
        archiver: false,
        sources: false,
        ..Roles::ALL
    })
    .await;
    for (customer, device) in [("c1", "phone-1"), ("c2", "phone-2"), ("c3", "phone-3")] {
        p.register_device(customer, device, &format!("tok-{device}"))
            .await;
    }
    // Notifications keep arriving while the archiver is killed (SIGKILL: no release of its
    // lease, segments cut anywhere) and started again, five times.
    let sending = {
        let (api, http, token) = (p.api.clone(), p.http.clone(), p.back_office());
        tokio::spawn(async move {
            for i in 0..60 {
                let body = notification("normal", &["c1", "c2", "c3"], &format!("notice {i}"));
                let r = http
                    .post(format!("{api}/v1/notifications"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    for round in 0..5u64 {
        let mut archiver = p.spawn_role("archiver", &[], std::process::Stdio::null());
        tokio::time::sleep(Duration::from_millis(300 + 170 * round)).await;
        archiver.kill().unwrap();
        archiver.wait().unwrap();
    }
    sending.await.unwrap();
    let _archiver = p.spawn_role("archiver", &[], std::process::Stdio::null());
    archived_to_head(&p).await;

    let verified: Value =
        serde_json::from_str(&stdout_of(&p, &["archive", "verify", "--json"])).unwrap();
    let head = p.events_head().await;
    assert_eq!(verified["gaps"], json!([]));
    assert_eq!(verified["overlaps"], json!([]));
    assert_eq!(verified["damaged"], json!([]));
    assert_eq!(verified["first_sequence"], json!(1));
    assert!(verified["last_sequence"].as_u64().unwrap() >= head);
    assert!(verified["events"].as_u64().unwrap() >= head);
    // Every event exactly once: the archive replays what the stream holds, in order.
    let everything = stdout_of(&p, &["replay"]);
    let js = p.jetstream().await;
    let last = p.events_head().await;
    js.get_stream(names::EVENTS)
        .await
        .unwrap()
        .purge()
        .sequence(last + 1)
        .await
        .unwrap();
    assert_same(&stdout_of(&p, &["replay"]), &everything, "replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_that_could_drop_unarchived_events_is_refused() {
    let mut p = Pipeline::prepare_on(Nats::Server(NatsServer::start().await.unwrap())).await;
    let s3 = S3Server::start().await.unwrap();
    p.add_archive(&s3, "segment_max_age = \"1s\"\noutage_allowance = \"2s\"\n");
    stdout_of(&p, &["streams", "apply"]);
    let js = p.jetstream().await;
    for n in 0..20 {
        js.publish(format!("xibaar.evt.test.{n}.happened"), "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // No archiver runs: the events wait. A retention of 4 s would drop them once they are
    // 4 s old; with a segment's second to spare, that is now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, out) = p.cli_with_env(
        &["streams", "apply"],
        &[("XIBAAR_ARCHIVE__STREAM_RETENTION", "4s")],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("oldest unarchived event (sequence 1)"),
        "{out}"
    );
    // Once the archive holds them, the same retention is applied.
    let _archiver = p.spawn_role("archiver", &[], std::process::Stdio::null());
    archived_to_head(&p).await;
    let (ok, out) = p.cli_with_env(
        &["streams", "apply"],
        &[("XIBAAR_ARCHIVE__STREAM_RETENTION", "4s")],
    );
    assert!(ok, "{out}");
    let max_age = js
        .get_stream(names::EVENTS)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .max_age;
    assert_eq!(max_age, Duration::from_secs(4));
    // A retention shorter than a segment's age plus the tolerated outage is refused as
    // configuration, whatever the archive holds.
    let (ok, out) = p.cli_with_env(
        &["streams", "apply"],
        &[("XIBAAR_ARCHIVE__STREAM_RETENTION", "2s")],
    );
    assert!(!ok);
    assert!(out.contains("archive.stream_retention"), "{out}");
}

#[test]
fn an_archive_without_credentials_or_with_a_bad_ca_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = |archive: &str| {
        let config = dir.path().join("xibaar.toml");
        std::fs::write(
            &config,
            format!("[nats]\nurl = \"nats://127.0.0.1:1\"\n[archive]\n{archive}"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xibaar"))
            .arg("--config")
            .arg(&config)
            .args(["archive", "verify"])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let out = run("bucket = \"xibaar-archive\"\n");
    assert!(out.contains("archive.access_key_id"), "{out}");
    let out = run("bucket = \"xibaar-archive\"\naccess_key_id = \"k\"\n");
    assert!(out.contains("archive.secret_access_key"), "{out}");
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let out = run(&format!(
        "bucket = \"xibaar-archive\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\nca_file = \"{}\"\n",
        not_pem.display()
    ));
    assert!(out.contains("archive.ca_file"), "{out}");
    let out = run("bucket = \"Not_A_Bucket\"\n");
    assert!(out.contains("archive.bucket"), "{out}");
}

//! With the dispatcher away, lag shows the backlog per priority with its age, in `xibaar lag`
//! and on `/metrics`; once a dispatcher runs, both return to zero.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use futures::StreamExt;
use serde_json::Value;
use xibaar_testkit::eventually;

use crate::support::{Pipeline, notification};

const PER_PRIORITY: u64 = 2_500;
const PRIORITIES: [&str; 4] = ["urgent", "high", "normal", "low"];

fn lag(p: &Pipeline, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xibaar"))
        .arg("--config")
        .arg(&p.config_path)
        .arg("lag")
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn command_consumers(report: &Value) -> Vec<(String, u64, f64)> {
    report["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["stream"].as_str().unwrap().starts_with("XIBAAR_CMD_"))
        .map(|c| {
            (
                c["stream"].as_str().unwrap().to_owned(),
                c["pending"].as_u64().unwrap() + c["ack_pending"].as_u64().unwrap(),
                c["seconds_behind"].as_f64().unwrap(),
            )
        })
        .collect()
}

async fn metric(p: &Pipeline, stream: &str) -> Option<f64> {
    let text = p
        .http
        .get(format!("{}/metrics", p.ops))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| {
            l.starts_with("jetstream_consumer_num_pending{")
                && l.contains(&format!("stream_name=\"{stream}\""))
                && l.contains("consumer_name=\"dispatcher\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_dispatcher_shows_as_backlog_and_age_until_it_resumes() {
    let p = Pipeline::start_without_dispatcher().await;
    let started = Instant::now();
    let sends = PRIORITIES
        .iter()
        .flat_map(|priority| (0..PER_PRIORITY).map(move |i| (*priority, i)))
        .map(|(priority, i)| {
            let p = &p;
            async move {
                let body = notification(priority, &["c-nobody"], &format!("Notice {i}"));
                p.send(&body, None).await.status().as_u16()
            }
        });
    let statuses: Vec<u16> = futures::stream::iter(sends)
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 202));
    let sent_in = started.elapsed();

    let (status, out) = lag(&p, &["--json"]);
    assert_eq!(status, 0, "no threshold given: {out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let behind = command_consumers(&report);
    assert_eq!(behind.len(), 4);
    let since_start = started.elapsed().as_secs_f64();
    for (stream, backlog, seconds) in &behind {
        assert_eq!(*backlog, PER_PRIORITY, "{stream}");
        // The oldest command waits since the sending began.
        assert!(
            *seconds >= since_start - sent_in.as_secs_f64() - 1.0 && *seconds <= since_start + 1.0,
            "{stream}: {seconds} s behind after {since_start} s"
        );
    }
    let (status, out) = lag(&p, &["--max-backlog", "1000"]);
    println!("{out}");
    assert_eq!(status, 2, "{out}");
    assert!(
        out.contains("XIBAAR_CMD_URGENT") && out.contains("threshold exceeded"),
        "{out}"
    );
    let seen = eventually(Duration::from_secs(15), || async {
        (metric(&p, "XIBAAR_CMD_LOW").await? == PER_PRIORITY as f64).then_some(())
    })
    .await;
    assert!(seen.is_some(), "/metrics never showed the low backlog");

    // Resume: a dispatcher starts and drains the commands.
    let mut dispatcher = p.spawn_dispatcher(&[]);
    let drained = eventually(Duration::from_secs(120), || async {
        let (_, out) = lag(&p, &["--json", "--max-backlog", "0"]);
        let report: Value = serde_json::from_str(&out).ok()?;
        command_consumers(&report)
            .iter()
            .all(|(_, backlog, seconds)| *backlog == 0 && *seconds == 0.0)
            .then_some(())
    })
    .await;
    assert!(drained.is_some(), "the backlog never drained");
    let (status, out) = lag(&p, &["--max-backlog", "0", "--max-seconds-behind", "5"]);
    assert_eq!(status, 0, "{out}");
    let zero = eventually(Duration::from_secs(15), || async {
        (metric(&p, "XIBAAR_CMD_LOW").await? == 0.0).then_some(())
    })
    .await;
    dispatcher.kill().unwrap();
    dispatcher.wait().unwrap();
    assert!(zero.is_some(), "/metrics never returned to zero");
}

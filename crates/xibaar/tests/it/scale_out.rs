//! Several dispatchers of one deployment keep to the Firebase project's configured rate
//! together: FCM's quota is the project's, not a process's.

use std::time::Duration;

use serde_json::json;
use xibaar_testkit::eventually;

use crate::support::Pipeline;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_keep_to_the_projects_rate_together_even_when_one_is_killed() {
    // 240 a minute configured; the stand-in answers 429 past 250 in a calendar minute (the rate
    // plus each dispatcher's one-cell burst and a margin). The broadcast is larger than a
    // minute's quota, so two dispatchers each at the whole rate (480 a minute) would be refused
    // within the first minute; together at the rate it takes about 75 s.
    const DEVICES: usize = 300;
    let p = Pipeline::start_without_dispatcher().await;
    // The killed dispatcher's pages come back after the ack wait: 10 s, not the shipped 30 s.
    p.shorten_ack_wait(Duration::from_secs(10)).await;
    p.seed_devices(DEVICES).await;
    p.standin.set_quota_per_minute(250);
    let rate = [("XIBAAR_FCM__RATE_LIMIT_PER_MINUTE", "240")];
    let mut first = p.spawn_dispatcher(&rate);
    let _second = p.spawn_dispatcher(&rate);

    let id = p
        .accept(
            &json!({ "priority": "normal", "audience": {"kind": "everyone"},
            "content": {"title": "Tarifs 2027", "body": ""} }),
        )
        .await;
    // One dispatcher is killed -9 a third of the way through and started again.
    let third = eventually(Duration::from_secs(90), || async {
        (p.standin.accepted_count() >= DEVICES as u64 / 3).then_some(())
    })
    .await;
    assert!(third.is_some(), "a third of the broadcast was never pushed");
    first.kill().unwrap();
    let _restarted = p.spawn_dispatcher(&rate);

    let status = p.wait_completed(&id, Duration::from_secs(240)).await;
    assert_eq!(status["targeted"], DEVICES as i64, "{status}");
    let mut tokens = p.pushed_tokens();
    let pushes = tokens.len();
    tokens.dedup();
    println!("{} duplicates", pushes - tokens.len());
    assert_eq!(tokens.len(), DEVICES, "every device pushed");
    assert!(pushes - DEVICES <= 256, "{} duplicates", pushes - DEVICES);
    assert_eq!(
        p.standin.error_count(),
        0,
        "FCM refused pushes: the dispatchers together exceeded the project's rate"
    );
}

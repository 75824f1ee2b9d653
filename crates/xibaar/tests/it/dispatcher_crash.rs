use std::{collections::HashMap, time::Duration};

use xibaar_testkit::{KillOnDrop, eventually};

use crate::support::{Pipeline, stop_gracefully};

const DEVICES: usize = 100_000;
const CONCURRENCY: usize = 64;

fn spawn_dispatcher(p: &Pipeline) -> KillOnDrop {
    let concurrency = CONCURRENCY.to_string();
    p.spawn_dispatcher(&[("XIBAAR_FCM__CONCURRENCY", concurrency.as_str())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_survives_a_dispatcher_kill_with_duplicates_bounded_by_the_in_flight_window() {
    let p = Pipeline::start_without_dispatcher().await;
    // Jobs held by the killed process come back after the ack wait; keep the test short.
    p.shorten_ack_wait(Duration::from_secs(2)).await;
    let seeding = std::time::Instant::now();
    p.seed_devices(DEVICES).await;
    println!("{DEVICES} devices registered in {:?}", seeding.elapsed());

    p.standin.set_latency(Duration::from_millis(2));
    let mut dispatcher = spawn_dispatcher(&p);
    let body = serde_json::json!({
        "priority": "normal",
        "audience": { "kind": "everyone" },
        "content": { "title": "Tariff change", "body": "New tariffs from 1 January" },
    });
    let id = p.accept(&body).await;

    // Killed once a tenth is pushed: well under way, and far from done even when the suite's
    // other tests leave the broadcast a fraction of the two cores (a CI run once pushed fewer
    // than a quarter in 30 s).
    let standin = &p.standin;
    eventually(Duration::from_secs(60), || async {
        (standin.accepted_count() > DEVICES as u64 / 10).then_some(())
    })
    .await
    .expect("pushes started");
    dispatcher.kill().unwrap();
    dispatcher.wait().unwrap();
    let at_kill = standin.accepted_count();
    assert!(
        at_kill < DEVICES as u64,
        "killed mid-broadcast ({at_kill} pushed)"
    );

    let restarted = std::time::Instant::now();
    let mut dispatcher = spawn_dispatcher(&p);
    let status = p.wait_completed(&id, Duration::from_secs(300)).await;
    println!(
        "restarted dispatcher finished the broadcast in {:?}",
        restarted.elapsed()
    );
    dispatcher.kill().unwrap();
    dispatcher.wait().unwrap();
    assert_eq!(status["targeted"], DEVICES);
    assert_eq!(status["sent"], DEVICES);

    let mut per_token: HashMap<String, u32> = HashMap::new();
    for r in standin.received() {
        *per_token.entry(r.token.unwrap()).or_default() += 1;
    }
    assert_eq!(per_token.len(), DEVICES, "every device got the push");
    let duplicates: u32 = per_token.values().map(|n| n - 1).sum();
    // Devices in hand: those at FCM, those recording their outcome, those waiting in a page.
    let window = xibaar_dispatcher::devices_in_hand(CONCURRENCY);
    println!(
        "dispatcher killed after {at_kill} pushes: {duplicates} duplicate pushes (devices in hand at most {window})"
    );
    assert!(
        duplicates as usize <= window,
        "{duplicates} duplicates exceed the in-hand window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_paced_past_its_ack_wait_stays_with_its_dispatcher_and_is_pushed_once() {
    // 300 devices (three pages) at 1,200 pushes a minute take about 15 s, five times the ack
    // wait. One request at a time keeps two pages in hand (`devices_in_hand(1)` is 201), so the
    // third waits in its lane for about 10 s first. A page not said to be in progress, in hand
    // or waiting, would be handed out again and its devices pushed twice.
    const DEVICES: usize = 300;
    let p = Pipeline::start_without_dispatcher().await;
    p.shorten_ack_wait(Duration::from_secs(3)).await;
    p.seed_devices(DEVICES).await;
    let mut dispatcher = p.spawn_dispatcher(&[
        ("XIBAAR_FCM__RATE_LIMIT_PER_MINUTE", "1200"),
        ("XIBAAR_FCM__CONCURRENCY", "1"),
    ]);
    let id = p
        .accept(&serde_json::json!({
            "priority": "normal",
            "audience": { "kind": "everyone" },
            "content": { "title": "Coupure programmée", "body": "Mardi de 9 h à 12 h" },
        }))
        .await;
    let started = std::time::Instant::now();
    let status = p.wait_completed(&id, Duration::from_secs(120)).await;
    let took = started.elapsed();
    // Completed means every outcome is stored; a page handed out again meanwhile would still be
    // pushing its copy. So: no page was handed out twice (the stream holds only this
    // broadcast's pages, so its last sequence is their number).
    let js = p.jetstream().await;
    let mut stream = js.get_stream("XIBAAR_DELIVERIES").await.unwrap();
    let pages = stream.info().await.unwrap().state.last_sequence;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("sender-normal").await.unwrap();
    let handed_out = consumer.info().await.unwrap().delivered.consumer_sequence;
    assert_eq!(handed_out, pages, "pages handed out again while in hand");
    dispatcher.kill().unwrap();
    dispatcher.wait().unwrap();
    assert_eq!(status["sent"], DEVICES, "{status}");
    assert!(
        took > Duration::from_secs(6),
        "paced past the ack wait: {took:?}"
    );
    let mut tokens = p.pushed_tokens();
    let pushes = tokens.len();
    tokens.dedup();
    assert_eq!(tokens.len(), DEVICES, "every device pushed");
    assert_eq!(pushes, DEVICES, "no device pushed twice");
}

/// Seeds `devices`, starts a dispatcher against a stand-in answering in `latency`, sends an
/// `everyone` notification of `priority` and waits (30 s at most) until FCM has accepted more
/// than `pushed` of its pushes; the dispatcher and the notification's id.
async fn broadcast_under_way(
    p: &Pipeline,
    devices: usize,
    latency: Duration,
    priority: &str,
    content: serde_json::Value,
    pushed: u64,
) -> (KillOnDrop, String) {
    p.seed_devices(devices).await;
    p.standin.set_latency(latency);
    let dispatcher = spawn_dispatcher(p);
    let id = p
        .accept(&serde_json::json!({
            "priority": priority,
            "audience": { "kind": "everyone" },
            "content": content,
        }))
        .await;
    let standin = &p.standin;
    eventually(Duration::from_secs(30), || async {
        (standin.accepted_count() > pushed).then_some(())
    })
    .await
    .expect("pushes started");
    (dispatcher, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_dispatcher_finishes_its_pushes_and_hands_back_the_rest() {
    const DEVICES: usize = 5_000;
    let p = Pipeline::start_without_dispatcher().await;
    let content =
        serde_json::json!({ "title": "Bill ready", "body": "Your November bill is ready" });
    let (mut dispatcher, id) = broadcast_under_way(
        &p,
        DEVICES,
        Duration::from_millis(2),
        "high",
        content,
        1_000,
    )
    .await;
    let standin = &p.standin;

    let stopping = std::time::Instant::now();
    stop_gracefully(&mut dispatcher).await;
    let at_stop = standin.accepted_count();
    println!("stopped in {:?} after {at_stop} pushes", stopping.elapsed());
    assert!(at_stop < DEVICES as u64, "stopped mid-broadcast");

    // Handed-back jobs are taken at once by the next start, not after the 30 s ack wait.
    let restarted = std::time::Instant::now();
    let mut dispatcher = spawn_dispatcher(&p);
    let status = p.wait_completed(&id, Duration::from_secs(60)).await;
    let took = restarted.elapsed();
    dispatcher.kill().unwrap();
    dispatcher.wait().unwrap();
    assert_eq!(status["sent"], DEVICES);
    assert!(took < Duration::from_secs(25), "the rest took {took:?}");
    let mut per_token: HashMap<String, u32> = HashMap::new();
    for r in standin.received() {
        *per_token.entry(r.token.unwrap()).or_default() += 1;
    }
    assert_eq!(per_token.len(), DEVICES);
    assert!(
        per_token.values().all(|n| *n == 1),
        "a graceful stop repeats no push"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_told_to_stop_while_nats_is_down_exits_within_its_grace() {
    let mut p = Pipeline::start_without_dispatcher().await;
    let content =
        serde_json::json!({ "title": "Meter visit", "body": "A technician visits tomorrow" });
    let (mut dispatcher, _) =
        broadcast_under_way(&p, 2_000, Duration::from_millis(5), "normal", content, 200).await;

    // NATS goes away mid-broadcast, then the operator stops the dispatcher. Its last acks
    // cannot go out (those jobs come back after their ack wait), but it must not wait for NATS
    // forever: a stop that hangs is a stop nobody can rely on.
    p.nats.server().kill();
    let stopping = std::time::Instant::now();
    let exited = tokio::task::block_in_place(|| {
        xibaar_testkit::stop_gracefully(&mut dispatcher, libc::SIGTERM, Duration::from_secs(40))
    });
    let took = stopping.elapsed();
    println!("stopped in {took:?}: {exited:?}");
    let exited = exited.unwrap_or_else(|| panic!("still running {took:?} after SIGTERM"));
    assert!(exited.success(), "{exited:?}");
}

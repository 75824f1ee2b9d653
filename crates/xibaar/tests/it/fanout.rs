//! Fan-out records its progress per page and resumes after the last device it stored.

use std::time::Duration;

use xibaar_core::NotificationId;
use xibaar_testkit::eventually;

use crate::support::{Pipeline, stop_gracefully};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_fan_out_resumes_after_the_last_recorded_device() {
    let p = Pipeline::start().await;
    p.seed_devices(100).await;

    // As a fan-out that stored the first 60 jobs and then died would have left it (in the
    // shape of the version before devices belonged to their customer: a device id alone).
    let id = NotificationId::from_idempotency_key("billing", "tariff-resume");
    let js = p.jetstream().await;
    let progress = js.get_key_value("XIBAAR_FANOUT").await.unwrap();
    progress
        .put(
            id.to_string(),
            serde_json::to_vec(&serde_json::json!({ "after": "d000059", "published": 60 }))
                .unwrap()
                .into(),
        )
        .await
        .unwrap();

    let body = serde_json::json!({
        "priority": "low",
        "audience": { "kind": "everyone" },
        "content": { "title": "Tariff change", "body": "New tariffs from 1 January" },
    });
    let r = p.send(&body, Some("tariff-resume")).await;
    assert_eq!(r.status(), 202);

    let status = eventually(Duration::from_secs(30), || async {
        p.status(&id.to_string())
            .await
            .filter(|s| s["targeted"].as_i64().is_some() && s["sent"] == 40)
    })
    .await
    .expect("the remaining 40 devices were reached");
    assert_eq!(status["targeted"], 100, "the recorded 60 count as targeted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tokens = p.pushed_tokens();
    let expected: Vec<String> = (60..100).map(|i| format!("tok-{i:06}")).collect();
    assert_eq!(tokens, expected, "exactly the devices after the cursor");

    let recorded = progress.get(id.to_string()).await.unwrap().unwrap();
    let recorded: serde_json::Value = serde_json::from_slice(&recorded).unwrap();
    assert_eq!(
        recorded,
        serde_json::json!({ "after": "d000099", "after_customer": "c99", "published": 100 })
    );
}

/// A low-priority broadcast is expanded only as fast as its lane drains: the jobs waiting for
/// the senders never pass the backlog limit plus one page. Stopped while held back, the
/// dispatcher hands the command back at once, and the next start finishes the broadcast
/// without repeating a push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_fan_out_waits_for_its_lane_to_drain_and_hands_back_at_shutdown() {
    const DEVICES: usize = 1_000;
    const MAX_BACKLOG: u64 = 100;
    const PAGE: u64 = 25;
    let p = Pipeline::start_without_dispatcher().await;
    p.seed_devices(DEVICES).await;
    // Four pushes in flight at 20 ms each: about 200 pushes/s, five seconds for the audience.
    p.standin.set_latency(Duration::from_millis(20));
    let (max_backlog, page) = (MAX_BACKLOG.to_string(), PAGE.to_string());
    let paced = [
        (
            "XIBAAR_DISPATCHER__FANOUT_MAX_BACKLOG",
            max_backlog.as_str(),
        ),
        ("XIBAAR_DISPATCHER__FANOUT_PAGE_SIZE", page.as_str()),
        ("XIBAAR_FCM__CONCURRENCY", "4"),
    ];
    let mut dispatcher = p.spawn_dispatcher(&paced);

    let body = serde_json::json!({
        "priority": "low",
        "audience": { "kind": "everyone" },
        "content": { "title": "Energy tips", "body": "Save on your winter bill" },
    });
    let response = p.send(&body, None).await;
    assert_eq!(response.status(), 202);
    let id = response.json::<serde_json::Value>().await.unwrap()["notification_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The low lane's backlog (published, not yet acked), sampled while half the audience is
    // pushed.
    let js = p.jetstream().await;
    let lane: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("XIBAAR_DELIVERIES")
        .await
        .unwrap()
        .get_consumer(&xibaar_streams::consumers::sender(
            xibaar_core::Priority::Low,
        ))
        .await
        .unwrap();
    let mut highest = 0;
    let mut samples = 0;
    while p.standin.accepted_count() < DEVICES as u64 / 2 {
        let info = lane.get_info().await.unwrap();
        highest = highest.max(info.num_pending + info.num_ack_pending as u64);
        samples += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        highest < MAX_BACKLOG + PAGE,
        "the lane held {highest} jobs, over the limit of {MAX_BACKLOG} plus a page"
    );
    assert!(
        highest >= MAX_BACKLOG - PAGE,
        "the lane was filled up to its limit ({highest} jobs at most in {samples} samples)"
    );

    // Stopped while held back: the dispatcher exits at once, the fan-out half done.
    let stopping = std::time::Instant::now();
    stop_gracefully(&mut dispatcher).await;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "a held-back fan-out does not hold up shutdown ({:?})",
        stopping.elapsed()
    );
    let progress = js.get_key_value("XIBAAR_FANOUT").await.unwrap();
    let recorded = progress.get(&id).await.unwrap().expect("progress recorded");
    let recorded: serde_json::Value = serde_json::from_slice(&recorded).unwrap();
    let published = recorded["published"].as_u64().unwrap();
    assert!(
        published < DEVICES as u64,
        "the fan-out was stopped part-way ({recorded})"
    );

    // The next start (no limit to speak of) resumes the fan-out and finishes the broadcast.
    let mut dispatcher = p.spawn_dispatcher(&[]);
    let status = p.wait_completed(&id, Duration::from_secs(60)).await;
    dispatcher.kill().unwrap();
    dispatcher.wait().unwrap();
    assert_eq!(status["sent"], DEVICES);
    assert_eq!(status["targeted"], DEVICES);
    let tokens = p.pushed_tokens();
    let expected: Vec<String> = (0..DEVICES).map(|i| format!("tok-{i:06}")).collect();
    assert_eq!(tokens, expected, "every device once, none twice");
}

/// A page of notifications (what a source stores) is fanned out notification by notification,
/// each under its own claim: one canceled beforehand sends nothing, and notifications stored
/// again in a page cut differently (rows added under a source's watermark) are not pushed
/// twice, while the new one beside them is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_fans_out_each_notification_once_even_when_stored_again_in_another_page() {
    use xibaar_core::{
        Actor, Audience, Command, CustomerId, Priority, SendNotification,
        notification::{Content, DeliveryOptions},
    };
    use xibaar_streams::fanout::FanOutState;

    let p = Pipeline::start().await;
    p.seed_devices(6).await;
    let notification = |i: usize| SendNotification {
        notification_id: NotificationId::from_idempotency_key("source:bills", &format!("bill-{i}")),
        priority: Priority::Normal,
        audience: Audience::Customers {
            customer_ids: vec![CustomerId::parse(format!("c{i}")).unwrap()],
        },
        content: Content {
            title: format!("Bill {i}"),
            body: "Your bill is due on 15 December.".into(),
            ..Default::default()
        },
        category: None,
        idempotency_key: None,
        delivery: DeliveryOptions::default(),
        requested_by: Actor::system("source:bills"),
        accepted_at: chrono::Utc::now(),
    };
    let js = p.jetstream().await;
    let store = |command: Command| {
        let js = js.clone();
        async move {
            js.publish_with_headers(
                command.subject(),
                xibaar_streams::headers(&command.msg_id(), command.type_name()),
                serde_json::to_vec(&command).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    let progress = js.get_key_value("XIBAAR_FANOUT").await.unwrap();
    progress
        .put(
            notification(2).notification_id.to_string(),
            FanOutState::Canceled {
                canceled_at: chrono::Utc::now(),
                by: "test".into(),
            }
            .encode(),
        )
        .await
        .unwrap();

    store(Command::page((0..5).map(notification).collect()).unwrap()).await;
    let first = ["tok-000000", "tok-000001", "tok-000003", "tok-000004"];
    eventually(Duration::from_secs(30), || async {
        (p.pushed_tokens().len() >= first.len()).then_some(())
    })
    .await
    .expect("the page's notifications were pushed");
    assert_eq!(p.pushed_tokens(), first, "all but the canceled one");

    // 3 and 4 again, beside a new 5: another page, which JetStream does not take for a repeat.
    store(Command::page((3..6).map(notification).collect()).unwrap()).await;
    eventually(Duration::from_secs(30), || async {
        (p.pushed_tokens().len() > first.len()).then_some(())
    })
    .await
    .expect("the new notification was pushed");
    // Settle: a repeat would come with or after it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        p.pushed_tokens(),
        [&first[..], &["tok-000005"]].concat(),
        "each notification pushed once"
    );
    let status = eventually(Duration::from_secs(30), || async {
        p.status(&notification(5).notification_id.to_string())
            .await
            .filter(|s| s["sent"] == 1)
    })
    .await
    .expect("the read model has the new notification");
    assert_eq!(status["targeted"], 1);
}

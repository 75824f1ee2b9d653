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
    // The page after a record of that version went out as jobs of one device, as that version
    // stored them (JetStream drops the ones it holds), and stays recorded in its shape.
    assert_eq!(
        recorded,
        serde_json::json!({ "after": "d000059", "published": 60 })
    );
}

/// While a dispatcher of an earlier version (which reads only jobs of one device) announces
/// itself, fan-outs store jobs of one device, recorded in that version's shape; once it has
/// been silent for the presence's stale time, they store pages again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_outs_store_jobs_of_one_device_while_a_dispatcher_of_an_earlier_version_runs() {
    let p = Pipeline::start_without_dispatcher().await;
    p.seed_devices(30).await;
    let client = async_nats::connect(p.nats.url()).await.unwrap();
    let older = tokio_util::sync::CancellationToken::new();
    let announcing = tokio::spawn({
        let (client, older) = (client.clone(), older.clone());
        async move {
            // As earlier versions announce: an empty message.
            while !older.is_cancelled() {
                client
                    .publish("xibaar.dispatchers.present.earlier", Default::default())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let _dispatcher = p.spawn_dispatcher(&[]);
    let js = p.jetstream().await;
    let progress = js.get_key_value("XIBAAR_FANOUT").await.unwrap();
    let broadcast = |key: &'static str| {
        let p = &p;
        async move {
            let body = serde_json::json!({
                "priority": "normal",
                "audience": { "kind": "everyone" },
                "content": { "title": "Tariff change", "body": "New tariffs from 1 January" },
            });
            let r = p.send(&body, Some(key)).await;
            assert_eq!(r.status(), 202);
            let id = r.json::<serde_json::Value>().await.unwrap()["notification_id"]
                .as_str()
                .unwrap()
                .to_owned();
            p.wait_completed(&id, Duration::from_secs(60)).await;
            id
        }
    };
    let record = |id: String| {
        let progress = progress.clone();
        async move {
            let value = progress.get(id).await.unwrap().unwrap();
            serde_json::from_slice::<serde_json::Value>(&value).unwrap()
        }
    };

    let first = broadcast("alongside-earlier").await;
    let recorded = record(first).await;
    assert!(
        recorded.get("pages").is_none(),
        "jobs of one device, recorded as the earlier version records them: {recorded}"
    );

    older.cancel();
    announcing.await.unwrap();
    // Heard no more after the stale time (7 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let second = broadcast("earlier-gone").await;
    let recorded = record(second).await;
    assert_eq!(
        recorded["pages"],
        serde_json::json!([{ "device_id": "d000029", "customer_id": "c29" }]),
        "pages again: {recorded}"
    );
    assert_eq!(
        p.standin.accepted_count(),
        60,
        "each device once per broadcast"
    );
}

/// A fan-out that recorded where its next pages end, stored the first and died: resumed after
/// a device of the first page left the registry, it cuts the same pages again, so the stored
/// one is dropped as a repeat and the others go out once. (Cut anew every hundred devices, the
/// first page would end one device later, pass for new and push a hundred devices twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_fan_out_cuts_the_pages_it_recorded_and_pushes_each_device_once() {
    use xibaar_core::{
        CustomerId, DeliveryPage, DeviceId, FcmToken, Platform, Priority,
        notification::{Content, DeliveryOptions},
    };

    let p = Pipeline::start_without_dispatcher().await;
    p.seed_devices(250).await;
    let id = NotificationId::from_idempotency_key("billing", "outage-resume");
    let js = p.jetstream().await;
    let end = |i: usize| serde_json::json!({ "device_id": format!("d{i:06}"), "customer_id": format!("c{i}") });
    let progress = js.get_key_value("XIBAAR_FANOUT").await.unwrap();
    progress
        .put(
            id.to_string(),
            serde_json::to_vec(&serde_json::json!({
                "after": null, "published": 0, "pages": [end(99), end(199), end(249)]
            }))
            .unwrap()
            .into(),
        )
        .await
        .unwrap();
    let content = Content {
        title: "Planned outage".into(),
        body: "Power off on Saturday 9-12".into(),
        ..Default::default()
    };
    let mut first = DeliveryPage::new(
        id,
        Priority::Normal,
        DeliveryOptions::default(),
        id.to_string(),
        chrono::Utc::now(),
    );
    for i in 0..100 {
        first.push(
            DeviceId::parse(format!("d{i:06}")).unwrap(),
            CustomerId::parse(format!("c{i}")).unwrap(),
            FcmToken::parse(format!("tok-{i:06}")).unwrap(),
            Platform::Android,
            crate::support::APP_ID.into(),
            content.clone(),
        );
    }
    js.publish_with_headers(
        first.subject(),
        xibaar_streams::headers(&first.msg_id().unwrap(), "delivery_page"),
        serde_json::to_vec(&first).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    sqlx::query("DELETE FROM devices WHERE device_id = 'd000050'")
        .execute(&p.pool)
        .await
        .unwrap();

    let body = serde_json::json!({
        "priority": "normal",
        "audience": { "kind": "everyone" },
        "content": { "title": "Planned outage", "body": "Power off on Saturday 9-12" },
    });
    let r = p.send(&body, Some("outage-resume")).await;
    assert_eq!(r.status(), 202);
    let _dispatcher = p.spawn_dispatcher(&[]);
    eventually(Duration::from_secs(60), || async {
        (p.standin.accepted_count() >= 250).then_some(())
    })
    .await
    .expect("every device was reached");
    // Settle: a repeat would come with or after the last page.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let tokens = p.pushed_tokens();
    let expected: Vec<String> = (0..250).map(|i| format!("tok-{i:06}")).collect();
    assert_eq!(
        tokens, expected,
        "each device once (d000050 in the page stored before it left)"
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
        // Each job is a page of PAGE devices.
        highest = highest.max((info.num_pending + info.num_ack_pending as u64) * PAGE);
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

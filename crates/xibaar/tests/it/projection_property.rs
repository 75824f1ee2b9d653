//! Property: whatever happens to the projector (batches of any size, hard crashes at any point,
//! including between a commit and the moment the runner learns of it, restarts, two runners at
//! once) and however often an event is stored again, the read models equal a pure fold of the
//! same log: every stored event applied once, in order, one at a time, by a runner that never
//! fails.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng};
use xibaar_core::{
    Actor, Audience, Category, Content, CustomerId, DeliveryOptions, DeviceId, Event,
    EventEnvelope, FcmToken, NotificationId, Platform, Priority,
    event::{
        DeliveriesSucceeded, DeliveryExpired, DeliveryFailed, DeliveryFailure, DeliverySucceeded,
        DeviceRegistered, DeviceRemoved, DeviceTokenInvalidated, InboxAllRead, InboxItemRead,
        NotificationAccepted, NotificationCanceled, NotificationFannedOut, NotificationScheduled,
        PreferencesChanged, SucceededDevice,
    },
};
use xibaar_projector::{Projector, ProjectorSettings};

use crate::support::{Pipeline, read_models};

const CUSTOMERS: usize = 5;
const DEVICES: usize = 9;
const TOKENS: usize = 7;

fn customer(i: usize) -> CustomerId {
    CustomerId::parse(format!("c{i}")).unwrap()
}

fn device(i: usize) -> DeviceId {
    DeviceId::parse(format!("d{i}")).unwrap()
}

fn priority(rng: &mut StdRng) -> Priority {
    Priority::ALL[rng.random_range(0..4)]
}

/// A random but plausible history: registrations (tokens moving between devices and
/// customers), removals, invalidations, preference changes, notifications accepted, scheduled
/// or canceled, fanned out, outcomes of every kind (a failure later replaced by a success, as a
/// retry from the DLQ does; successes alone and in pages), read marks.
fn history(rng: &mut StdRng, len: usize) -> Vec<Event> {
    let mut notifications: Vec<(NotificationId, Priority)> = Vec::new();
    let mut events = Vec::with_capacity(len);
    let base = Utc.with_ymd_and_hms(2026, 5, 1, 6, 0, 0).unwrap();
    while events.len() < len {
        let at: DateTime<Utc> = base + chrono::Duration::hours(rng.random_range(0..72));
        let event = match rng.random_range(0..100) {
            0..15 => Event::DeviceRegistered(DeviceRegistered {
                device_id: device(rng.random_range(0..DEVICES)),
                customer_id: customer(rng.random_range(0..CUSTOMERS)),
                token: FcmToken::parse(format!("tok-{}", rng.random_range(0..TOKENS))).unwrap(),
                platform: Platform::Android,
                app_id: "app".into(),
                app_version: rng.random_bool(0.5).then(|| "4.2.0".into()),
                locale: None,
            }),
            15..18 => Event::DeviceRemoved(DeviceRemoved {
                device_id: device(rng.random_range(0..DEVICES)),
                customer_id: customer(rng.random_range(0..CUSTOMERS)),
            }),
            18..21 => Event::DeviceTokenInvalidated(DeviceTokenInvalidated {
                device_id: device(rng.random_range(0..DEVICES)),
                // Events recorded before devices belonged to their customer have none.
                customer_id: rng
                    .random_bool(0.7)
                    .then(|| customer(rng.random_range(0..CUSTOMERS))),
                token: FcmToken::parse(format!("tok-{}", rng.random_range(0..TOKENS))).unwrap(),
                error_code: "UNREGISTERED".into(),
            }),
            21..26 => Event::PreferencesChanged(PreferencesChanged {
                customer_id: customer(rng.random_range(0..CUSTOMERS)),
                categories: Category::ALL
                    .into_iter()
                    .filter_map(|c| {
                        let named = rng.random_bool(0.5);
                        named.then(|| (c, rng.random_bool(0.5)))
                    })
                    .collect(),
            }),
            26..36 => {
                let id = NotificationId(uuid::Uuid::from_u128(rng.random()));
                let p = priority(rng);
                notifications.push((id, p));
                let content = Content {
                    title: format!("n{}", notifications.len()),
                    body: "b".into(),
                    data: Default::default(),
                    image_url: None,
                    ..Default::default()
                };
                let audience = match rng.random_range(0..3) {
                    0 => Audience::Everyone,
                    1 => Audience::Category {
                        category: Category::Outage,
                    },
                    _ => Audience::Customers {
                        customer_ids: (0..CUSTOMERS).map(customer).collect(),
                    },
                };
                let category = rng.random_bool(0.5).then_some(Category::Outage);
                match rng.random_range(0..3) {
                    0 => Event::NotificationScheduled(NotificationScheduled {
                        notification_id: id,
                        priority: p,
                        audience,
                        content,
                        category,
                        idempotency_key: None,
                        delivery: DeliveryOptions {
                            send_at: Some(at),
                            ..Default::default()
                        },
                        send_at: at,
                        accepted_at: at,
                    }),
                    1 if rng.random_bool(0.3) => {
                        Event::NotificationCanceled(NotificationCanceled {
                            notification_id: id,
                            priority: p,
                            audience,
                            content,
                            category,
                            delivery: DeliveryOptions::default(),
                            requested_by: Actor::system("test"),
                            accepted_at: at,
                            canceled_at: at,
                        })
                    }
                    _ => Event::NotificationAccepted(NotificationAccepted {
                        notification_id: id,
                        priority: p,
                        audience,
                        content,
                        category,
                        idempotency_key: None,
                        delivery: DeliveryOptions::default(),
                        accepted_at: at,
                    }),
                }
            }
            _ if notifications.is_empty() => continue,
            36..44 => {
                let (id, p) = notifications[rng.random_range(0..notifications.len())];
                Event::NotificationFannedOut(NotificationFannedOut {
                    notification_id: id,
                    priority: p,
                    targeted: rng.random_range(0..6),
                })
            }
            44..88 => {
                let (notification_id, priority) =
                    notifications[rng.random_range(0..notifications.len())];
                let device_id = device(rng.random_range(0..DEVICES));
                let customer_id = customer(rng.random_range(0..CUSTOMERS));
                let attempt = rng.random_range(1..4);
                match rng.random_range(0..10) {
                    // Successes of a page's devices recorded together, as the sender does.
                    0..3 => Event::DeliveriesSucceeded(DeliveriesSucceeded {
                        notification_id,
                        priority,
                        devices: (0..rng.random_range(1..5))
                            .map(|_| SucceededDevice {
                                device_id: device(rng.random_range(0..DEVICES)),
                                customer_id: customer(rng.random_range(0..CUSTOMERS)),
                                attempt: rng.random_range(1..4),
                                fcm_message_id: format!("m{}", rng.random::<u32>()),
                            })
                            .collect(),
                    }),
                    3..6 => Event::DeliverySucceeded(DeliverySucceeded {
                        notification_id,
                        priority,
                        device_id,
                        customer_id,
                        attempt,
                        fcm_message_id: format!("m{}", rng.random::<u32>()),
                    }),
                    6..9 => Event::DeliveryFailed(DeliveryFailed {
                        notification_id,
                        priority,
                        device_id,
                        customer_id,
                        attempt,
                        reason: [
                            DeliveryFailure::InvalidToken,
                            DeliveryFailure::Rejected,
                            DeliveryFailure::RetriesExhausted,
                        ][rng.random_range(0..3)],
                        error_code: Some("UNAVAILABLE".into()),
                        detail: "d".into(),
                    }),
                    _ => Event::DeliveryExpired(DeliveryExpired {
                        notification_id,
                        priority,
                        device_id,
                        customer_id,
                        attempt,
                        expired_at: at,
                    }),
                }
            }
            88..95 => Event::InboxItemRead(InboxItemRead {
                customer_id: customer(rng.random_range(0..CUSTOMERS)),
                notification_id: notifications[rng.random_range(0..notifications.len())].0,
            }),
            _ => Event::InboxAllRead(InboxAllRead {
                customer_id: customer(rng.random_range(0..CUSTOMERS)),
                up_to_position: rng.random_range(0..(events.len() as i64 + 20)),
            }),
        };
        events.push(event);
    }
    events
}

/// Stores `event`; sometimes a second time under another message id, as a writer repeating
/// itself after JetStream's duplicate window would.
async fn store(
    js: &async_nats::jetstream::Context,
    rng: &mut StdRng,
    event: Event,
    at: DateTime<Utc>,
) {
    let correlation = event.aggregate_id();
    let mut envelope = EventEnvelope::new(event, correlation, None, Actor::system("test"));
    envelope.meta.occurred_at = at;
    let times = if rng.random_bool(0.1) { 2 } else { 1 };
    for _ in 0..times {
        js.publish(envelope.subject(), envelope.to_json().unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

fn settings(rng: &mut StdRng) -> ProjectorSettings {
    ProjectorSettings {
        batch_size: [1, 3, 17, 64, 500][rng.random_range(0..5)],
        batch_wait: Duration::from_millis(rng.random_range(1..15)),
    }
}

/// Runs projectors against `url` under faults while the history is stored, then lets one
/// catch up with the head.
async fn project_under_faults(p: &Pipeline, url: &str, rng: &mut StdRng, events: Vec<Event>) {
    let js = p.jetstream().await;
    let base = Utc.with_ymd_and_hms(2026, 5, 1, 6, 0, 0).unwrap();
    let mut pending = events.into_iter().enumerate().peekable();
    while pending.peek().is_some() {
        let chunk = rng.random_range(0..40);
        for (i, event) in pending.by_ref().take(chunk) {
            store(&js, rng, event, base + chrono::Duration::seconds(i as i64)).await;
        }
        // One or two runners, each on its own connections, for a moment; then a hard crash
        // (the task and its connections dropped wherever they are) or a clean stop.
        let runners = if rng.random_bool(0.25) { 2 } else { 1 };
        let mut tasks = Vec::new();
        let stop = tokio_util::sync::CancellationToken::new();
        for _ in 0..runners {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let projector = Projector::new(js.clone(), pool, settings(rng));
            tasks.push(tokio::spawn(projector.run(stop.clone())));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
        if rng.random_bool(0.7) {
            for task in &tasks {
                task.abort();
            }
        } else {
            stop.cancel();
        }
        for task in tasks {
            let _ = task.await;
        }
    }
    let head = p.events_head().await;
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let mut projector = Projector::new(js, pool, settings(rng));
    projector.catch_up(head, &mut |_| {}).await.unwrap();
}

/// The pure fold: one event per transaction, in order, never interrupted.
async fn fold(p: &Pipeline, url: &str) {
    let head = p.events_head().await;
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let mut projector = Projector::new(
        p.jetstream().await,
        pool,
        ProjectorSettings {
            batch_size: 1,
            batch_wait: Duration::from_millis(1),
        },
    );
    projector.catch_up(head, &mut |_| {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_models_equal_a_pure_fold_whatever_crashes_redeliveries_and_restarts_happen() {
    // No role runs: the test's own projectors are the only readers.
    let p = Pipeline::start_roles(xibaar::Roles::NONE).await;
    let seeds = [7_u64, 1_234, 99_001];
    for (case, seed) in seeds.into_iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(seed);
        // Each case adds to the same log: later cases start from a non-empty history.
        let events = history(&mut rng, 250);
        let faulty =
            p.pg.create_database(&format!("faulty{case}"))
                .await
                .unwrap();
        let pure = p.pg.create_database(&format!("pure{case}")).await.unwrap();
        for url in [&faulty, &pure] {
            xibaar_store::migrate(&sqlx::PgPool::connect(url).await.unwrap())
                .await
                .unwrap();
        }
        project_under_faults(&p, &faulty, &mut rng, events).await;
        fold(&p, &pure).await;
        let (got, want) = (
            read_models(&sqlx::PgPool::connect(&faulty).await.unwrap()).await,
            read_models(&sqlx::PgPool::connect(&pure).await.unwrap()).await,
        );
        assert!(
            want["deliveries"].as_array().unwrap().len() > 20,
            "the history exercises outcomes: {}",
            want["deliveries"]
        );
        for (table, rows) in &want {
            assert_eq!(&got[table], rows, "seed {seed}: {table} differs");
        }
    }
}

/// Two runners at once over a log whose tail is outcomes alone, where a batch folded ahead is
/// one statement that also moves the checkpoint: they refuse each other's batches, and the
/// read models equal the pure fold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_over_outcomes_alone_write_what_one_would() {
    let p = Pipeline::start_roles(xibaar::Roles::NONE).await;
    let js = p.jetstream().await;
    let mut rng = StdRng::seed_from_u64(26);
    // The history's other events first (the notifications the outcomes count against), then
    // its outcomes.
    let (outcomes, others): (Vec<Event>, Vec<Event>) =
        history(&mut rng, 600).into_iter().partition(|e| {
            matches!(
                e,
                Event::DeliveriesSucceeded(_)
                    | Event::DeliverySucceeded(_)
                    | Event::DeliveryFailed(_)
                    | Event::DeliveryExpired(_)
            )
        });
    assert!(outcomes.len() > 100, "{} outcomes", outcomes.len());
    let base = Utc.with_ymd_and_hms(2026, 5, 1, 6, 0, 0).unwrap();
    for (i, event) in others.into_iter().chain(outcomes).enumerate() {
        store(
            &js,
            &mut rng,
            event,
            base + chrono::Duration::seconds(i as i64),
        )
        .await;
    }
    let head = p.events_head().await;
    let (both, pure) = (
        p.pg.create_database("both").await.unwrap(),
        p.pg.create_database("pure").await.unwrap(),
    );
    for url in [&both, &pure] {
        xibaar_store::migrate(&sqlx::PgPool::connect(url).await.unwrap())
            .await
            .unwrap();
    }
    let runners = [3, 5].map(|batch_size| {
        let (js, url) = (js.clone(), both.clone());
        tokio::spawn(async move {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let settings = ProjectorSettings {
                batch_size,
                batch_wait: Duration::from_millis(2),
            };
            Projector::new(js, pool, settings)
                .catch_up(head, &mut |_| {})
                .await
                .unwrap()
        })
    });
    for runner in runners {
        assert_eq!(runner.await.unwrap(), head);
    }
    fold(&p, &pure).await;
    let (got, want) = (
        read_models(&sqlx::PgPool::connect(&both).await.unwrap()).await,
        read_models(&sqlx::PgPool::connect(&pure).await.unwrap()).await,
    );
    for (table, rows) in &want {
        assert_eq!(&got[table], rows, "{table} differs");
    }
    let refused = p.metrics().await;
    assert!(
        refused
            .lines()
            .any(|l| l.starts_with("xibaar_projector_batch_failures_total ") && !l.ends_with(" 0")),
        "the two runners never refused each other's batches: {refused}"
    );
}

//! The FCM client at FCM's real shape: the stand-in allows 100 concurrent streams per HTTP/2
//! connection (as FCM's front ends do) and answers in 150 ms ± 50 ms. The bare client pushes
//! with 1,024 requests in flight; by Little's law that allows 1,024 / 0.15 s = 6,827 pushes/s.
//! Alternating in one run: the client as built (as many connections as the requests need)
//! against the same client held to one connection (every request queued behind its 100
//! streams, the bound being 100 / 0.15 s = 667 pushes/s).

use std::{
    collections::BTreeMap,
    num::NonZeroU32,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use xibaar_benches::scale;
use xibaar_core::{
    Content, CustomerId, DeliveryJob, DeviceId, FcmToken, NotificationId, Platform, Priority,
};
use xibaar_fcm::{FcmClient, Message};
use xibaar_fcm_standin::{StandIn, StandInConfig};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const APP_ID: &str = "1:1234567890:android:xibaar";
const IN_FLIGHT: usize = 1024;
const LATENCY: Duration = Duration::from_millis(150);
const JITTER: Duration = Duration::from_millis(50);
const ROUNDS: usize = 2;

fn message(i: usize) -> Message {
    Message::for_job(&DeliveryJob {
        notification_id: NotificationId::generate(),
        priority: Priority::Normal,
        device_id: DeviceId::parse(format!("d{i}")).expect("a device id"),
        customer_id: CustomerId::parse(format!("c{i}")).expect("a customer id"),
        token: FcmToken::parse(format!("tok-{i}")).expect("a token"),
        platform: Platform::Android,
        app_id: APP_ID.into(),
        content: Content {
            title: "Coupure programmée".into(),
            body: "Le courant sera coupé demain de 9 h à 12 h.".into(),
            data: BTreeMap::new(),
            ..Default::default()
        },
        delivery: xibaar_core::DeliveryOptions::default(),
        correlation_id: "bench".into(),
        accepted_at: chrono::Utc::now(),
    })
}

/// `n` pushes with `IN_FLIGHT` requests in flight; pushes/s and the connections used.
async fn push(standin: &StandIn, streams: u32, n: usize) -> anyhow::Result<(f64, usize)> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("sa.json");
    xibaar_fcm_standin::write_service_account(&key, &standin.token_uri())?;
    let client = Arc::new(FcmClient::new(&xibaar_config::FcmConfig {
        endpoint: standin.url(),
        concurrency: IN_FLIGHT,
        streams_per_connection: NonZeroU32::new(streams).expect("non-zero"),
        rate_limit_per_minute: NonZeroU32::new(u32::MAX).expect("non-zero"),
        apps: vec![xibaar_config::FcmApp {
            app_id: APP_ID.into(),
            project_id: "xibaar-local".into(),
            service_account_file: key,
        }],
        ..xibaar_config::FcmConfig::default()
    })?);
    // The access token first.
    client.send(APP_ID, &message(0)).await?;
    let started = Instant::now();
    let failed = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move { client.send(APP_ID, &message(i)).await.is_err() }
        })
        .buffer_unordered(IN_FLIGHT)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    anyhow::ensure!(failed == 0, "{failed} pushes failed");
    Ok((
        n as f64 / started.elapsed().as_secs_f64(),
        client.connections(),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As the `xibaar` binary runs: what runs in this process pays for memory what a role does.
    xibaar::without_huge_pages();
    let n = scale(30_000);
    let bound = IN_FLIGHT as f64 / LATENCY.as_secs_f64();
    let one_bound = 100.0 / LATENCY.as_secs_f64();
    println!(
        "FCM client: {n} pushes, {IN_FLIGHT} in flight, stand-in at 100 streams per connection and {LATENCY:?} ± {JITTER:?}; Little's law allows {bound:.0}/s ({one_bound:.0}/s on one connection)"
    );
    let standin = StandIn::start(StandInConfig {
        latency: LATENCY,
        latency_jitter: JITTER,
        record_messages: false,
        ..StandInConfig::default()
    })
    .await?;
    for round in 1..=ROUNDS {
        let (pooled, connections) = push(&standin, 100, n).await?;
        // One connection: the old client's shape.
        let (single, _) = push(&standin, u32::MAX, n / 5).await?;
        println!(
            "  round {round}: {connections} connections: {pooled:.0} pushes/s = {:.2} of the bound; one connection: {single:.0} pushes/s = {:.2} of its own bound; {:.1}x",
            pooled / bound,
            single / one_bound,
            pooled / single
        );
    }
    Ok(())
}

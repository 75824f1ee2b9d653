//! Delivery-job publishing: Xibaar's pipelined publisher against a one-round-trip-per-message
//! baseline, same payloads, same server, same run.

use std::{collections::BTreeMap, time::Instant};

use bytes::Bytes;
use xibaar_core::{
    Content, CustomerId, DeliveryJob, DeliveryOptions, DeviceId, FcmToken, NotificationId,
    Platform, Priority,
};
use xibaar_streams::{Definitions, Pipeline};
use xibaar_testkit::NatsServer;

const MESSAGES: usize = 50_000;

fn jobs(notification: NotificationId) -> Vec<(String, String, Bytes)> {
    (0..MESSAGES)
        .map(|i| {
            let job = DeliveryJob {
                notification_id: notification,
                priority: Priority::Low,
                device_id: DeviceId::parse(format!("device-{i:07}")).expect("valid id"),
                customer_id: CustomerId::parse(format!("customer-{i:07}")).expect("valid id"),
                token: FcmToken::parse(format!("fcm-token-{i:07}-{}", "x".repeat(140)))
                    .expect("valid token"),
                platform: Platform::Android,
                app_id: "1:1234567890:android:xibaar".into(),
                content: Content {
                    title: "Your bill is ready".into(),
                    body: "Your November bill of 12,500 XOF is due on 5 December.".into(),
                    data: BTreeMap::from([("kind".into(), "bill".into())]),
                    image_url: None,
                    ..Default::default()
                },
                delivery: DeliveryOptions::default(),
                correlation_id: notification.to_string(),
                accepted_at: chrono::Utc::now(),
            };
            let payload = Bytes::from(serde_json::to_vec(&job).expect("a job serialises"));
            (job.subject(), job.msg_id(), payload)
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As the `xibaar` binary runs: what runs in this process pays for memory what a role does.
    xibaar::without_huge_pages();
    let nats = NatsServer::start().await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = xibaar::startup::jetstream(client);
    xibaar_streams::apply(&js, &Definitions::builtin()).await?;

    let baseline = jobs(NotificationId::generate());
    let size = baseline[0].2.len();
    let started = Instant::now();
    for (subject, id, payload) in baseline {
        js.publish_with_headers(
            subject,
            xibaar_streams::headers(&id, "delivery_job"),
            payload,
        )
        .await?
        .await?;
    }
    let baseline_rate = MESSAGES as f64 / started.elapsed().as_secs_f64();

    let pipelined = jobs(NotificationId::generate());
    let started = Instant::now();
    let mut pipeline = Pipeline::new(js.clone(), 1024);
    for (subject, id, payload) in pipelined {
        pipeline
            .publish(
                subject,
                xibaar_streams::headers(&id, "delivery_job"),
                payload,
            )
            .await?;
    }
    let summary = pipeline.flush().await?;
    let pipelined_rate = MESSAGES as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(
        summary.stored == MESSAGES as u64,
        "stored {} of {MESSAGES}",
        summary.stored
    );

    println!("delivery-job publishing, {MESSAGES} messages of {size} bytes, file storage, R1");
    println!("  one round trip per message (baseline): {baseline_rate:>10.0} msgs/s");
    println!("  xibaar pipeline, window 1024:          {pipelined_rate:>10.0} msgs/s");
    println!(
        "  ratio:                                 {:>10.1}x",
        pipelined_rate / baseline_rate
    );
    Ok(())
}

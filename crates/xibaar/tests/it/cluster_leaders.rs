//! Losing a node that leads none of the main streams, only key-value buckets (sent-markers,
//! fan-out progress, idempotency claims) and consumers: sends, fan-outs, pushes and acks ride
//! out the elections those groups hold.

use std::time::Duration;

use futures::StreamExt;
use xibaar_testkit::{Group, NatsCluster};

use crate::{
    cluster::send_through_a_node_loss,
    support::{Nats, Pipeline},
};

/// Moves leadership so that node `victim` leads every key-value bucket and every durable
/// consumer, and no other stream.
async fn lead_only_buckets_and_consumers(
    cluster: &NatsCluster,
    js: &async_nats::jetstream::Context,
    victim: usize,
) -> (Vec<String>, Vec<String>) {
    let other = (victim + 1) % 3;
    let streams: Vec<String> = js.stream_names().map(|n| n.unwrap()).collect().await;
    let (mut buckets, mut consumers) = (Vec::new(), Vec::new());
    for stream in &streams {
        if stream.starts_with("KV_") {
            cluster
                .move_leader(js, Group::Stream(stream), victim)
                .await
                .unwrap();
            buckets.push(stream.clone());
            continue;
        }
        cluster
            .move_leader(js, Group::Stream(stream), other)
            .await
            .unwrap();
        let names: Vec<String> = js
            .get_stream(stream)
            .await
            .unwrap()
            .consumer_names()
            .map(|n| n.unwrap())
            .collect()
            .await;
        for consumer in names {
            let info = js
                .get_stream(stream)
                .await
                .unwrap()
                .consumer_info(&consumer)
                .await
                .unwrap()
                .clone();
            if info.config.durable_name.is_none() {
                continue;
            }
            cluster
                .move_leader(js, Group::Consumer(stream, &consumer), victim)
                .await
                .unwrap();
            consumers.push(format!("{stream}/{consumer}"));
        }
    }
    // The moves are what the test is about: check them all once more, at the end.
    for stream in &streams {
        let leader = NatsCluster::leader(js, Group::Stream(stream))
            .await
            .unwrap();
        let leads = leader.as_deref() == Some(cluster.name(victim));
        assert_eq!(
            leads,
            stream.starts_with("KV_"),
            "{stream} led by {leader:?}"
        );
    }
    (buckets, consumers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_node_that_leads_only_buckets_and_consumers_delays_nothing_beyond_its_elections()
{
    let cluster = NatsCluster::start().await.unwrap();
    let p = Pipeline::start_on(Nats::Cluster(cluster), xibaar::Roles::ALL).await;
    let devices = 300;
    p.seed_devices(devices).await;
    p.wait_for_devices(devices as i64).await;
    let js = p.jetstream().await;
    let victim = 2;
    let (buckets, consumers) = lead_only_buckets_and_consumers(p.nats.cluster(), &js, victim).await;
    println!(
        "{} leads {buckets:?} and {consumers:?}",
        p.nats.cluster().name(victim)
    );

    let duplicates =
        send_through_a_node_loss(&p, devices, 32, Duration::from_millis(40), victim).await;
    assert_eq!(duplicates, 0, "pushes repeated");
}

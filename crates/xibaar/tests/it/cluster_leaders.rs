//! Losing a node that leads none of the main streams, only key-value buckets (sent-markers,
//! fan-out progress, idempotency claims) and consumers: sends, fan-outs, pushes and acks ride
//! out the elections those groups hold.

use std::time::Duration;

use futures::StreamExt;
use xibaar_testkit::{Group, NatsCluster};

use crate::{
    cluster::{ELECTION_MARGIN, assert_nothing_lost, send_paced, slowest_delivery},
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

    let every = Duration::from_millis(40);
    let down_for = Duration::from_secs(10);
    let sends = send_paced(&p, devices, 32, every);
    let crash = async {
        tokio::time::sleep(every * (devices as u32 / 3)).await;
        p.nats.cluster().kill(victim);
        tokio::time::sleep(down_for).await;
        p.nats.cluster().start_node(victim).await.unwrap();
    };
    let (sent, ()) = tokio::join!(sends, crash);
    let refused: Vec<_> = sent.iter().filter(|s| s.status != 202).collect();
    assert!(refused.is_empty(), "sends not accepted: {refused:?}");
    let duplicates = assert_nothing_lost(&p, devices).await;
    let slowest_send = sent.iter().map(|s| s.took).max().unwrap();
    let slowest_push = slowest_delivery(&p, &sent);
    println!(
        "slowest send {slowest_send:?}, slowest 202→push {slowest_push:?}, {duplicates} duplicate pushes"
    );
    // The election, as the clients lived it, is the slowest send: no push waited much longer
    // after its 202 (an ack wait of 30 or 60 s, a fan-out left for redelivery, would).
    assert!(
        slowest_push <= slowest_send + ELECTION_MARGIN,
        "a push waited {slowest_push:?} after its 202; the slowest send took {slowest_send:?}"
    );
    assert_eq!(duplicates, 0, "pushes repeated");
}

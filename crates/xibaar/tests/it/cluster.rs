//! Xibaar on a three-node JetStream cluster (real nats-server routes on loopback), every stream
//! at three replicas, the roles configured with all three URLs.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use xibaar_testkit::{NatsCluster, eventually};

use crate::support::{APP_ID, Nats, Pipeline, notification};

/// Whether a role's process still runs.
fn running(role: &mut xibaar_testkit::KillOnDrop) -> bool {
    role.try_wait().unwrap().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_started_before_the_cluster_forms_waits_and_then_works() {
    // One node of three is up: no quorum, JetStream cannot answer. The roles are started as
    // their own processes, with every node's URL (two of them down).
    let cluster = NatsCluster::lay_out().unwrap();
    cluster.start_node(0).await.unwrap();
    let p = Pipeline::prepare_on(Nats::Cluster(cluster)).await;
    let null = || std::process::Stdio::null();
    let mut roles = [
        p.spawn_role("api", &[], null()),
        p.spawn_role("dispatcher", &[], null()),
        p.spawn_role("projector", &[], null()),
    ];
    tokio::time::sleep(Duration::from_secs(4)).await;
    for role in &mut roles {
        assert!(
            running(role),
            "a role exited while the cluster was not formed"
        );
    }

    // The other two nodes come up: the cluster forms, and the roles get to work.
    let cluster = p.nats.cluster();
    cluster.start_node(1).await.unwrap();
    cluster.start_node(2).await.unwrap();
    let registered = eventually(Duration::from_secs(60), || async {
        let r = p
            .http
            .post(format!("{}/v1/devices", p.api))
            .bearer_auth(p.token("c1", &[]))
            .json(
                &json!({ "device_id": "phone", "token": "tok-c1", "platform": "android",
                           "app_id": APP_ID }),
            )
            .send()
            .await
            .ok()?;
        (r.status() == 202).then_some(())
    })
    .await;
    assert!(
        registered.is_some(),
        "the api never accepted a registration"
    );
    p.wait_for_devices(1).await;
    let id = p.accept(&notification("urgent", &["c1"], "formed")).await;
    let status = p.wait_completed(&id, Duration::from_secs(60)).await;
    assert_eq!(status["sent"], 1, "{status}");
    for role in &mut roles {
        assert!(running(role), "a role exited");
    }
}

/// Sends `count` notifications (customer `c<i>` each, key `k-<i>`), `in_flight` at a time and
/// at most one every `every`: each send's answer and how long it took.
async fn send_paced(
    p: &Pipeline,
    count: usize,
    in_flight: usize,
    every: Duration,
) -> Vec<(u16, Duration)> {
    futures::stream::iter(0..count)
        .map(|i| async move {
            tokio::time::sleep(every * i as u32).await;
            let body = notification("normal", &[&format!("c{i}")], &format!("n{i}"));
            let started = Instant::now();
            let r = p.send(&body, Some(&format!("k-{i}"))).await;
            (r.status().as_u16(), started.elapsed())
        })
        .buffer_unordered(in_flight)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_command_streams_leader_delays_sends_but_every_one_is_accepted_and_pushed() {
    let cluster = NatsCluster::start().await.unwrap();
    let p = Pipeline::start_on(Nats::Cluster(cluster), xibaar::Roles::ALL).await;
    let devices = 300;
    p.seed_devices(devices).await;

    // The node leading the normal command stream is killed a third of the way in, and
    // started again 10 s later.
    let js = p.jetstream().await;
    let leader = js
        .get_stream("XIBAAR_CMD_NORMAL")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("the stream has a leader");
    let victim = p.nats.cluster().index_of(&leader).unwrap();
    let every = Duration::from_millis(40);
    let sends = {
        let p = &p;
        async move { send_paced(p, devices, 32, every).await }
    };
    let answers = {
        let cluster = p.nats.cluster();
        let crash = async move {
            tokio::time::sleep(every * (devices as u32 / 3)).await;
            cluster.kill(victim);
            tokio::time::sleep(Duration::from_secs(10)).await;
            cluster.start_node(victim).await.unwrap();
        };
        let (answers, ()) = tokio::join!(sends, crash);
        answers
    };
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s != 202).collect();
    assert!(refused.is_empty(), "sends not accepted: {refused:?}");
    let slowest = answers.iter().map(|(_, t)| *t).max().unwrap();
    println!("node {leader} killed; slowest accepted send took {slowest:?}");

    // Every device is pushed; a repeat only within the in-flight window.
    let pushed = eventually(Duration::from_secs(120), || async {
        let tokens = p.pushed_tokens();
        let mut distinct = tokens.clone();
        distinct.dedup();
        (distinct.len() == devices).then_some(tokens)
    })
    .await
    .expect("every device pushed");
    let duplicates = pushed.len() - devices;
    println!("{duplicates} duplicate pushes");
    assert!(duplicates <= 256, "{duplicates} duplicates");
    // Read models exact: every notification completed with one push counted.
    let counted = eventually(Duration::from_secs(60), || async {
        let (completed, sent): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'completed'), sum(sent)::bigint FROM notifications",
        )
        .fetch_one(&p.pool)
        .await
        .ok()?;
        (completed == devices as i64).then_some(sent)
    })
    .await
    .expect("every notification completed");
    assert_eq!(counted, Some(devices as i64));
    // Nothing left behind: `xibaar lag` drains.
    let drained = eventually(Duration::from_secs(60), || async {
        let (ok, _) = p.cli(&["lag", "--max-backlog", "0"]);
        ok.then_some(())
    })
    .await;
    assert!(drained.is_some(), "{}", p.cli(&["lag"]).1);
}

/// Sends `body` with `key` to the first api of `apis` that answers, as a balancer would after a
/// failed connection; the status it answered with.
async fn send_through(
    p: &Pipeline,
    apis: &[String],
    first: usize,
    body: &serde_json::Value,
    key: &str,
) -> u16 {
    for attempt in 0..apis.len() * 20 {
        let api = &apis[(first + attempt) % apis.len()];
        let sent = p
            .http
            .post(format!("{api}/v1/notifications"))
            .bearer_auth(p.back_office())
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        match sent {
            Ok(r) => return r.status().as_u16(),
            // The api was killed or is starting: the balancer tries another.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_every_role_lose_nothing_when_one_of_each_is_killed_and_restarted() {
    let cluster = NatsCluster::start().await.unwrap();
    let p = Pipeline::prepare_on(Nats::Cluster(cluster)).await;
    let null = || std::process::Stdio::null();
    let ports = [crate::support::free_port(), crate::support::free_port()];
    let apis: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let listen: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let spawn_api =
        |i: usize| p.spawn_role("api", &[("XIBAAR_API__LISTEN", listen[i].as_str())], null());
    let mut killed_api = spawn_api(0);
    let _api = spawn_api(1);
    let mut killed_dispatcher = p.spawn_dispatcher(&[]);
    let _dispatcher = p.spawn_dispatcher(&[]);
    let mut killed_projector = p.spawn_role("projector", &[], null());
    let _projector = p.spawn_role("projector", &[], null());
    // An api listens once the streams are applied.
    let up = eventually(Duration::from_secs(60), || async {
        let r = p
            .http
            .get(format!("{}/openapi.json", apis[1]))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(up.is_some(), "no api came up");
    let devices = 300;
    p.seed_devices(devices).await;

    let every = Duration::from_millis(40);
    let sends = futures::stream::iter(0..devices)
        .map(|i| {
            let (p, apis) = (&p, &apis);
            async move {
                tokio::time::sleep(every * i as u32).await;
                let body = notification("normal", &[&format!("c{i}")], &format!("n{i}"));
                send_through(p, apis, i, &body, &format!("k-{i}")).await
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<u16>>();
    let crash = async {
        tokio::time::sleep(every * (devices as u32 / 3)).await;
        for role in [
            &mut killed_api,
            &mut killed_dispatcher,
            &mut killed_projector,
        ] {
            role.kill().unwrap();
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        [
            spawn_api(0),
            p.spawn_dispatcher(&[]),
            p.spawn_role("projector", &[], null()),
        ]
    };
    let (answers, _restarted) = tokio::join!(sends, crash);
    let refused: Vec<_> = answers.iter().filter(|s| **s != 202).collect();
    assert!(refused.is_empty(), "sends not accepted: {refused:?}");

    let pushed = eventually(Duration::from_secs(120), || async {
        let tokens = p.pushed_tokens();
        let mut distinct = tokens.clone();
        distinct.dedup();
        (distinct.len() == devices).then_some(tokens)
    })
    .await
    .expect("every device pushed");
    assert!(
        pushed.len() - devices <= 256,
        "{} duplicates",
        pushed.len() - devices
    );
    assert_eq!(p.standin.error_count(), 0, "FCM refused pushes");
    let counted = eventually(Duration::from_secs(60), || async {
        let (completed, sent): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'completed'), sum(sent)::bigint FROM notifications",
        )
        .fetch_one(&p.pool)
        .await
        .ok()?;
        (completed == devices as i64).then_some(sent)
    })
    .await
    .expect("every notification completed in the read models");
    assert_eq!(counted, Some(devices as i64), "each push counted once");
    let drained = eventually(Duration::from_secs(60), || async {
        let (ok, _) = p.cli(&["lag", "--max-backlog", "0"]);
        ok.then_some(())
    })
    .await;
    assert!(drained.is_some(), "{}", p.cli(&["lag"]).1);
}

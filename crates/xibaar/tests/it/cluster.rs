//! Xibaar on a three-node JetStream cluster (real nats-server routes on loopback), every stream
//! at three replicas, the roles configured with all three URLs.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use xibaar_testkit::{NatsCluster, eventually};

use crate::support::{APP_ID, Nats, Pipeline, answers, notification};

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
    let mut stopped_early = p.spawn_role("dispatcher", &[], null());
    tokio::time::sleep(Duration::from_secs(4)).await;
    for role in &mut roles {
        assert!(
            running(role),
            "a role exited while the cluster was not formed"
        );
    }
    // Told to stop while it waits, a role stops cleanly: a stop is not a failure.
    crate::support::stop_gracefully(&mut stopped_early).await;

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

    let duplicates = assert_nothing_lost(&p, devices).await;
    println!("{duplicates} duplicate pushes");
}

/// Every one of `devices` devices pushed (repeats only within the in-flight window), no FCM
/// refusal, every notification completed with one push counted, `xibaar lag` drained; the
/// number of repeated pushes.
async fn assert_nothing_lost(p: &Pipeline, devices: usize) -> usize {
    let pushed = eventually(Duration::from_secs(120), || async {
        let tokens = p.pushed_tokens();
        let mut distinct = tokens.clone();
        distinct.dedup();
        (distinct.len() == devices).then_some(tokens)
    })
    .await
    .expect("every device pushed");
    let duplicates = pushed.len() - devices;
    assert!(duplicates <= 256, "{duplicates} duplicates");
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
    duplicates
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

/// Two apis (on their own ports), two dispatchers and two projectors, each its own process,
/// on a fresh three-node cluster, with `DEVICES` devices registered.
struct TwoOfEach {
    p: Pipeline,
    /// Each process's log, by its index, appended across restarts.
    logs: tempfile::TempDir,
    apis: Vec<String>,
    listen: Vec<String>,
}

const DEVICES: usize = 300;

impl TwoOfEach {
    /// The deployment and its six processes: api 0, api 1, dispatcher 0, dispatcher 1,
    /// projector 0, projector 1.
    async fn start() -> (Self, Vec<xibaar_testkit::KillOnDrop>) {
        let cluster = NatsCluster::start().await.unwrap();
        let p = Pipeline::prepare_on(Nats::Cluster(cluster)).await;
        let ports = [crate::support::free_port(), crate::support::free_port()];
        let two = Self {
            logs: tempfile::tempdir().unwrap(),
            apis: ports
                .iter()
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect(),
            listen: ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            p,
        };
        let roles = (0..6).map(|i| two.spawn(i)).collect();
        // An api listens once the streams are applied.
        for api in &two.apis {
            let up = answers(
                &two.p.http,
                &format!("{api}/openapi.json"),
                Duration::from_secs(90),
            )
            .await;
            assert!(up, "{api} never came up");
        }
        two.p.seed_devices(DEVICES).await;
        (two, roles)
    }

    /// Starts process `i` (see [`TwoOfEach::start`]).
    fn spawn(&self, i: usize) -> xibaar_testkit::KillOnDrop {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.path().join(format!("{i}.log")))
            .unwrap();
        let null = move || std::process::Stdio::from(log.try_clone().unwrap());
        match i {
            0 | 1 => self.p.spawn_role(
                "api",
                &[("XIBAAR_API__LISTEN", self.listen[i].as_str())],
                null(),
            ),
            2 | 3 => self.p.spawn_role("dispatcher", &[], null()),
            _ => self.p.spawn_role("projector", &[], null()),
        }
    }

    /// `DEVICES` sends, one every 40 ms, alternating between the apis: each send's last answer.
    async fn send_all(&self) -> Vec<u16> {
        let every = Duration::from_millis(40);
        futures::stream::iter(0..DEVICES)
            .map(|i| async move {
                tokio::time::sleep(every * i as u32).await;
                let body = notification("normal", &[&format!("c{i}")], &format!("n{i}"));
                send_through(&self.p, &self.apis, i, &body, &format!("k-{i}")).await
            })
            .buffer_unordered(32)
            .collect()
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_every_role_lose_nothing_when_one_of_each_is_killed_and_restarted() {
    let (two, mut roles) = TwoOfEach::start().await;
    let crash = async {
        tokio::time::sleep(Duration::from_millis(40) * (DEVICES as u32 / 3)).await;
        for i in [0, 2, 4] {
            roles[i].kill().unwrap();
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        [two.spawn(0), two.spawn(2), two.spawn(4)]
    };
    let (answers, _restarted) = tokio::join!(two.send_all(), crash);
    let refused: Vec<_> = answers.iter().filter(|s| **s != 202).collect();
    assert!(refused.is_empty(), "sends not accepted: {refused:?}");
    assert_nothing_lost(&two.p, DEVICES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_role_under_load_loses_nothing_and_answers_no_5xx_but_503() {
    let (two, mut roles) = TwoOfEach::start().await;
    // Each of the six processes in turn: SIGTERM, wait for it to exit, start it again, wait a
    // moment for it to start, the next.
    let restarts = async {
        let mut fresh = Vec::new();
        for (i, role) in roles.iter_mut().enumerate() {
            let exit = tokio::task::block_in_place(|| {
                xibaar_testkit::stop_gracefully(role, libc::SIGTERM, Duration::from_secs(20))
            })
            .unwrap();
            let log = std::fs::read_to_string(two.logs.path().join(format!("{i}.log")));
            assert!(
                exit.success(),
                "process {i} exited with {exit:?}:\n{}",
                log.unwrap_or_default()
            );
            fresh.push(two.spawn(i));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        fresh
    };
    let (answers, _fresh) = tokio::join!(two.send_all(), restarts);
    let server_errors: Vec<_> = answers
        .iter()
        .filter(|s| **s >= 500 && **s != 503)
        .collect();
    assert!(
        server_errors.is_empty(),
        "5xx other than 503: {server_errors:?}"
    );
    let unanswered: Vec<_> = answers
        .iter()
        .filter(|s| **s != 202 && **s != 503)
        .collect();
    assert!(unanswered.is_empty(), "{unanswered:?}");
    // A 503 invites a retry with the same key: every one is then accepted.
    for (i, status) in answers.iter().enumerate() {
        if *status == 503 {
            let body = notification("normal", &[&format!("c{i}")], &format!("n{i}"));
            let again = send_through(&two.p, &two.apis, i, &body, &format!("k-{i}")).await;
            assert_eq!(again, 202, "retry of send {i}");
        }
    }
    assert_nothing_lost(&two.p, DEVICES).await;
}

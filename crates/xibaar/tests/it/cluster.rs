//! Xibaar on a three-node JetStream cluster (real nats-server routes on loopback), every stream
//! at three replicas, the roles configured with all three URLs.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use xibaar_testkit::{Group, NatsCluster, eventually};

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

/// One paced send: its answer, how long it took, and when it was answered.
#[derive(Debug)]
struct Sent {
    status: u16,
    took: Duration,
    answered_at: chrono::DateTime<chrono::Utc>,
}

/// Sends `count` notifications (customer `c<i>` each, key `k-<i>`), `in_flight` at a time and
/// at most one every `every`, in index order.
async fn send_paced(p: &Pipeline, count: usize, in_flight: usize, every: Duration) -> Vec<Sent> {
    // Each send's time is fixed from the start, not from when the window reaches it.
    let start = tokio::time::Instant::now();
    futures::stream::iter(0..count)
        .map(|i| async move {
            tokio::time::sleep_until(start + every * i as u32).await;
            let body = notification("normal", &[&format!("c{i}")], &format!("n{i}"));
            let started = Instant::now();
            let r = p.send(&body, Some(&format!("k-{i}"))).await;
            Sent {
                status: r.status().as_u16(),
                took: started.elapsed(),
                answered_at: chrono::Utc::now(),
            }
        })
        .buffered(in_flight)
        .collect()
        .await
}

/// How long the lost node stays down: long enough that a push waiting for its return, or for
/// an ack wait (30 s), waits far longer than [`ELECTION_MARGIN`] allows.
const DOWN_FOR: Duration = Duration::from_secs(30);

/// How much longer than its elections a push may wait: a request sent to a leader as it died
/// goes unanswered until it is made again (a pull 3 s after it was sent, a store after 2 s), a
/// refused one waits out the retries' backoff (at most 2 s), and a loaded machine schedules
/// late (up to 7.9 s beyond the elections seen with every cluster test of the suite running at
/// once on two cores). Waiting for the node's return ([`DOWN_FOR`], less the elections), or for
/// an ack wait (30 s), is at least 25 s.
const ELECTION_MARGIN: Duration = Duration::from_secs(15);

/// The longest wait, over the sends, from the later of its `202` and `settled` (the last
/// election the node's loss caused) to its first push at the stand-in.
fn slowest_delivery(
    p: &Pipeline,
    sent: &[Sent],
    settled: chrono::DateTime<chrono::Utc>,
) -> Duration {
    let mut first_push = std::collections::HashMap::new();
    for received in p.standin.received() {
        first_push
            .entry(received.token.unwrap())
            .and_modify(|at: &mut chrono::DateTime<chrono::Utc>| {
                *at = (*at).min(received.received_at)
            })
            .or_insert(received.received_at);
    }
    let delays: Vec<Duration> = sent
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let pushed = first_push[&format!("tok-{i:06}")];
            (pushed - s.answered_at.max(settled))
                .to_std()
                .unwrap_or_default()
        })
        .collect();
    // The slowest in each tenth of the sends, to see where in the run a delay was.
    let tenths: Vec<_> = delays
        .chunks(delays.len().div_ceil(10))
        .map(|c| c.iter().max().copied().unwrap_or_default())
        .collect();
    println!(
        "slowest wait for a push, beyond its 202 and the elections, per tenth of the sends: {tenths:.2?}"
    );
    delays.into_iter().max().unwrap()
}

/// When the last election that node `victim`'s loss at `lost` caused ended, from the other
/// nodes' logs (`lost` itself when the node led nothing), and how many groups elected.
fn elections_after(
    cluster: &NatsCluster,
    victim: usize,
    lost: chrono::DateTime<chrono::Utc>,
    returned: chrono::DateTime<chrono::Utc>,
) -> (chrono::DateTime<chrono::Utc>, usize) {
    let elections: Vec<_> = cluster
        .elections()
        .into_iter()
        .filter(|e| e.node != victim && e.at >= lost && e.at < returned)
        .collect();
    for e in &elections {
        println!(
            "{:>6.2?} after the loss: {} leads {}",
            (e.at - lost).to_std().unwrap_or_default(),
            cluster.name(e.node),
            e.group
        );
    }
    let settled = elections.iter().map(|e| e.at).max().unwrap_or(lost);
    (settled, elections.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_command_streams_leader_delays_sends_but_every_one_is_accepted_and_pushed() {
    let cluster = NatsCluster::start().await.unwrap();
    let p = Pipeline::start_on(Nats::Cluster(cluster), xibaar::Roles::ALL).await;
    // Six hundred notifications, one per device, paced over 25 s: well within what a debug
    // build of every role in one process carries on two cores, with the cluster's stores on a
    // disk, so that a delay is the outage's. `XIBAAR_TEST_CLUSTER_SENDS=10000` with `--release` runs it with ten
    // thousand (docs/benchmarks.md).
    let devices: usize = std::env::var("XIBAAR_TEST_CLUSTER_SENDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(600);
    p.seed_devices(devices).await;
    p.wait_for_devices(devices as i64).await;

    // One node leads the normal command stream, the delivery stream and the event stream; it
    // is killed -9 a third of the way in, and started again `DOWN_FOR` later.
    let js = p.jetstream().await;
    let victim = 0;
    for stream in ["XIBAAR_CMD_NORMAL", "XIBAAR_DELIVERIES", "XIBAAR_EVENTS"] {
        p.nats
            .cluster()
            .move_leader(&js, Group::Stream(stream), victim)
            .await
            .unwrap();
    }
    let every = Duration::from_secs(25) / devices as u32;
    send_through_a_node_loss(&p, devices, 64, every, victim).await;
}

/// `devices` sends (customer `c<i>` each), `in_flight` at a time and one every `every`, while
/// node `victim` is killed -9 a third of the way in and started again [`DOWN_FOR`] later. Every send
/// must be accepted and nothing lost ([`assert_nothing_lost`]), and no push may wait much
/// longer after its 202 than the slowest send took: that is the election as the clients lived
/// it (an ack wait of 30 or 60 s, a fan-out left for redelivery, would be longer). The number
/// of repeated pushes.
pub(crate) async fn send_through_a_node_loss(
    p: &Pipeline,
    devices: usize,
    in_flight: usize,
    every: Duration,
    victim: usize,
) -> usize {
    let sends = send_paced(p, devices, in_flight, every);
    let crash = async {
        tokio::time::sleep(every * (devices as u32 / 3)).await;
        let lost = chrono::Utc::now();
        p.nats.cluster().kill(victim);
        tokio::time::sleep(DOWN_FOR).await;
        let returned = chrono::Utc::now();
        p.nats.cluster().start_node(victim).await.unwrap();
        (lost, returned)
    };
    let (sent, (lost, returned)) = tokio::join!(sends, crash);
    let refused: Vec<_> = sent.iter().filter(|s| s.status != 202).collect();
    assert!(
        refused.is_empty(),
        "{} sends not accepted, the first {:?}",
        refused.len(),
        refused[0]
    );
    let duplicates = assert_nothing_lost(p, devices).await;
    let slowest_send = sent.iter().map(|s| s.took).max().unwrap();
    let (settled, elected) = elections_after(p.nats.cluster(), victim, lost, returned);
    let elections_took = (settled - lost).to_std().unwrap_or_default();
    let slowest_push = slowest_delivery(p, &sent, settled);
    println!(
        "{} killed: {elected} elections over {elections_took:.2?}, slowest send {slowest_send:?}, slowest push {slowest_push:?} beyond its 202 and the elections, {duplicates} duplicate pushes",
        p.nats.cluster().name(victim)
    );
    assert!(elected > 0, "no election followed the node's loss");
    assert!(
        slowest_push <= ELECTION_MARGIN,
        "a push waited {slowest_push:?} beyond its 202 and the elections, which took {elections_took:?}"
    );
    duplicates
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
        let start = tokio::time::Instant::now();
        futures::stream::iter(0..DEVICES)
            .map(|i| async move {
                tokio::time::sleep_until(start + every * i as u32).await;
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
            });
            let log = std::fs::read_to_string(two.logs.path().join(format!("{i}.log")));
            let exit = exit.unwrap_or_else(|| {
                panic!(
                    "process {i} did not exit within 20 s of SIGTERM:\n{}",
                    log.as_deref().unwrap_or_default()
                )
            });
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

//! Live inbox streams (`GET /v1/me/stream`) held open by many customers at once, the api as its
//! own release process (the dispatcher and projector as two more):
//!
//! 1. the api's resident memory before and with N streams open: memory per open stream;
//! 2. a broadcast to every customer: how long after its fan-out completed each stream received
//!    its `inbox_item` (p50, p99, slowest), and how many did.
//!
//! `XIBAAR_BENCH_STREAMS` sets N (10,000 by default; the process needs a file descriptor per
//! stream on both sides).

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use xibaar_benches::{Servers, percentile, status_kib, xibaar_binary};
use xibaar_core::{
    Actor, CustomerId, DeviceId, Event, EventEnvelope, FcmToken, Platform, event::DeviceRegistered,
};
use xibaar_fcm_standin::{StandIn, StandInConfig};
use xibaar_testkit::{KillOnDrop, free_port};

const SECRET: &str = "benchmark-secret-0123456789abcdef0123";
const APP_ID: &str = "1:1234567890:android:xibaar";

fn mint(customer: &str, scopes: &[&str]) -> anyhow::Result<String> {
    Ok(xibaar_api::mint(
        SECRET.as_bytes(),
        "xibaar",
        "xibaar-api",
        customer,
        scopes,
        Duration::from_secs(3600),
    )?)
}

async fn register_devices(js: &async_nats::jetstream::Context, n: usize) -> anyhow::Result<()> {
    let mut pipeline = xibaar_streams::Pipeline::new(js.clone(), 1024);
    for i in 0..n {
        let envelope = EventEnvelope::new(
            Event::DeviceRegistered(DeviceRegistered {
                device_id: DeviceId::parse(format!("d{i}"))?,
                customer_id: CustomerId::parse(format!("c{i}"))?,
                token: FcmToken::parse(format!("tok-{i:06}"))?,
                platform: Platform::Android,
                app_id: APP_ID.into(),
                app_version: None,
                locale: None,
            }),
            format!("seed-{i}"),
            None,
            Actor::system("benchmark"),
        );
        pipeline
            .publish(
                envelope.subject(),
                xibaar_streams::event_headers(&envelope),
                envelope.to_json()?.into(),
            )
            .await?;
    }
    pipeline.flush().await?;
    Ok(())
}

/// When each stream received its item: on this process's clock and on the wall clock.
type Arrivals = Arc<Mutex<Vec<Option<(Instant, chrono::DateTime<chrono::Utc>)>>>>;

/// Opens customer `c<i>`'s stream; once open, waits for its first `inbox_item` and records when
/// it came.
async fn hold_stream(
    http: reqwest::Client,
    api: String,
    i: usize,
    opened: tokio::sync::mpsc::Sender<()>,
    received: Arrivals,
) -> anyhow::Result<()> {
    let token = mint(&format!("c{i}"), &[])?;
    let mut response = http
        .get(format!("{api}/v1/me/stream"))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "stream {i}: {}",
        response.status()
    );
    opened.send(()).await?;
    let mut seen = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        seen.extend_from_slice(&chunk);
        if seen.windows(17).any(|w| w == b"event: inbox_item") {
            received.lock().unwrap()[i] = Some((Instant::now(), chrono::Utc::now()));
            return Ok(());
        }
    }
    anyhow::bail!("stream {i} ended")
}

/// Raises this process's open-file limit (which the api it starts inherits) to hold `n`
/// connections and the servers' own files, up to the hard limit; fails saying so if that is
/// too low.
fn room_for_connections(n: usize) -> anyhow::Result<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let needed = n as u64 + 1_024;
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|c| c >= needed) {
        return Ok(());
    }
    anyhow::ensure!(
        limit.maximum.is_none_or(|m| m >= needed),
        "{n} streams need {needed} open files; the hard limit is {:?} (raise it, or set XIBAAR_BENCH_STREAMS lower)",
        limit.maximum
    );
    limit.current = Some(needed);
    setrlimit(Resource::Nofile, limit)?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As the `xibaar` binary runs: what runs in this process pays for memory what a role does.
    xibaar::without_huge_pages();
    let n: usize = std::env::var("XIBAAR_BENCH_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    room_for_connections(n)?;
    println!(
        "live streams benchmark ({} cores, {n} customers each holding GET /v1/me/stream open)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let Servers {
        nats,
        pg: _pg,
        database,
        pool,
    } = Servers::start(20).await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = xibaar::startup::jetstream(client.clone());
    xibaar_streams::apply(&js, &xibaar_streams::Definitions::builtin()).await?;
    let standin = StandIn::start(StandInConfig::default()).await?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("service-account.json");
    xibaar_fcm_standin::write_service_account(&key, &standin.token_uri())?;
    let port = free_port()?;
    let config = dir.path().join("xibaar.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[nats]
url = "{nats}"
[postgres]
url = "{database}"
max_connections = 20
[api]
listen = "127.0.0.1:{port}"
customer_requests_per_minute = 1000000000
client_requests_per_minute = 1000000000
[auth]
hs256_secret = "{SECRET}"
[fcm]
endpoint = "{fcm}"
[[fcm.apps]]
app_id = "{APP_ID}"
project_id = "xibaar-local"
service_account_file = "{key}"
[log]
format = "text"
filter = "warn"
"#,
            nats = nats.url(),
            fcm = standin.url(),
            key = key.display(),
        ),
    )?;
    let role = |name: &str| -> anyhow::Result<(KillOnDrop, u16)> {
        let ops = free_port()?;
        let child = Command::new(xibaar_binary())
            .arg("--config")
            .arg(&config)
            .arg(name)
            .env("XIBAAR_OPS__LISTEN", format!("127.0.0.1:{ops}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok((KillOnDrop(child), ops))
    };
    let (api, api_ops) = role("api")?;
    let (_dispatcher, _) = role("dispatcher")?;
    let (_projector, _) = role("projector")?;
    let api_pid = api.id();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while http
        .get(format!("http://127.0.0.1:{api_ops}/health/ready"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        anyhow::ensure!(Instant::now() < deadline, "the api did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    register_devices(&js, n).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (devices,): (i64,) = sqlx::query_as("SELECT count(*) FROM devices")
            .fetch_one(&pool)
            .await?;
        if devices as usize >= n {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{devices} of {n} devices projected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let api_url = format!("http://127.0.0.1:{port}");
    // Warm-up: one stream opened and closed, so what follows is the streams' own cost.
    let warm = http
        .get(format!("{api_url}/v1/me/stream"))
        .bearer_auth(mint("warm-up", &[])?)
        .send()
        .await?;
    drop(warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kib = status_kib(api_pid, "VmRSS:")?;

    let received = Arc::new(Mutex::new(vec![None; n]));
    let (opened_tx, mut opened) = tokio::sync::mpsc::channel(n);
    let mut holders = tokio::task::JoinSet::new();
    let opening = Instant::now();
    for i in 0..n {
        holders.spawn(hold_stream(
            http.clone(),
            api_url.clone(),
            i,
            opened_tx.clone(),
            received.clone(),
        ));
        // Opened in waves, as a million app users' phones would not all connect in one
        // instant; the listening backlog is not what is measured.
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(opened_tx);
    for _ in 0..n {
        anyhow::ensure!(opened.recv().await.is_some(), "a stream failed to open");
    }
    let open_took = opening.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open_kib = status_kib(api_pid, "VmRSS:")?;
    let per_stream = (open_kib.saturating_sub(idle_kib)) as f64 * 1024.0 / n as f64;
    println!(
        "  {n} streams open in {open_took:.1?}: api RSS {:.1} MiB idle, {:.1} MiB with them open: {:.1} KB per open stream",
        idle_kib as f64 / 1024.0,
        open_kib as f64 / 1024.0,
        per_stream / 1000.0
    );

    // The broadcast; the fan-out's completion is heard as its event is stored.
    let broadcast = serde_json::json!({
        "priority": "normal",
        "audience": { "kind": "everyone" },
        "content": { "title": "Coupure programmée", "body": "Maintenance cette nuit" },
    });
    let accepted: serde_json::Value = http
        .post(format!("{api_url}/v1/notifications"))
        .bearer_auth(mint("benchmark", &["notifications:send"])?)
        .json(&broadcast)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = accepted["notification_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no notification id in {accepted}"))?
        .to_owned();
    let sent_at = Instant::now();
    let mut fanned_out = client
        .subscribe(xibaar_core::subject::event("notification.fanned_out", &id))
        .await?;
    // The event may have been stored before the subscription: then the stream has it.
    let fanned_out_at = tokio::select! {
        _ = fanned_out.next() => Instant::now(),
        _ = async {
            let events = js.get_stream_no_info(xibaar_streams::names::EVENTS).await.ok();
            loop {
                if let Some(events) = &events
                    && events.direct_get_last_for_subject(xibaar_core::subject::event("notification.fanned_out", &id)).await.is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } => Instant::now(),
    };
    // When the last item was committed: the projector's part, apart from the api's.
    let committed = {
        let pool = pool.clone();
        tokio::spawn(async move {
            loop {
                let (items,): (i64,) = sqlx::query_as("SELECT count(*) FROM inbox")
                    .fetch_one(&pool)
                    .await?;
                if items as usize >= n {
                    return anyhow::Ok(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !holders.is_empty() && Instant::now() < deadline {
        tokio::select! {
            done = holders.join_next() => {
                if let Some(Err(e)) = done {
                    anyhow::bail!("a stream holder failed: {e}");
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let peak_kib = status_kib(api_pid, "VmHWM:")?;
    let committed_at = committed.await??;
    println!(
        "  every item committed {:.0} ms after the fan-out",
        committed_at
            .saturating_duration_since(fanned_out_at)
            .as_secs_f64()
            * 1000.0
    );
    let received = received.lock().unwrap().clone();
    let mut delays: Vec<f64> = received
        .iter()
        .flatten()
        .map(|(at, _)| at.saturating_duration_since(fanned_out_at).as_secs_f64() * 1000.0)
        .collect();
    delays.sort_by(f64::total_cmp);
    // Where the time went: the item's `received_at` is its push's outcome; from then to the
    // stream is the projector's and the api's part.
    let pushed: std::collections::HashMap<String, chrono::DateTime<chrono::Utc>> =
        sqlx::query_as("SELECT customer_id, received_at FROM inbox")
            .fetch_all(&pool)
            .await?
            .into_iter()
            .collect();
    let mut after_push: Vec<f64> = received
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let (_, wall) = r.as_ref()?;
            let at = pushed.get(&format!("c{i}"))?;
            Some((*wall - *at).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    after_push.sort_by(f64::total_cmp);
    let last_push = pushed.values().max().copied();
    let first_push = pushed.values().min().copied();
    if let (Some(first), Some(last)) = (first_push, last_push) {
        println!(
            "  pushes spread over {} ms; from its push to its stream an item took p50 {:.0} ms, p99 {:.0} ms",
            (last - first).num_milliseconds(),
            percentile(&after_push, 50.0),
            percentile(&after_push, 99.0),
        );
    }
    println!(
        "  broadcast: fan-out completed {:.0} ms after the 202; {} of {n} streams received the item, \
         after the fan-out p50 {:.0} ms, p99 {:.0} ms, slowest {:.0} ms; api peak RSS {:.1} MiB",
        (fanned_out_at - sent_at).as_secs_f64() * 1000.0,
        delays.len(),
        percentile(&delays, 50.0),
        percentile(&delays, 99.0),
        delays.last().copied().unwrap_or(f64::NAN),
        peak_kib as f64 / 1024.0,
    );
    holders.shutdown().await;
    Ok(())
}

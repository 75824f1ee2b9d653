//! The api under load, run as its own release process like in production: accepted sends per
//! second with their latency, against a bare async-nats publisher storing the same payloads in
//! the same command stream, and against a bare axum handler (`bare-api`, its own process) that
//! parses the same bodies and publishes them waiting for the ack, alternating, in the same run; and inbox reads per second, against the same query
//! run straight on a connection pool. Both sides keep the same number of requests in flight.

use std::{
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;
use hyper_util::rt::TokioIo;
use xibaar_benches::{
    Servers, cpu_per_operation, cpu_shares, cpu_times, percentile, scale, xibaar_binary,
};
use xibaar_core::CustomerId;
use xibaar_testkit::{KillOnDrop, free_port};

const IN_FLIGHT: usize = 64;
const SECRET: &str = "benchmark-secret-0123456789abcdef0123";
const INBOX_CUSTOMERS: usize = 1_000;
const INBOX_ITEMS: usize = 40;

/// An inbox page as far as the load generator checks it: the items, not parsed further.
#[derive(serde::Deserialize)]
struct Page {
    items: Vec<serde::de::IgnoredAny>,
}

struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs `n` operations, `IN_FLIGHT` at a time; each is given its worker's number (0 to
/// `IN_FLIGHT - 1`) and its own, and returns whether it succeeded.
async fn drive<F, Fut>(n: usize, op: F) -> anyhow::Result<Figures>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..IN_FLIGHT {
        let (op, next) = (op.clone(), next.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(latencies);
                }
                let t = Instant::now();
                op(worker, i).await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        });
    }
    let mut latencies = Vec::with_capacity(n);
    while let Some(done) = workers.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = started.elapsed();
    latencies.sort_by(f64::total_cmp);
    Ok(Figures {
        per_second: n as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
    })
}

fn body(i: usize) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "priority": "normal",
            "audience": { "kind": "customers", "customer_ids": [format!("customer-{i:07}")] },
            "content": {
                "title": "Your bill is ready",
                "body": format!("Your November bill of {} XOF is due on 5 December.", 10_000 + i),
                "data": { "kind": "bill" },
            },
        }))
        .expect("a body serialises"),
    )
}

/// The load generator's clients: one kept-alive HTTP/1.1 connection per worker, on hyper's
/// connection API (no pool, no URL parsing, requests built from ready header values), so the
/// generator takes as little as possible of the two cores the api runs on.
struct Connections {
    senders: Vec<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Full<Bytes>>>>,
    host: HeaderValue,
}

impl Connections {
    async fn open(port: u16) -> anyhow::Result<Arc<Self>> {
        let mut senders = Vec::with_capacity(IN_FLIGHT);
        for _ in 0..IN_FLIGHT {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            senders.push(tokio::sync::Mutex::new(sender));
        }
        Ok(Arc::new(Self {
            senders,
            host: HeaderValue::from_str(&format!("127.0.0.1:{port}"))?,
        }))
    }

    /// Sends `request` on `worker`'s connection; returns the status and the whole body.
    async fn send(
        &self,
        worker: usize,
        request: hyper::http::request::Builder,
        body: Bytes,
    ) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
        let request = request
            .header(hyper::header::HOST, self.host.clone())
            .body(Full::new(body))?;
        let mut sender = self.senders[worker].lock().await;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// The api against `bare-api` (a minimal axum handler publishing the same bodies), alternating:
/// the same load generator, the same requests, the api's answer checked as 202 both ways.
async fn bare_http_rounds(
    nats: &xibaar_testkit::NatsServer,
    sends: usize,
    api_port: u16,
) -> anyhow::Result<()> {
    let port = free_port()?;
    let _bare = KillOnDrop(
        Command::new(std::env::current_exe()?.with_file_name("bare-api"))
            .arg(format!("127.0.0.1:{port}"))
            .arg(nats.url())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "bare-api did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bare_connections = Connections::open(port).await?;
    let api_connections = Connections::open(api_port).await?;
    // The same operation, pointed at either server's connections.
    let aimed = |connections: Arc<Connections>| {
        move |worker: usize, i: usize| {
            let connections = connections.clone();
            let body = body(i);
            async move {
                let request = hyper::Request::post("/v1/notifications")
                    .header(
                        hyper::header::AUTHORIZATION,
                        BACK_OFFICE.get().expect("minted").clone(),
                    )
                    .header(
                        hyper::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                let (status, _) = connections.send(worker, request, body).await?;
                anyhow::ensure!(status == 202, "answered {status}");
                Ok(())
            }
        }
    };
    drive(2_000, aimed(bare_connections.clone())).await?;
    // A round lasts a second or two, and the machine's speed drifts within a minute: the two
    // take turns going first, and the median of the rounds is the run's ratio.
    let mut ratios = Vec::new();
    for round in 1..=BARE_ROUNDS {
        let (bare, api) = if round % 2 == 1 {
            let bare = drive(sends, aimed(bare_connections.clone())).await?;
            (bare, drive(sends, aimed(api_connections.clone())).await?)
        } else {
            let api = drive(sends, aimed(api_connections.clone())).await?;
            (drive(sends, aimed(bare_connections.clone())).await?, api)
        };
        show(
            &format!("round {round}: bare axum + async-nats"),
            &bare,
            "sends",
        );
        show(
            &format!("round {round}: POST /v1/notifications"),
            &api,
            "sends",
        );
        let ratio = api.per_second / bare.per_second;
        ratios.push(ratio);
        println!(
            "    ratio {ratio:.2} of the bare axum handler; api p99 {:.2} ms (target <= 20 ms)",
            api.p99_ms
        );
    }
    let median = xibaar_benches::median(&mut ratios);
    println!(
        "  ratio to the bare axum handler over {BARE_ROUNDS} rounds: min {:.2}, median {median:.2} (target >= 0.8), max {:.2}",
        ratios[0],
        ratios[BARE_ROUNDS - 1]
    );
    Ok(())
}

/// Rounds of the api against the bare handler, each going first in turn.
const BARE_ROUNDS: usize = 6;

/// The back office's bearer header, minted once.
static BACK_OFFICE: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();

fn show(name: &str, f: &Figures, unit: &str) {
    println!(
        "  {name:<34} {:>9.0} {unit}/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
        f.per_second, f.p50_ms, f.p99_ms
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // As the `xibaar` binary runs: what runs in this process pays for memory what a role does.
    xibaar::without_huge_pages();
    let sends = scale(60_000);
    let reads = scale(40_000);
    println!(
        "api benchmark ({} cores, {IN_FLIGHT} requests in flight, the api as its own release process)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let Servers {
        nats,
        pg: _pg,
        database,
        pool,
    } = Servers::start(10).await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = xibaar::startup::jetstream(client);
    xibaar_streams::apply(&js, &xibaar_streams::Definitions::builtin()).await?;

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("xibaar.toml");
    let port = free_port()?;
    let ops = free_port()?;
    std::fs::write(
        &config,
        format!(
            r#"
[nats]
url = "{nats}"
[postgres]
url = "{database}"
max_connections = 10
[api]
listen = "127.0.0.1:{port}"
customer_requests_per_minute = 1000000000
client_requests_per_minute = 1000000000
[ops]
listen = "127.0.0.1:{ops}"
[auth]
hs256_secret = "{SECRET}"
[log]
format = "text"
filter = "warn"
"#,
            nats = nats.url(),
        ),
    )?;
    let api = KillOnDrop(
        Command::new(xibaar_binary())
            .arg("--config")
            .arg(&config)
            .arg("api")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("http://127.0.0.1:{ops}/health/startup"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        anyhow::ensure!(Instant::now() < deadline, "the api did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mint = |sub: &str, scopes: &[&str]| {
        xibaar_api::mint(
            SECRET.as_bytes(),
            "xibaar",
            "xibaar-api",
            sub,
            scopes,
            Duration::from_secs(3600),
        )
    };
    let back_office = mint("benchmark", &["notifications:send"])?;
    BACK_OFFICE
        .set(HeaderValue::from_str(&format!("Bearer {back_office}"))?)
        .expect("set once");

    let bodies: Arc<Vec<Bytes>> = Arc::new((0..sends).map(body).collect());
    println!(
        "  {sends} sends of {} bytes each; {reads} inbox reads of 20 items",
        bodies[0].len()
    );

    // Warm-up: connections, caches and pools.
    let connections = Connections::open(port).await?;
    let post = {
        let (connections, bodies) = (connections.clone(), bodies.clone());
        let auth = HeaderValue::from_str(&format!("Bearer {back_office}"))?;
        move |worker: usize, i: usize| {
            let request = hyper::Request::post("/v1/notifications")
                .header(hyper::header::AUTHORIZATION, auth.clone())
                .header(
                    hyper::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            let (connections, body) = (connections.clone(), bodies[i % bodies.len()].clone());
            async move {
                let (status, _) = connections.send(worker, request, body).await?;
                anyhow::ensure!(status == 202, "answered {status}");
                Ok(())
            }
        }
    };
    drive(2_000, post.clone()).await?;

    let bare = {
        let (js, bodies) = (js.clone(), bodies.clone());
        move |_worker: usize, i: usize| {
            let (js, payload) = (js.clone(), bodies[i].clone());
            async move {
                let id = uuid::Uuid::new_v4().to_string();
                js.publish_with_headers(
                    format!("xibaar.cmd.normal.{id}"),
                    xibaar_streams::headers(&id, "send_notification"),
                    payload,
                )
                .await?
                .await?;
                Ok(())
            }
        }
    };
    let names = ["load generator", "nats-server", "api"];
    let pids = [
        std::process::id(),
        nats.pid().context("nats-server is not running")?,
        api.0.id(),
    ];
    let before = cpu_times(&pids)?;
    let baseline = drive(sends, bare).await?;
    let between = cpu_times(&pids)?;
    let accepted = drive(sends, post).await?;
    let after = cpu_times(&pids)?;
    // Where the two cores went: each process' CPU time per operation in either run.
    let per_operation = |from: &[Duration], to: &[Duration]| {
        cpu_shares(&names, &cpu_per_operation(from, to, sends))
    };
    show("bare async-nats publish + ack", &baseline, "msgs");
    println!(
        "    CPU µs per message: {}",
        per_operation(&before, &between)
    );
    show("POST /v1/notifications (202)", &accepted, "sends");
    println!("    CPU µs per send: {}", per_operation(&between, &after));
    bare_http_rounds(&nats, sends, port).await?;
    println!(
        "  ratio {:.2} of the bare publisher; target >= 20,000 sends/s with p99 <= 20 ms: {}",
        accepted.per_second / baseline.per_second,
        xibaar_benches::met(accepted.per_second >= 20_000.0 && accepted.p99_ms <= 20.0)
    );

    // Inbox: 1,000 customers with 40 items each, as the projector leaves them.
    sqlx::query(
        "INSERT INTO notifications (notification_id, priority, title, body, data, audience, requested_by, status, accepted_at)
         SELECT md5(n::text)::uuid, 'normal', 'Your bill is ready', 'Bill ' || n, '{\"kind\":\"bill\"}',
                '{\"kind\":\"everyone\"}', 'client:benchmark', 'completed', now()
         FROM generate_series(1, $1) AS n",
    )
    .bind(INBOX_ITEMS as i64)
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO inbox (customer_id, notification_id, position, received_at, read_at)
         SELECT 'customer-' || c, md5(n::text)::uuid, n * 10000 + c, now(),
                CASE WHEN n % 3 = 0 THEN now() END
         FROM generate_series(1, $1) AS c, generate_series(1, $2) AS n",
    )
    .bind(INBOX_CUSTOMERS as i64)
    .bind(INBOX_ITEMS as i64)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE inbox").execute(&pool).await?;
    sqlx::query("ANALYZE notifications").execute(&pool).await?;
    let tokens: Arc<Vec<HeaderValue>> = Arc::new(
        (1..=INBOX_CUSTOMERS)
            .map(|c| {
                let token = mint(&format!("customer-{c}"), &[])?;
                anyhow::Ok(HeaderValue::from_str(&format!("Bearer {token}"))?)
            })
            .collect::<Result<_, _>>()?,
    );
    let direct = {
        let pool = pool.clone();
        move |_worker: usize, i: usize| {
            let pool = pool.clone();
            async move {
                let customer = CustomerId::parse(format!("customer-{}", i % INBOX_CUSTOMERS + 1))?;
                let (items, _) = tokio::try_join!(
                    xibaar_store::inbox_page(&pool, &customer, None, false, 21),
                    xibaar_store::inbox_summary(&pool, &customer),
                )?;
                anyhow::ensure!(items.len() == 21, "{} items", items.len());
                Ok(())
            }
        }
    };
    let get = {
        let (connections, tokens) = (connections.clone(), tokens.clone());
        move |worker: usize, i: usize| {
            let request = hyper::Request::get("/v1/me/inbox?limit=20").header(
                hyper::header::AUTHORIZATION,
                tokens[i % tokens.len()].clone(),
            );
            let connections = connections.clone();
            async move {
                let (status, body) = connections.send(worker, request, Bytes::new()).await?;
                anyhow::ensure!(status == 200, "answered {status}");
                let page: Page = serde_json::from_slice(&body)?;
                anyhow::ensure!(page.items.len() == 20, "{} items", page.items.len());
                Ok(())
            }
        }
    };
    drive(1_000, get.clone()).await?;
    let query = drive(reads, direct).await?;
    let inbox = drive(reads, get).await?;
    show("the same queries on a pool of 10", &query, "pages");
    show("GET /v1/me/inbox?limit=20", &inbox, "reads");
    println!(
        "  ratio {:.2} of the direct queries",
        inbox.per_second / query.per_second
    );
    let peak = xibaar_benches::status_kib(api.0.id(), "VmHWM")?;
    println!(
        "  api peak RSS (VmHWM) over the whole benchmark: {:.1} MiB (target <= 64 MiB: {})",
        peak as f64 / 1024.0,
        xibaar_benches::met(peak <= 64 * 1024)
    );
    Ok(())
}

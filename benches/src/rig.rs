//! The dispatcher's rig: nats-server, PostgreSQL and the FCM stand-in, a device registry filled
//! with one SQL statement, and broadcasts through the release `xibaar dispatcher` binary
//! measured from the stand-in's count. The dispatcher benchmark and the old stack's side by
//! side both use it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use chrono::Utc;
use xibaar_core::{
    Actor, Audience, Command as XCommand, Content, DeliveryOptions, NotificationId, Priority,
    SendNotification,
};
use xibaar_fcm_standin::{StandIn, StandInConfig};
use xibaar_testkit::{NatsServer, Postgres};

use crate::{cpu_per_operation, cpu_shares, cpu_times, xibaar_binary};

pub const APP_ID: &str = "1:1234567890:android:xibaar";
pub const CONCURRENCY: usize = 256;
/// Titles the stand-in records (with their tokens) even in a benchmark.
pub const COUNTED: &str = "Counted";

pub struct Rig {
    pub nats: NatsServer,
    pub _pg: Postgres,
    pub standin: StandIn,
    pub js: async_nats::jetstream::Context,
    pub pool: sqlx::PgPool,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// The service-account key naming the stand-in's token endpoint.
    pub key: PathBuf,
}

/// FCM's latency and the requests the dispatcher keeps in flight for it.
#[derive(Clone, Copy)]
pub struct Shape {
    pub concurrency: usize,
    pub latency: Duration,
    pub jitter: Duration,
}

pub const AT_ZERO_MS: Shape = Shape {
    concurrency: CONCURRENCY,
    latency: Duration::ZERO,
    jitter: Duration::ZERO,
};

impl Rig {
    pub async fn start(quota_per_minute: u64, rate_limit_per_minute: u64) -> anyhow::Result<Self> {
        Self::start_shaped(quota_per_minute, rate_limit_per_minute, AT_ZERO_MS).await
    }

    pub async fn start_shaped(
        quota_per_minute: u64,
        rate_limit_per_minute: u64,
        shape: Shape,
    ) -> anyhow::Result<Self> {
        let (nats, pg) = tokio::join!(NatsServer::start(), Postgres::start());
        let (nats, pg) = (nats?, pg?);
        let standin = StandIn::start(StandInConfig {
            latency: shape.latency,
            latency_jitter: shape.jitter,
            quota_per_minute,
            record_messages: false,
            // Keep only the probes: urgent ones, to time them, and those of a kill test, to
            // count each device's pushes.
            record_only: Some(Arc::new(|m: &serde_json::Value| {
                m["notification"]["title"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("Urgent") || t.starts_with(COUNTED))
            })),
            ..StandInConfig::default()
        })
        .await?;
        let database = pg.create_database("xibaar").await?;
        let pool = sqlx::PgPool::connect(&database).await?;
        xibaar_store::migrate(&pool).await?;
        let client = async_nats::connect(nats.url()).await?;
        let js = xibaar::startup::jetstream(client);
        xibaar_streams::apply(&js, &xibaar_streams::Definitions::builtin()).await?;
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("service-account.json");
        xibaar_fcm_standin::write_service_account(&key, &standin.token_uri())?;
        let config = dir.path().join("xibaar.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[nats]
url = "{nats}"
[postgres]
url = "{database}"
[auth]
hs256_secret = "benchmark-secret-0123456789abcdef0123"
[fcm]
endpoint = "{fcm}"
concurrency = {concurrency}
rate_limit_per_minute = {rate_limit_per_minute}
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
                concurrency = shape.concurrency,
            ),
        )?;
        Ok(Self {
            nats,
            _pg: pg,
            standin,
            js,
            pool,
            dir,
            config,
            key,
        })
    }

    pub async fn seed(&self, devices: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        sqlx::query(
            "INSERT INTO devices (device_id, customer_id, token, platform, app_id, status, registered_at, updated_at)
             SELECT 'd' || lpad(i::text, 7, '0'), 'c' || i, 'fcm-token-' || lpad(i::text, 7, '0') || repeat('x', 140),
                    'android', $1, 'active', now(), now()
             FROM generate_series(0, $2 - 1) AS i",
        )
        .bind(APP_ID)
        .bind(devices as i64)
        .execute(&self.pool)
        .await?;
        // As autovacuum would soon after a large import.
        sqlx::query("ANALYZE devices").execute(&self.pool).await?;
        Ok(started.elapsed())
    }

    pub fn spawn_dispatcher(&self, binary: &Path) -> anyhow::Result<Child> {
        let ops = xibaar_testkit::free_port()?;
        Ok(Command::new(binary)
            .arg("--config")
            .arg(&self.config)
            .arg("dispatcher")
            .env("XIBAAR_OPS__LISTEN", format!("127.0.0.1:{ops}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?)
    }

    /// Stores a command the way the api does; returns when JetStream has it.
    pub async fn send(
        &self,
        priority: Priority,
        audience: Audience,
        title: &str,
    ) -> anyhow::Result<()> {
        let command = XCommand::SendNotification(SendNotification {
            category: None,
            notification_id: NotificationId::generate(),
            priority,
            audience,
            content: Content {
                title: title.into(),
                body: "Your November bill of 12,500 XOF is due on 5 December.".into(),
                data: [("kind".to_owned(), "bill".to_owned())].into(),
                image_url: None,
                ..Default::default()
            },
            idempotency_key: None,
            delivery: DeliveryOptions::default(),
            requested_by: Actor::system("benchmark"),
            accepted_at: Utc::now(),
        });
        self.js
            .publish_with_headers(
                command.subject(),
                xibaar_streams::headers(&command.msg_id(), "send_notification"),
                Bytes::from(serde_json::to_vec(&command)?),
            )
            .await?
            .await?;
        Ok(())
    }
}

/// Peak resident set of a process, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    crate::status_kib(pid, "VmHWM:").map_or(f64::NAN, |kib| kib as f64 / 1024.0)
}

pub struct Run {
    pub total: Duration,
    /// Pushes per second between 10 % and 90 % of the broadcast (fan-out ramp excluded).
    pub steady_rate: f64,
    pub peak_rss_mib: f64,
    /// CPU µs per push of the dispatcher, nats-server and this process (stand-in, probes).
    pub cpu_per_push: Vec<f64>,
}

impl Run {
    /// Where the two cores went, per push; unlike pushes per second, these shares barely depend
    /// on how fast the machine runs at the moment.
    pub fn cpu_line(&self) -> String {
        format!(
            "    CPU µs per push: {}",
            cpu_shares(
                &["dispatcher", "nats-server", "stand-in and benchmark"],
                &self.cpu_per_push
            )
        )
    }
}

/// Broadcasts to every device and waits until the stand-in has `devices` pushes.
pub async fn broadcast(
    rig: &Rig,
    devices: usize,
    priority: Priority,
) -> anyhow::Result<(Run, Child)> {
    broadcast_with(rig, &xibaar_binary(), devices, priority).await
}

/// [`broadcast`] through the dispatcher of `binary`.
pub async fn broadcast_with(
    rig: &Rig,
    binary: &Path,
    devices: usize,
    priority: Priority,
) -> anyhow::Result<(Run, Child)> {
    let mut dispatcher = rig.spawn_dispatcher(binary)?;
    let pids = [
        dispatcher.id(),
        rig.nats.pid().context("nats-server is not running")?,
        std::process::id(),
    ];
    let before = cpu_times(&pids)?;
    let base = rig.standin.accepted_count();
    let started = Instant::now();
    rig.send(priority, Audience::Everyone, "Tariff change")
        .await?;
    let target = base + devices as u64;
    let (mut t10, mut t90) = (None, None);
    loop {
        let done = rig.standin.accepted_count();
        let now = Instant::now();
        if t10.is_none() && done >= base + devices as u64 / 10 {
            t10 = Some((now, done));
        }
        if t90.is_none() && done >= base + devices as u64 * 9 / 10 {
            t90 = Some((now, done));
        }
        if done >= target {
            break;
        }
        if let Some(status) = dispatcher.try_wait()? {
            anyhow::bail!("the dispatcher exited: {status}");
        }
        if started.elapsed() > Duration::from_secs(900) {
            anyhow::bail!("broadcast not finished after 15 minutes ({done}/{target})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed();
    let cpu_per_push = cpu_per_operation(&before, &cpu_times(&pids)?, devices);
    let ((a, na), (b, nb)) = (t10.expect("10 %"), t90.expect("90 %"));
    let steady_rate = (nb - na) as f64 / (b - a).as_secs_f64().max(1e-9);
    let peak = peak_rss_mib(dispatcher.id());
    Ok((
        Run {
            total,
            steady_rate,
            peak_rss_mib: peak,
            cpu_per_push,
        },
        dispatcher,
    ))
}

pub fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

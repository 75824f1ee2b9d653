//! Helpers the benchmarks share.

pub mod oldstack;
pub mod rig;
pub mod steady;

use std::path::PathBuf;

use xibaar_core::{
    Actor, Audience, Content, CustomerId, DeliveryOptions, DeviceId, Event, EventEnvelope,
    FcmToken, NotificationId, Platform, Priority,
    event::{
        DeliveriesSucceeded, DeliveryExpired, DeliveryFailed, DeliveryFailure, DeviceRegistered,
        NotificationAccepted, NotificationFannedOut, SucceededDevice,
    },
};

/// `n` scaled by `XIBAAR_BENCH_SCALE` (default 1), at least 1,000: a quick run with 0.1.
pub fn scale(n: usize) -> usize {
    let factor: f64 = std::env::var("XIBAAR_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64) * factor).max(1000.0) as usize
}

/// The `p`th percentile of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// CPU time (user and system, all threads) process `pid` has used so far, from
/// `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces: utime and
    // stime are the 14th and 15th of the line, the 12th and 13th after it.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat: {stat}"))?;
    let mut fields = after.split_whitespace().skip(11);
    let mut ticks = || -> anyhow::Result<u64> {
        Ok(fields
            .next()
            .ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?
            .parse()?)
    };
    let ticks = ticks()? + ticks()?;
    Ok(std::time::Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second()?,
    ))
}

/// The unit of `/proc`'s CPU times.
fn clock_ticks_per_second() -> anyhow::Result<f64> {
    // SAFETY: sysconf only reads a configuration value.
    #[allow(unsafe_code)]
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(per_second as f64)
}

/// [`cpu_time`] of each of `pids`, in order.
pub fn cpu_times(pids: &[u32]) -> anyhow::Result<Vec<std::time::Duration>> {
    pids.iter().map(|pid| cpu_time(*pid)).collect()
}

/// CPU µs per operation of each process between two [`cpu_times`] samples.
pub fn cpu_per_operation(
    before: &[std::time::Duration],
    after: &[std::time::Duration],
    operations: usize,
) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(a, b)| (*b - *a).as_secs_f64() * 1e6 / operations as f64)
        .collect()
}

/// `name 12.3, name 4.5, …`: each process' figure from [`cpu_per_operation`].
pub fn cpu_shares(names: &[&str], per_operation: &[f64]) -> String {
    names
        .iter()
        .zip(per_operation)
        .map(|(name, us)| format!("{name} {us:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Busy CPU time of the whole machine so far, all cores together (user, nice, system, irq and
/// softirq time of `/proc/stat`): whatever runs the work being measured (this process,
/// nats-server, every Postgres backend and helper) is in it. Time the hypervisor gave to
/// others (steal) is not.
pub fn machine_busy() -> anyhow::Result<std::time::Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow::anyhow!("no cpu line in /proc/stat"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(fields.len() >= 8, "short cpu line in /proc/stat: {line}");
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let ticks: u64 = [0, 1, 2, 5, 6].iter().map(|i| fields[*i]).sum();
    Ok(std::time::Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second()?,
    ))
}

/// What the machine spent on one phase of a benchmark: wall-clock time, busy CPU time, and the
/// CPU time of the processes named at the start (the rest is everything else the machine ran).
pub struct Phase {
    started: std::time::Instant,
    busy: std::time::Duration,
    pids: Vec<u32>,
    processes: Vec<std::time::Duration>,
}

/// A finished [`Phase`].
#[derive(Debug, Clone)]
pub struct PhaseCost {
    pub wall: std::time::Duration,
    pub busy: std::time::Duration,
    /// CPU time of each process named at the start, in order.
    pub processes: Vec<std::time::Duration>,
}

impl Phase {
    pub fn start(pids: &[u32]) -> anyhow::Result<Self> {
        Ok(Self {
            busy: machine_busy()?,
            processes: cpu_times(pids)?,
            pids: pids.to_vec(),
            started: std::time::Instant::now(),
        })
    }

    pub fn finish(self) -> anyhow::Result<PhaseCost> {
        let wall = self.started.elapsed();
        let busy = machine_busy()?.saturating_sub(self.busy);
        let processes = cpu_times(&self.pids)?
            .iter()
            .zip(&self.processes)
            .map(|(after, before)| after.saturating_sub(*before))
            .collect();
        Ok(PhaseCost {
            wall,
            busy,
            processes,
        })
    }
}

impl PhaseCost {
    /// Busy CPU µs of the machine per item.
    pub fn cpu_per(&self, items: u64) -> f64 {
        self.busy.as_secs_f64() * 1e6 / items as f64
    }

    /// How many cores were busy on average.
    pub fn cores(&self) -> f64 {
        self.busy.as_secs_f64() / self.wall.as_secs_f64()
    }

    /// `41.2 µs of CPU per event (nats-server 9.1, this process 12.0, the rest 20.1), 1.52
    /// cores busy`, the processes named by `names`.
    pub fn describe(&self, items: u64, names: &[&str]) -> String {
        let per = |d: &std::time::Duration| d.as_secs_f64() * 1e6 / items as f64;
        // The processes' times and the machine's are read at slightly different moments, in
        // ticks of 10 ms: when the named processes did nearly everything, the difference can
        // come out a little below zero.
        let per_process: Vec<f64> = self.processes.iter().map(per).collect();
        let rest = (self.cpu_per(items) - per_process.iter().sum::<f64>()).max(0.0);
        format!(
            "{:.1} µs of CPU per event ({}, the rest {rest:.1}), {:.2} cores busy",
            self.cpu_per(items),
            cpu_shares(names, &per_process),
            self.cores()
        )
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {field} for {pid}"))
}

/// The release `xibaar` binary beside this benchmark.
pub fn xibaar_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("xibaar")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("target/release/xibaar"))
}

/// A benchmark's own nats-server and PostgreSQL, with the read models migrated in a database
/// `xibaar` reached through a pool of `max_connections`.
pub struct Servers {
    pub nats: xibaar_testkit::NatsServer,
    pub pg: xibaar_testkit::Postgres,
    /// The database's URL.
    pub database: String,
    pub pool: sqlx::PgPool,
}

impl Servers {
    /// `XIBAAR_BENCH_PG` sets Postgres settings on top of the test server's, as
    /// `name=value,name=value` (for example `shared_buffers=2GB`).
    pub async fn start(max_connections: u32) -> anyhow::Result<Self> {
        let settings = std::env::var("XIBAAR_BENCH_PG").unwrap_or_default();
        let settings: Vec<(&str, &str)> = settings
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.split_once('=')
                    .map(|(k, v)| (k.trim(), v.trim()))
                    .ok_or_else(|| anyhow::anyhow!("XIBAAR_BENCH_PG: {s:?} is not name=value"))
            })
            .collect::<anyhow::Result<_>>()?;
        if !settings.is_empty() {
            println!("  Postgres settings: {settings:?}");
        }
        let (nats, pg) = tokio::join!(
            xibaar_testkit::NatsServer::start(),
            xibaar_testkit::Postgres::start_with(&settings)
        );
        let (nats, pg) = (nats?, pg?);
        let database = pg.create_database("xibaar").await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(max_connections)
            .connect(&database)
            .await?;
        xibaar_store::migrate(&pool).await?;
        Ok(Self {
            nats,
            pg,
            database,
            pool,
        })
    }
}

pub const DEVICES: usize = 10_000;

fn envelope(event: Event) -> EventEnvelope {
    let correlation = event.aggregate_id();
    EventEnvelope::new(event, correlation, None, Actor::system("benchmark"))
}

/// A log stored by [`store_log`].
#[derive(Debug, Clone, Copy)]
pub struct Log {
    /// Its last sequence: the events stored.
    pub head: u64,
    /// The facts they record, each device's outcome counted once: a page of successes
    /// (`delivery.page_succeeded`) records up to a hundred.
    pub facts: u64,
}

/// Stores about `n` facts: `DEVICES` registrations, then broadcasts to every device (accepted,
/// fanned out, one outcome per device: 95 % sent, 3 % invalid tokens, 2 % expired). As the
/// dispatcher stores them: the successes of each page of a hundred devices in one event, the
/// failures and expiries on their own.
pub async fn store_log(js: &async_nats::jetstream::Context, n: usize) -> anyhow::Result<Log> {
    let mut pipeline = xibaar_streams::Pipeline::new(js.clone(), 4_096);
    let mut publish = async |event: Event| -> anyhow::Result<()> {
        let envelope = envelope(event);
        pipeline
            .publish(
                envelope.subject(),
                xibaar_streams::event_headers(&envelope),
                envelope.to_json()?.into(),
            )
            .await?;
        Ok(())
    };
    let device = |d: usize| DeviceId::parse(format!("device-{d:07}")).expect("valid id");
    let customer = |d: usize| CustomerId::parse(format!("customer-{d:07}")).expect("valid id");
    for d in 0..DEVICES {
        publish(Event::DeviceRegistered(DeviceRegistered {
            device_id: device(d),
            customer_id: customer(d),
            token: FcmToken::parse(format!("token-{d:07}"))?,
            platform: Platform::Android,
            app_id: "app".into(),
            app_version: Some("4.2.0".into()),
            locale: Some("fr-SN".into()),
        }))
        .await?;
    }
    let broadcasts = n.saturating_sub(DEVICES).div_ceil(DEVICES + 2).max(1);
    for b in 0..broadcasts {
        let notification_id = NotificationId::generate();
        let priority = Priority::ALL[b % 4];
        publish(Event::NotificationAccepted(NotificationAccepted {
            notification_id,
            priority,
            audience: Audience::Everyone,
            content: Content {
                title: format!("Planned outage #{b}"),
                body: "Power will be off from 09:00 to 11:00 in your area.".into(),
                data: [("kind".to_owned(), "outage".to_owned())].into(),
                image_url: None,
                ..Default::default()
            },
            category: None,
            idempotency_key: None,
            delivery: DeliveryOptions::default(),
            accepted_at: chrono::Utc::now(),
        }))
        .await?;
        publish(Event::NotificationFannedOut(NotificationFannedOut {
            notification_id,
            priority,
            targeted: DEVICES as u64,
        }))
        .await?;
        let mut succeeded = Vec::new();
        for d in 0..DEVICES {
            let (device_id, customer_id) = (device(d), customer(d));
            let event = match d % 100 {
                0..95 => {
                    succeeded.push(SucceededDevice {
                        device_id,
                        customer_id,
                        attempt: 1,
                        fcm_message_id: format!("projects/p/messages/{b}-{d}"),
                    });
                    continue;
                }
                95..98 => Event::DeliveryFailed(DeliveryFailed {
                    notification_id,
                    priority,
                    device_id,
                    customer_id,
                    attempt: 1,
                    reason: DeliveryFailure::InvalidToken,
                    error_code: Some("UNREGISTERED".into()),
                    detail: "Requested entity was not found.".into(),
                }),
                _ => Event::DeliveryExpired(DeliveryExpired {
                    notification_id,
                    priority,
                    device_id,
                    customer_id,
                    attempt: 1,
                    expired_at: chrono::Utc::now(),
                }),
            };
            publish(event).await?;
            if d % 100 == 99 {
                publish(Event::DeliveriesSucceeded(DeliveriesSucceeded {
                    notification_id,
                    priority,
                    devices: std::mem::take(&mut succeeded),
                }))
                .await?;
            }
        }
    }
    let head = pipeline.flush().await?.last_sequence;
    Ok(Log {
        head,
        facts: (DEVICES + broadcasts * (DEVICES + 2)) as u64,
    })
}

/// Reads `XIBAAR_EVENTS` from the start to `head` with a bare ordered consumer (decoding each
/// event when `decode`): the least any reader of the log spends.
pub async fn read_stream(
    js: &async_nats::jetstream::Context,
    head: u64,
    decode: bool,
) -> anyhow::Result<()> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    use futures::StreamExt;
    let mut messages = js
        .get_stream(xibaar_streams::names::EVENTS)
        .await?
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    let (mut bytes, mut decoded) = (0usize, 0u64);
    while let Some(message) = messages.next().await {
        let message = message?;
        bytes += message.payload.len();
        if decode
            && matches!(
                EventEnvelope::decode(&message.payload)?,
                xibaar_core::Decoded::Known(_)
            )
        {
            decoded += 1;
        }
        if message
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence
            >= head
        {
            break;
        }
    }
    anyhow::ensure!(bytes > 0);
    anyhow::ensure!(!decode || decoded == head, "decoded {decoded} of {head}");
    Ok(())
}

/// What a `xibaar replay` printed, kept in a file as an operator keeps an audit's replay (a
/// reader on a pipe would spend the machine's cores beside it, and be timed with it).
pub struct ReplayOutput {
    file: std::fs::File,
}

impl ReplayOutput {
    /// Checks the replay printed `head` events, one a line; the length of what it printed.
    pub fn check(mut self, head: u64) -> anyhow::Result<usize> {
        use std::io::{Read, Seek};
        self.file.rewind()?;
        let mut printed = Vec::new();
        self.file.read_to_end(&mut printed)?;
        let lines = printed.iter().filter(|b| **b == b'\n').count();
        anyhow::ensure!(
            lines as u64 == head,
            "replay printed {lines} events of {head}"
        );
        Ok(printed.len())
    }
}

/// Runs `xibaar replay` of the whole log by the `xibaar` binary at `binary`, with the
/// configuration `toml`, its output to a file.
pub async fn run_replay(binary: &std::path::Path, toml: &str) -> anyhow::Result<ReplayOutput> {
    let config = tempfile::NamedTempFile::new()?;
    std::fs::write(config.path(), toml)?;
    let file = tempfile::tempfile()?;
    let mut child = std::process::Command::new(binary)
        .arg("--config")
        .arg(config.path())
        .arg("replay")
        .stdout(file.try_clone()?)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    anyhow::ensure!(status.success(), "xibaar replay failed");
    Ok(ReplayOutput { file })
}

/// The median of a run's rounds, the figure a run is judged by (the machine's speed swings
/// between rounds): the middle one, or the mean of the two middle ones. Sorts `values`.
pub fn median(values: &mut [f64]) -> f64 {
    assert!(!values.is_empty(), "a median of no rounds");
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (values[(n - 1) / 2] + values[n / 2]) / 2.0
}

/// How a benchmark prints whether a target holds.
pub fn met(holds: bool) -> &'static str {
    if holds { "met" } else { "not met" }
}

#[cfg(test)]
mod median_tests {
    #[test]
    fn the_median_is_the_middle_round_or_the_mean_of_the_two_middle_ones() {
        assert_eq!(super::median(&mut [0.9, 0.7, 0.8]), 0.8);
        assert_eq!(super::median(&mut [1.0, 0.6, 0.9, 0.7]), 0.8);
        assert_eq!(super::median(&mut [0.5]), 0.5);
    }
}

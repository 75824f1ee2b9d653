//! Helpers the benchmarks share.

use std::path::PathBuf;

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
    // SAFETY: sysconf only reads a configuration value.
    #[allow(unsafe_code)]
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(std::time::Duration::from_secs_f64(
        ticks as f64 / per_second as f64,
    ))
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

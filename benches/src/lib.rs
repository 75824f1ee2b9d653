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
    pub async fn start(max_connections: u32) -> anyhow::Result<Self> {
        let (nats, pg) = tokio::join!(
            xibaar_testkit::NatsServer::start(),
            xibaar_testkit::Postgres::start()
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

//! Real servers for tests, benchmarks and the local pipeline: nats-server with JetStream,
//! PostgreSQL, an S3 server that checks signatures and SQL Server at the wire level, each on its own ephemeral port with a throwaway data directory, so tests run in
//! parallel. Children are killed when their handle drops (also on panic) and, through
//! `PR_SET_PDEATHSIG`, when the test process itself dies.

mod cluster;
mod nats;
mod postgres;
mod process;
mod s3;
mod sqlserver;
mod tools;

pub use cluster::{Election, Group, NatsCluster};
pub use nats::NatsServer;
pub use postgres::Postgres;
pub use process::{KillOnDrop, kill_group_now, spawn_owned, stop_gracefully};
pub use s3::S3Server;
pub use sqlserver::{Request as SqlRequest, SqlServer, Table as SqlTable};
pub mod tds {
    //! What a test needs to describe the tables of a [`crate::SqlServer`].
    pub use mssql_mock_tds::{ColumnDefinition, ColumnValue, SqlDataType};
}
pub mod s3_credentials {
    pub use crate::s3::{ACCESS_KEY, BUCKET, SECRET_KEY};
}
pub use tools::{Tools, workspace_root};

/// A port free now, for a server to listen on. Picked below the kernel's ephemeral range
/// (32768–60999 by default): a port the kernel hands out there can be taken by any outgoing
/// connection of the tests running alongside before the server binds it. Each process starts
/// from its own place in the range.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let seed = std::process::id().wrapping_mul(2_654_435_761) ^ nanos;
    for _ in 0..1_000 {
        let offset = seed.wrapping_add(NEXT.fetch_add(7_919, Ordering::Relaxed)) % 12_000;
        let port = 20_000 + offset as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port between 20000 and 32000")
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

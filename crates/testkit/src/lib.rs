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

pub use cluster::{Group, NatsCluster};
pub use nats::NatsServer;
pub use postgres::Postgres;
pub use process::{KillOnDrop, spawn_owned, stop_gracefully};
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

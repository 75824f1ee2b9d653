//! The `sources` role: notifications born in the utility's SQL Server systems, and the
//! customer attributes segments select by, read with tiberius and stored in JetStream exactly
//! once (see [`source`]).
//!
//! At start every source is checked: its configuration ([`plan`]), its credentials, and, where
//! its server answers, its query and every column its templates name. A source whose server is
//! unreachable starts anyway and retries; one failing source never stops the others.

mod batch;
pub mod build;
pub mod dispatchers;
pub mod emit;
pub mod format;
pub mod plan;
mod read;
pub mod row;
pub mod source;
pub mod sql;
pub mod state;
pub mod template;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use xibaar_config::Config;

pub use plan::{Plan, PlanError};
pub use state::SourceStatus;

/// Why the role cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Nats(String),
}

/// Every configured source, checked and ready to run.
pub async fn prepare(
    config: &Config,
    js: &jetstream::Context,
    stop: &CancellationToken,
) -> Result<Vec<source::Runner>, StartError> {
    let store = state::bucket(js).await.map_err(StartError::Nats)?;
    let dispatchers = if config.sources.is_empty() {
        dispatchers::Dispatchers::default()
    } else {
        dispatchers::Dispatchers::listen(&js.client(), stop.clone()).await
    };
    let mut runners = Vec::new();
    for (name, source) in &config.sources {
        let mut plan = Plan::new(name, source).map_err(|e| StartError::Config(e.to_string()))?;
        let connection = config.sql[&source.connection].clone();
        let login = connection
            .login(&source.connection)
            .map_err(|e| StartError::Config(format!("source `{name}` cannot log in: {e}")))?;
        probe(&mut plan, &connection, &login).await?;
        runners.push(source::Runner {
            plan: std::sync::Arc::new(plan),
            connection,
            login,
            js: js.clone(),
            store: store.clone(),
            stop: stop.clone(),
            dispatchers: dispatchers.clone(),
        });
    }
    Ok(runners)
}

/// Binds `plan` to its query's columns when its server answers; a query the server refuses, or
/// a column it does not return, stops the start. A server that does not answer, or refuses
/// the login, is the running source's to report.
async fn probe(
    plan: &mut Plan,
    connection: &xibaar_config::SqlConnection,
    login: &xibaar_config::SqlLogin,
) -> Result<(), StartError> {
    let mut client = match sql::connect(connection, login).await {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(source = %plan.name, error = %e, class = e.class.as_str(),
                "SQL Server not reachable at start; the source will keep trying");
            return Ok(());
        }
    };
    match sql::columns(&mut client, &plan.statement, plan.watermark.len()).await {
        Ok(columns) => plan
            .bind(&columns)
            .map_err(|e| StartError::Config(e.to_string())),
        Err(e) if e.class == sql::ErrorClass::Query => Err(StartError::Config(format!(
            "configuration key `sources.{}.query`: SQL Server refused it: {}",
            plan.name, e.message
        ))),
        Err(e) => {
            tracing::warn!(source = %plan.name, error = %e, class = e.class.as_str(),
                "the source's query could not be checked at start; the source will keep trying");
            Ok(())
        }
    }
}

/// Runs every source until `stop`.
pub async fn run(runners: Vec<source::Runner>) {
    let mut tasks = tokio::task::JoinSet::new();
    for runner in runners {
        tracing::info!(source = %runner.plan.name, kind = ?runner.plan.kind, "source started");
        tasks.spawn(runner.run());
    }
    while tasks.join_next().await.is_some() {}
}

/// Pauses `source` (it keeps its place) until resumed.
pub async fn pause(js: &jetstream::Context, source: &str, reason: &str) -> Result<(), String> {
    let store = state::bucket(js).await?;
    state::set_paused(
        &store,
        source,
        Some(&format!("paused by an operator: {reason}")),
    )
    .await
}

/// Resumes `source`. With `forget_in_flight`, a batch left in flight is sent again from its
/// first row without looking for what was stored of it (see [`source`]).
pub async fn resume(
    js: &jetstream::Context,
    source: &str,
    forget_in_flight: bool,
) -> Result<(), String> {
    let store = state::bucket(js).await?;
    if forget_in_flight {
        let (mut position, revision) = state::position(&store, source).await?;
        if position.in_flight.take().is_some() {
            state::record(&store, source, &position, revision).await?;
        }
    }
    state::set_paused(&store, source, None).await
}

//! Starting roles: connect, apply streams, migrate, serve health and metrics, run until told
//! to stop.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use async_nats::jetstream;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use xibaar_config::Config;
use xibaar_streams::Definitions;
use xibaar_telemetry::{Check, Health};

/// Which roles this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub dispatcher: bool,
    pub projector: bool,
    /// Runs only when `archive.bucket` is set.
    pub archiver: bool,
    /// Runs only when `[sources.<name>]` are configured.
    pub sources: bool,
}

impl Roles {
    /// Every role: `xibaar up` (the archiver only with an archive configured).
    pub const ALL: Roles = Roles {
        api: true,
        dispatcher: true,
        projector: true,
        archiver: true,
        sources: true,
    };
    pub const NONE: Roles = Roles {
        api: false,
        dispatcher: false,
        projector: false,
        archiver: false,
        sources: false,
    };

    pub fn name(&self) -> &'static str {
        let one = |role| Roles::NONE.with(role) == *self;
        if self.api && self.dispatcher && self.projector {
            "xibaar-up"
        } else if one("api") {
            "xibaar-api"
        } else if one("dispatcher") {
            "xibaar-dispatcher"
        } else if one("projector") {
            "xibaar-projector"
        } else if one("archiver") {
            "xibaar-archiver"
        } else if one("sources") {
            "xibaar-sources"
        } else {
            "xibaar"
        }
    }

    /// These roles and `role`.
    pub fn with(mut self, role: &str) -> Roles {
        match role {
            "api" => self.api = true,
            "dispatcher" => self.dispatcher = true,
            "projector" => self.projector = true,
            "archiver" => self.archiver = true,
            "sources" => self.sources = true,
            other => unreachable!("no role {other}"),
        }
        self
    }
}

/// A JetStream context that pipelines publishes: up to 4096 acks in flight, waiting (not
/// failing) when the window is full.
pub fn jetstream(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .max_ack_inflight(4096)
        .backpressure_on_inflight(true)
        .build(client)
}

pub async fn connect_nats(config: &Config, name: &str) -> anyhow::Result<async_nats::Client> {
    Ok(xibaar_streams::connect(
        &config.nats.url,
        config.nats.credentials_file.as_deref(),
        name,
    )
    .await?)
}

pub fn postgres(config: &Config) -> anyhow::Result<PgPool> {
    let url = config.postgres_url()?;
    Ok(xibaar_store::pool(
        url.expose(),
        config.postgres.max_connections,
    )?)
}

/// Applies the stream definitions compiled into this build (those of `dir` instead, when
/// given), with this configuration's replicas and event retention.
pub async fn apply_streams(
    js: &jetstream::Context,
    config: &Config,
    dir: Option<&std::path::Path>,
) -> anyhow::Result<Vec<xibaar_streams::Change>> {
    let defs = crate::retention::definitions(config, dir)?;
    crate::retention::guard(js, config, &defs).await?;
    Ok(xibaar_streams::apply(js, &defs).await?)
}

/// Applies the stream definitions, waiting while JetStream cannot answer: the role's node is
/// down, the cluster has not formed, or a stream's leader is being elected. A definition
/// JetStream refuses (a retention change, a bad value) stops the start at once. `None`: told to
/// stop while waiting.
async fn apply_streams_when_ready(
    js: &jetstream::Context,
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Vec<xibaar_streams::Change>>> {
    // A refusal for good is an answer (`Ok(Err)`), not something to wait out.
    let answer = xibaar_streams::retry::until_ok(
        "JetStream not ready to apply the streams",
        xibaar_streams::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        Duration::from_secs(5),
        shutdown.cancelled(),
        || async {
            match apply_streams(js, config, None).await {
                Ok(changes) => Ok(Ok(changes)),
                Err(e) if !waiting_helps(&e) => Ok(Err(e.context("applying streams"))),
                Err(e) => Err(format!("{e:#}")),
            }
        },
    )
    .await;
    answer.transpose()
}

/// Whether an error applying the streams may pass by itself.
fn waiting_helps(e: &anyhow::Error) -> bool {
    if e.downcast_ref::<crate::retention::RetentionRefused>()
        .is_some()
        || e.downcast_ref::<xibaar_streams::DefinitionError>()
            .is_some()
    {
        return false;
    }
    match e.downcast_ref::<xibaar_streams::ApplyError>() {
        Some(e) => e.is_transient(),
        None => true,
    }
}

/// Migrates, retrying while Postgres is unreachable (it may start after us). `false`: told to
/// stop while waiting.
async fn migrate_when_reachable(pool: &PgPool, shutdown: &CancellationToken) -> bool {
    xibaar_streams::retry::until_ok(
        "migrating the read models failed",
        xibaar_streams::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
        Duration::from_secs(5),
        shutdown.cancelled(),
        || xibaar_store::migrate(pool),
    )
    .await
    .is_some()
}

fn health(
    client: &async_nats::Client,
    js: &jetstream::Context,
    pool: &PgPool,
    roles: Roles,
) -> Health {
    let nats: Check = {
        let client = client.clone();
        Arc::new(move || {
            let state = client.connection_state();
            Box::pin(async move {
                match state {
                    async_nats::connection::State::Connected => Ok(()),
                    other => Err(format!("NATS connection is {other}")),
                }
            })
        })
    };
    let streams: Check = {
        let js = js.clone();
        Arc::new(move || {
            let js = js.clone();
            Box::pin(async move {
                for def in Definitions::builtin().streams {
                    js.get_stream(&def.config.name)
                        .await
                        .map_err(|e| format!("stream {}: {e}", def.config.name))?;
                }
                Ok(())
            })
        })
    };
    let postgres: Check = {
        let pool = pool.clone();
        Arc::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                sqlx::query("SELECT 1")
                    .execute(&pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("Postgres: {e}"))
            })
        })
    };
    // The api accepts work without Postgres, so for an api-only process it is not required.
    let postgres_required = roles.dispatcher || roles.projector;
    Health::new()
        .check("nats", true, nats)
        .check("streams", true, streams)
        .check("postgres", postgres_required, postgres)
}

/// Runs `roles` until `shutdown` is cancelled, then shuts them down gracefully.
pub async fn run(config: Config, roles: Roles, shutdown: CancellationToken) -> anyhow::Result<()> {
    if roles.dispatcher && config.fcm.apps.is_empty() {
        anyhow::bail!(
            "configuration key `fcm.apps`: the dispatcher needs at least one Firebase app"
        );
    }
    if roles == Roles::NONE.with("archiver") && !config.archive.enabled() {
        anyhow::bail!("configuration key `archive.bucket`: the archiver needs a bucket");
    }
    if roles == Roles::NONE.with("sources") && config.sources.is_empty() {
        anyhow::bail!(
            "configuration key `sources`: the sources role needs at least one [sources.<name>]"
        );
    }
    // Credentials and the extra CA are read now: a missing one stops the start.
    let archive = xibaar_archive::ArchiveStore::configured(&config.archive)?;
    let client = connect_nats(&config, roles.name()).await?;
    let js = jetstream(client.clone());
    let pool = postgres(&config)?;
    let health = health(&client, &js, &pool, roles);

    let ops_listener = tokio::net::TcpListener::bind(config.ops.listen)
        .await
        .with_context(|| format!("binding ops.listen {}", config.ops.listen))?;
    tracing::info!(addr = %ops_listener.local_addr()?, "health and metrics listening");
    let mut tasks = tokio::task::JoinSet::new();
    {
        let shutdown = shutdown.clone();
        let router = xibaar_telemetry::ops_router(health.clone());
        tasks.spawn(async move {
            xibaar_telemetry::serve(
                ops_listener,
                router,
                async move { shutdown.cancelled().await },
            )
            .await
            .context("ops server")
        });
    }

    if config.nats.apply_streams_on_start {
        // A stop asked for while waiting is a stop, not a failure.
        let Some(changes) = apply_streams_when_ready(&js, &config, &shutdown).await? else {
            tracing::info!("stopped before JetStream was ready");
            return Ok(());
        };
        for change in changes {
            tracing::debug!(%change, "stream definitions");
        }
    }
    if roles.sources && !config.sources.is_empty() {
        // A source whose configuration, credentials or query are wrong stops the start.
        let runners = xibaar_sources::prepare(&config, &js, &shutdown).await?;
        tasks.spawn(async move {
            xibaar_sources::run(runners).await;
            Ok(())
        });
    }
    if roles.projector && !migrate_when_reachable(&pool, &shutdown).await {
        tracing::info!("stopped before Postgres was reachable");
        return Ok(());
    }

    if roles.api {
        let secret = config.jwt_secret()?;
        if secret.is_none() && config.auth.jwks_file.is_none() {
            anyhow::bail!(
                "the api needs auth.hs256_secret (or auth.hs256_secret_file) or auth.jwks_file"
            );
        }
        let mut auth = xibaar_api::Authenticator::new(&config.auth.issuer, &config.auth.audience);
        if let Some(secret) = secret {
            auth = auth.with_hs256(secret.expose().as_bytes());
        }
        if let Some(path) = &config.auth.jwks_file {
            auth = auth
                .with_jwks_file(path)
                .context("configuration key `auth.jwks_file`")?;
        }
        let limits = xibaar_api::limit::RateLimits::new(
            config.api.customer_requests_per_minute,
            config.api.client_requests_per_minute,
        );
        limits.share_across_instances(client.clone(), shutdown.clone());
        let state = xibaar_api::AppState::new(xibaar_api::Shared {
            js: js.clone(),
            pool: pool.clone(),
            auth,
            limits,
            publish_timeout: config.api.publish_timeout,
            ops: xibaar_api::ops::spawn_collector(
                client.clone(),
                js.clone(),
                archive.is_some(),
                shutdown.clone(),
            ),
            inbox: Default::default(),
            archive: archive.clone(),
        });
        state
            .inbox
            .clone()
            .spawn_listener(pool.clone(), shutdown.clone());
        let listener = tokio::net::TcpListener::bind(config.api.listen)
            .await
            .with_context(|| format!("binding api.listen {}", config.api.listen))?;
        tracing::info!(addr = %listener.local_addr()?, "api listening");
        let router = xibaar_api::app(state.clone(), config.api.max_body_bytes);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            xibaar_api::serve(listener, state, router, shutdown)
                .await
                .context("api server")
        });
    }
    if roles.dispatcher {
        let fcm = Arc::new(xibaar_fcm::FcmClient::new(&config.fcm)?);
        let dispatcher = xibaar_dispatcher::Dispatcher::new(
            js.clone(),
            pool.clone(),
            fcm,
            xibaar_dispatcher::DispatcherSettings::from_config(&config),
        );
        tasks.spawn(dispatcher.run(shutdown.clone()));
    }
    if roles.projector {
        let projector =
            xibaar_projector::Projector::new(js.clone(), pool.clone(), (&config.projector).into());
        tasks.spawn(projector.run(shutdown.clone()));
    }
    if let (true, Some(store)) = (roles.archiver, &archive) {
        let archiver =
            xibaar_archive::Archiver::new(js.clone(), store.clone(), (&config.archive).into());
        tasks.spawn(archiver.run(shutdown.clone()));
        let (js, shutdown) = (js.clone(), shutdown.clone());
        tasks.spawn(async move {
            xibaar_archive::lag::report_lag(js, Duration::from_secs(5), shutdown).await;
            Ok(())
        });
    }
    {
        // Every role reports every Xibaar consumer: ops see the backlog of a priority whose
        // dispatcher is down from any process that is up.
        let js = js.clone();
        let pool = roles.projector.then(|| pool.clone());
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            crate::report::collect_lag(js, pool, shutdown).await;
            Ok(())
        });
    }
    {
        let client = client.clone();
        let role = roles.name();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            crate::report::publish_heartbeats(client, role, shutdown).await;
            Ok(())
        });
    }
    health.mark_started();
    tracing::info!(roles = roles.name(), "started");

    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = outcome {
            tracing::error!(error = format!("{e:#}"), "a role failed; shutting down");
            shutdown.cancel();
            result = Err(e);
        }
    }
    // Acks and messages still buffered in the client go out before we exit, unless NATS is
    // unreachable: then they wait for no one (a flush waits for a reconnection), and the jobs
    // they would have acked come back after their ack wait (those whose sent-marker was
    // stored are not pushed again).
    match tokio::time::timeout(FINAL_FLUSH, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "flushing the NATS connection failed"),
        Err(_) => tracing::warn!(
            waited = ?FINAL_FLUSH,
            "NATS unreachable at shutdown; buffered acks and messages dropped (their jobs come back after the ack wait)"
        ),
    }
    result
}

/// How long the last flush of the NATS connection may take at shutdown.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// Cancels `token` on Ctrl-C or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        token.cancel();
    });
}

//! The command line: one binary, one role or tool per subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use xibaar_config::Config;

use crate::{Roles, commands, startup};

#[derive(Parser)]
#[command(
    name = "xibaar",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("XIBAAR_COMMIT"), ")"),
    about = "Event-sourced push notifications on NATS JetStream"
)]
pub struct Cli {
    /// Configuration file (TOML); `XIBAAR_<SECTION>__<KEY>` variables override it.
    #[arg(long, short, global = true, env = "XIBAAR_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Every role in one process: api, dispatcher, projector, the archiver when
    /// `archive.bucket` is set and the sources when `[sources.<name>]` are.
    Up,
    /// The HTTP API.
    Api,
    /// Fan-out and FCM delivery.
    Dispatcher,
    /// Read-model projections.
    Projector,
    /// Seals the event log into segments on S3/MinIO (`[archive]`).
    Archiver,
    /// Without a subcommand, the role reading the SQL Server sources (`[sources.<name>]`);
    /// with one, their status, pause and resume.
    Sources {
        #[command(subcommand)]
        command: Option<commands::sources::SourcesCommand>,
    },
    /// The archive: status, verify, restore.
    Archive {
        #[command(subcommand)]
        command: commands::archive::ArchiveCommand,
    },
    /// Stream and consumer definitions.
    Streams {
        #[command(subcommand)]
        command: StreamsCommand,
    },
    /// Apply the read-model migrations to Postgres.
    Migrate,
    /// Send a notification through the API.
    Send(commands::send::SendArgs),
    /// Print a bearer token signed with the configured secret (for scripts and local use).
    Token(TokenArgs),
    /// Consumer lag per stream and consumer, and the projections' gap (exit 2 past a threshold).
    Lag(commands::lag::LagArgs),
    /// Events from the log, as stored: by time range, notification, customer, device or type.
    Replay(commands::replay::ReplayArgs),
    /// Timelines for auditors.
    Audit {
        #[command(subcommand)]
        command: commands::replay::AuditCommand,
    },
    /// The read-model projections.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Asks this process's ops listener (`ops.listen`) for a health probe: exit 0 when it
    /// answers 200, 1 otherwise. For container health checks, where no HTTP client is shipped.
    Health {
        /// `live`, `ready` or `startup`.
        #[arg(long, default_value = "ready", value_parser = ["live", "ready", "startup"])]
        probe: String,
    },
    /// Dead letters: list, show, retry, drop.
    Dlq {
        #[command(subcommand)]
        command: commands::dlq::DlqCommand,
    },
}

#[derive(Subcommand)]
pub enum StreamsCommand {
    /// Create or update every stream and consumer; refuse changes JetStream cannot make.
    Apply {
        /// Load definitions from this directory instead of the ones built in.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ProjectionsCommand {
    /// Each projection's checkpoint, the event stream's head, the lag between them and when
    /// the checkpoint last moved.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Fold the log again from sequence 1 into shadow tables, catch up with the live head and
    /// swap them in within one transaction; live traffic keeps flowing.
    Rebuild {
        /// The projection (`read_models`).
        name: String,
        /// Keep the replaced tables in schema `xibaar_retired` instead of dropping them.
        #[arg(long)]
        keep_retired: bool,
    },
}

#[derive(Args)]
pub struct TokenArgs {
    /// The customer id, or a back-office client's name.
    #[arg(long)]
    pub sub: String,
    /// Scopes such as notifications:send (repeatable).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
}

pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    let roles = match cli.command {
        Command::Up => Some(Roles::ALL),
        Command::Api => Some(Roles::NONE.with("api")),
        Command::Dispatcher => Some(Roles::NONE.with("dispatcher")),
        Command::Projector => Some(Roles::NONE.with("projector")),
        Command::Archiver => Some(Roles::NONE.with("archiver")),
        Command::Sources { command: None } => Some(Roles::NONE.with("sources")),
        _ => None,
    };
    if let Some(roles) = roles {
        let tracing = xibaar_telemetry::init_tracing(&config.log, roles.name());
        let shutdown = CancellationToken::new();
        startup::cancel_on_signal(shutdown.clone());
        let outcome = startup::run(config, roles, shutdown).await;
        tracing.shutdown();
        return outcome;
    }
    let _tracing = xibaar_telemetry::init_tracing(
        &xibaar_config::LogConfig {
            format: xibaar_config::LogFormat::Text,
            filter: "warn".into(),
            otlp_traces_endpoint: None,
        },
        "xibaar-cli",
    );
    match cli.command {
        Command::Streams {
            command: StreamsCommand::Apply { dir },
        } => commands::streams_apply(&config, dir).await,
        Command::Migrate => commands::migrate(&config).await,
        Command::Send(args) => commands::send::run(&config, args).await,
        Command::Token(args) => {
            let scopes: Vec<&str> = args.scopes.iter().map(String::as_str).collect();
            println!(
                "{}",
                commands::mint_token(&config, &args.sub, &scopes, args.ttl)?
            );
            Ok(())
        }
        Command::Replay(args) => commands::replay::run_replay(&config, args).await,
        Command::Audit { command } => commands::replay::run_audit(&config, command).await,
        Command::Dlq { command } => commands::dlq::run(&config, command).await,
        Command::Archive { command } => commands::archive::run(&config, command).await,
        Command::Sources {
            command: Some(command),
        } => commands::sources::run(&config, command).await,
        Command::Health { probe } => commands::health(&config, &probe).await,
        Command::Projections {
            command: ProjectionsCommand::Status { json },
        } => commands::lag::projections_status(&config, json).await,
        Command::Projections {
            command: ProjectionsCommand::Rebuild { name, keep_retired },
        } => commands::rebuild(&config, &name, keep_retired).await,
        Command::Lag(args) => {
            let status = commands::lag::run(&config, args).await?;
            if status != 0 {
                std::process::exit(status);
            }
            Ok(())
        }
        Command::Up
        | Command::Api
        | Command::Dispatcher
        | Command::Projector
        | Command::Archiver
        | Command::Sources { command: None } => Ok(()),
    }
}

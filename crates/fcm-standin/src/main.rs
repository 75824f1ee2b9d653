//! `fcm-standin`: serves the stand-in on a fixed address for the local pipeline and benches.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use xibaar_fcm_standin::{StandIn, StandInConfig};

#[derive(Parser)]
#[command(about = "A local stand-in for FCM HTTP v1")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:4005")]
    listen: SocketAddr,
    /// Writes a service-account key file whose token_uri points here.
    #[arg(long)]
    write_service_account: Option<PathBuf>,
    #[arg(long, default_value_t = 600_000)]
    quota_per_minute: u64,
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Each answer's latency is latency_ms ± this, uniformly drawn.
    #[arg(long, default_value_t = 0)]
    latency_jitter_ms: u64,
    /// Concurrent streams per HTTP/2 connection (FCM's front ends allow 100).
    #[arg(long, default_value_t = 100)]
    streams_per_connection: u32,
    /// Keep only counts, not message bodies (long benchmark runs).
    #[arg(long)]
    no_record: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let standin = StandIn::serve(
        listener,
        StandInConfig {
            quota_per_minute: args.quota_per_minute,
            latency: Duration::from_millis(args.latency_ms),
            latency_jitter: Duration::from_millis(args.latency_jitter_ms),
            streams_per_connection: args.streams_per_connection,
            record_messages: !args.no_record,
            record_only: None,
            ..StandInConfig::default()
        },
    )?;
    if let Some(path) = &args.write_service_account {
        xibaar_fcm_standin::write_service_account(path, &standin.token_uri())?;
    }
    tracing::info!(url = %standin.url(), "FCM stand-in listening");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

//! `xibaar-local`: the whole pipeline on this machine, for trying Xibaar out and for demos.
//!
//! Starts nats-server and PostgreSQL (pinned binaries under `.xibaar/tools`, data under
//! `.xibaar/local`), the FCM stand-in unless real credentials are given
//! (`GOOGLE_APPLICATION_CREDENTIALS` with `XIBAAR_FCM_APP_ID`), writes `.xibaar/local.toml`
//! and runs every role in this process until Ctrl-C.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use xibaar_fcm_standin::{StandIn, StandInConfig};
use xibaar_testkit::{NatsServer, Postgres, S3Server};

#[derive(Parser)]
#[command(about = "Run the whole Xibaar pipeline locally")]
struct Args {
    /// Where servers keep their data and the generated config lives.
    #[arg(long, default_value = ".xibaar")]
    home: PathBuf,
    #[arg(long, default_value_t = 4222)]
    nats_port: u16,
    #[arg(long, default_value_t = 5433)]
    postgres_port: u16,
    #[arg(long, default_value = "127.0.0.1:4005")]
    standin: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8080")]
    api: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9464")]
    ops: SocketAddr,
}

/// The FCM section: real credentials when given, else the stand-in's test account.
fn fcm_section(home: &Path, standin: Option<&StandIn>) -> anyhow::Result<String> {
    if let Ok(key) = std::env::var("GOOGLE_APPLICATION_CREDENTIALS") {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&key).with_context(|| format!("reading {key}"))?)
                .with_context(|| format!("{key} is not a service-account key"))?;
        let project = json["project_id"]
            .as_str()
            .context("the key has no project_id")?;
        let app_id = std::env::var("XIBAAR_FCM_APP_ID")
            .context("set XIBAAR_FCM_APP_ID to the Firebase app id your devices register with")?;
        return Ok(format!(
            "[fcm]\nendpoint = \"https://fcm.googleapis.com\"\n[[fcm.apps]]\napp_id = {app_id:?}\nproject_id = {project:?}\nservice_account_file = {key:?}\n"
        ));
    }
    let standin = standin.context("no stand-in running")?;
    let key = home.join("local/standin-service-account.json");
    xibaar_fcm_standin::write_service_account(&key, &standin.token_uri())?;
    Ok(format!(
        "[fcm]\nendpoint = {:?}\n[[fcm.apps]]\napp_id = \"local-app\"\nproject_id = \"xibaar-local\"\nservice_account_file = {:?}\n",
        standin.url(),
        key.canonicalize()?
    ))
}

/// The HS256 secret survives restarts so tokens minted earlier stay valid.
fn secret(home: &Path) -> anyhow::Result<String> {
    let path = home.join("local/jwt-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().to_owned());
    }
    let secret = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    std::fs::write(&path, &secret)?;
    Ok(secret)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _tracing = xibaar_telemetry::init_tracing(
        &xibaar_config::LogConfig {
            format: xibaar_config::LogFormat::Text,
            filter: "info,sqlx=warn".into(),
            otlp_traces_endpoint: None,
        },
        "xibaar-local",
    );
    std::fs::create_dir_all(args.home.join("local"))?;
    let home = args.home.canonicalize()?;

    let nats = NatsServer::start_in(&home.join("local/nats"), Some(args.nats_port))
        .await
        .context("starting nats-server")?;
    let pg = Postgres::start_in(&home.join("local/postgres"), Some(args.postgres_port))
        .await
        .context("starting PostgreSQL")?;
    let database = pg.create_database("xibaar").await?;
    // The archive: an S3 server (s3s-fs, signatures checked) keeping its objects here.
    let s3 = S3Server::start_in(home.join("local/s3"))
        .await
        .context("starting the S3 server")?;
    let standin = if std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").is_none() {
        let listener = tokio::net::TcpListener::bind(args.standin)
            .await
            .with_context(|| format!("binding the FCM stand-in to {}", args.standin))?;
        Some(StandIn::serve(listener, StandInConfig::default())?)
    } else {
        None
    };

    let toml = format!(
        "# Written by xibaar-local; use it with `xibaar --config {path}`.\n\
         [nats]\nurl = {nats:?}\n[postgres]\nurl = {database:?}\n\
         [api]\nlisten = \"{api}\"\n[ops]\nlisten = \"{ops}\"\n\
         [auth]\nhs256_secret = {secret:?}\n[log]\nformat = \"text\"\n\
         [archive]\n{archive}segment_max_age = \"1m\"\n{fcm}",
        path = home.join("local.toml").display(),
        nats = nats.url(),
        api = args.api,
        ops = args.ops,
        secret = secret(&home)?,
        archive = s3.archive_toml(),
        fcm = fcm_section(&home, standin.as_ref())?,
    );
    let config_path = home.join("local.toml");
    std::fs::write(&config_path, &toml)?;
    let config = xibaar_config::Config::load(Some(&config_path))?;

    println!(
        "\nXibaar is starting.\n  api      http://{}\n  ops      http://{}/health/ready, /metrics\n  nats     {}\n  postgres {}\n  archive  {} (objects under {})\n  fcm      {}\n  config   {}\n\nStop with Ctrl-C.\n",
        args.api,
        args.ops,
        nats.url(),
        pg.url("xibaar"),
        s3.endpoint(),
        s3.root().display(),
        standin
            .as_ref()
            .map_or("https://fcm.googleapis.com".into(), |s| format!(
                "stand-in at {} (messages: {}/__standin/messages)",
                s.url(),
                s.url()
            )),
        config_path.display(),
    );
    let shutdown = CancellationToken::new();
    xibaar::startup::cancel_on_signal(shutdown.clone());
    let result = xibaar::run(config, xibaar::Roles::ALL, shutdown).await;
    // Servers stop when their handles drop; give the pipeline's last acks a moment first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop((standin, s3, pg, nats));
    result
}

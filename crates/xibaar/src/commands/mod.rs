pub mod dlq;
pub mod lag;
pub mod replay;
pub mod send;

use std::path::PathBuf;

use anyhow::Context;
use xibaar_config::Config;
use xibaar_streams::Definitions;

use crate::startup;

pub async fn streams_apply(config: &Config, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let defs = match dir {
        Some(dir) => Definitions::load_dir(&dir)?,
        None => Definitions::builtin(),
    }
    .with_replicas(config.nats.stream_replicas);
    let client = startup::connect_nats(config, "xibaar-streams-apply").await?;
    let js = startup::jetstream(client);
    for change in xibaar_streams::apply(&js, &defs).await? {
        println!("{change}");
    }
    Ok(())
}

pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let pool = startup::postgres(config)?;
    xibaar_store::migrate(&pool).await?;
    println!("read models are at the latest migration");
    Ok(())
}

pub fn mint_token(
    config: &Config,
    subject: &str,
    scopes: &[&str],
    ttl: std::time::Duration,
) -> anyhow::Result<String> {
    let secret = config
        .jwt_secret()?
        .context("auth.hs256_secret is not configured")?;
    Ok(xibaar_api::mint(
        secret.expose().as_bytes(),
        &config.auth.issuer,
        &config.auth.audience,
        subject,
        scopes,
        ttl,
    )?)
}

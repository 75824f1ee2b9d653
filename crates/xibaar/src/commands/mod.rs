pub mod archive;
pub mod dlq;
pub mod lag;
pub mod replay;
pub mod send;
pub mod sources;

use std::path::PathBuf;

use anyhow::Context;
use xibaar_config::Config;

use crate::startup;

pub async fn streams_apply(config: &Config, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let client = startup::connect_nats(config, "xibaar-streams-apply").await?;
    let js = startup::jetstream(client);
    for change in startup::apply_streams(&js, config, dir.as_deref()).await? {
        println!("{change}");
    }
    Ok(())
}

/// `xibaar projections rebuild NAME`, with a progress bar on stderr.
pub async fn rebuild(config: &Config, name: &str, keep_retired: bool) -> anyhow::Result<()> {
    use xibaar_projector::rebuild::{self, Phase};
    let client = startup::connect_nats(config, "xibaar-rebuild").await?;
    let js = startup::jetstream(client);
    let pool = startup::postgres(config)?;
    xibaar_store::migrate(&pool).await?;
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {pos}/{len} events ({per_sec}, {eta} left)",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let mut phase = None;
    let archive = archive::optional_store(config)?;
    let report = rebuild::rebuild(
        &js,
        archive.as_ref(),
        &pool,
        name,
        (&config.projector).into(),
        keep_retired,
        &mut |p| {
            if phase != Some(p.phase) {
                phase = Some(p.phase);
                // A line per phase also where no terminal draws the bar (logs, CI).
                if bar.is_hidden() {
                    eprintln!("{:?}: {} of {} events", p.phase, p.applied_through, p.head);
                }
            }
            bar.set_message(match p.phase {
                Phase::Replaying => "replaying",
                Phase::Swapping => "swapping",
                Phase::Done => "done",
            });
            bar.set_length(p.head);
            bar.set_position(p.applied_through);
        },
    )
    .await?;
    bar.finish();
    println!(
        "rebuilt {name} from sequence 1 to {} in {:.1?} and swapped it in (the live tables were at {}; held for {:.1?})",
        report.checkpoint, report.elapsed, report.replaced_checkpoint, report.swap_held
    );
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

/// `xibaar health`: the probe's answer from the ops listener of this configuration.
pub async fn health(config: &Config, probe: &str) -> anyhow::Result<()> {
    let mut addr = config.ops.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{addr}/health/{probe}");
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("asking {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    println!("{body}");
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    Ok(())
}

//! `xibaar lag`: every Xibaar consumer's backlog and how far behind it is, like
//! `nats consumer report`, plus the projections' distance from the event stream's head.

use std::{io::Write, time::Duration};

use clap::Args;
use serde::Serialize;
use xibaar_config::Config;
use xibaar_streams::{Definitions, lag::ConsumerLag};

use crate::startup;

#[derive(Args)]
pub struct LagArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Refresh in place until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// How often `--watch` refreshes.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Exit with status 2 when any consumer has more unfinished messages than this.
    #[arg(long)]
    pub max_backlog: Option<u64>,
    /// Exit with status 2 when any consumer's oldest unfinished message is older than this
    /// many seconds.
    #[arg(long)]
    pub max_seconds_behind: Option<f64>,
}

/// A projection's distance from the head of `XIBAAR_EVENTS`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectionLag {
    pub projection: String,
    pub checkpoint: u64,
    pub head: u64,
    pub gap: u64,
    /// When the checkpoint last moved; `None` before the first batch.
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Serialize)]
struct Report {
    consumers: Vec<ConsumerLag>,
    /// Empty when Postgres could not be reached (the consumers are still reported).
    projections: Vec<ProjectionLag>,
    /// The archive's distance from the stream's head; absent without an archive (or when
    /// it cannot be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    archive: Option<xibaar_archive::ArchiveLag>,
    /// Thresholds exceeded, in words.
    exceeded: Vec<String>,
}

/// Exit status when a threshold is exceeded.
pub const EXCEEDED: i32 = 2;

pub async fn run(config: &Config, args: LagArgs) -> anyhow::Result<i32> {
    let client = startup::connect_nats(config, "xibaar-lag").await?;
    let js = startup::jetstream(client);
    let pool = startup::postgres(config)?;
    let definitions = Definitions::builtin();
    loop {
        let consumers = xibaar_streams::lag::consumer_lag(&js, &definitions).await?;
        let projections =
            match tokio::time::timeout(Duration::from_secs(3), projection_lag(&js, &pool)).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "projection checkpoints unavailable"
                    );
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!("projection checkpoints unavailable: Postgres did not answer");
                    Vec::new()
                }
            };
        let archive = match config.archive.enabled() {
            true => match xibaar_archive::archive_lag(&js).await {
                Ok(lag) => Some(lag),
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "archive lag unavailable");
                    None
                }
            },
            false => None,
        };
        let mut exceeded = exceeded(&consumers, &args);
        if let Some(lag) = &archive {
            exceeded.extend(archive_exceeded(lag, &args));
        }
        let report = Report {
            consumers,
            projections,
            archive,
            exceeded,
        };
        let mut out = std::io::stdout().lock();
        if args.watch && !args.json {
            // Home and clear: the table is redrawn in place.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
        } else {
            write!(out, "{}", table(&report))?;
        }
        out.flush()?;
        if !args.watch {
            return Ok(if report.exceeded.is_empty() {
                0
            } else {
                EXCEEDED
            });
        }
        tokio::time::sleep(args.interval).await;
    }
}

pub async fn projection_lag(
    js: &async_nats::jetstream::Context,
    pool: &sqlx::PgPool,
) -> anyhow::Result<Vec<ProjectionLag>> {
    let head = xibaar_projector::events_head(js).await?;
    let rows: Vec<(String, i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT projection, last_sequence, updated_at FROM projection_checkpoints ORDER BY projection",
    )
    .fetch_all(pool)
    .await?;
    let mut lags: Vec<ProjectionLag> = rows
        .into_iter()
        .map(|(projection, checkpoint, updated_at)| {
            let checkpoint = u64::try_from(checkpoint).unwrap_or(0);
            ProjectionLag {
                projection,
                checkpoint,
                head,
                gap: head.saturating_sub(checkpoint),
                updated_at: Some(updated_at),
            }
        })
        .collect();
    if lags.is_empty() {
        // No checkpoint yet: the projector has not applied anything.
        lags.push(ProjectionLag {
            projection: xibaar_projector::READ_MODELS.to_owned(),
            checkpoint: 0,
            head,
            gap: head,
            updated_at: None,
        });
    }
    Ok(lags)
}

fn exceeded(consumers: &[ConsumerLag], args: &LagArgs) -> Vec<String> {
    let mut out = Vec::new();
    for c in consumers {
        if let Some(max) = args.max_backlog
            && c.backlog() > max
        {
            out.push(format!(
                "{}/{}: backlog {} > {max}",
                c.stream,
                c.consumer,
                c.backlog()
            ));
        }
        if let Some(max) = args.max_seconds_behind
            && c.seconds_behind > max
        {
            out.push(format!(
                "{}/{}: {:.1} s behind > {max} s",
                c.stream, c.consumer, c.seconds_behind
            ));
        }
    }
    out
}

/// The thresholds apply to the archive as to a consumer; events it lost always count.
fn archive_exceeded(lag: &xibaar_archive::ArchiveLag, args: &LagArgs) -> Vec<String> {
    let mut out = Vec::new();
    if args.max_backlog.is_some_and(|max| lag.events_behind > max) {
        out.push(format!("archive: {} events behind", lag.events_behind));
    }
    if args
        .max_seconds_behind
        .is_some_and(|max| lag.seconds_behind > max)
    {
        out.push(format!("archive: {:.1} s behind", lag.seconds_behind));
    }
    if lag.lost > 0 {
        out.push(format!(
            "archive: {} events dropped by the stream before they were archived",
            lag.lost
        ));
    }
    out
}

fn table(report: &Report) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header([
        "stream",
        "consumer",
        "pending",
        "ack pending",
        "redelivered",
        "waiting",
        "ack floor",
        "last seq",
        "behind",
    ]);
    for c in &report.consumers {
        let consumer = if c.paused {
            format!("{} (paused)", c.consumer)
        } else {
            c.consumer.clone()
        };
        table.add_row([
            c.stream.clone(),
            consumer,
            c.pending.to_string(),
            c.ack_pending.to_string(),
            c.redelivered.to_string(),
            c.waiting.to_string(),
            c.ack_floor.to_string(),
            c.last_sequence.to_string(),
            format!("{:.1}s", c.seconds_behind),
        ]);
    }
    for p in &report.projections {
        table.add_row([
            xibaar_streams::names::EVENTS.to_owned(),
            format!("projection {}", p.projection),
            p.gap.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            p.checkpoint.to_string(),
            p.head.to_string(),
            "-".into(),
        ]);
    }
    if let Some(a) = &report.archive {
        table.add_row([
            xibaar_streams::names::EVENTS.to_owned(),
            "archive".into(),
            a.events_behind.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            a.archived_through.to_string(),
            a.head.to_string(),
            format!("{:.1}s", a.seconds_behind),
        ]);
    }
    let mut out = format!("{table}\n");
    if let Some(margin) = report
        .archive
        .as_ref()
        .and_then(|a| a.retention_margin_seconds)
    {
        out.push_str(&format!(
            "archive: the stream drops the oldest unarchived event in {margin:.0} s\n"
        ));
    }
    for e in &report.exceeded {
        out.push_str(&format!("threshold exceeded: {e}\n"));
    }
    out
}

/// `xibaar projections status`: each projection's checkpoint, the head of `XIBAAR_EVENTS`, the
/// gap between them and when the checkpoint last moved.
pub async fn projections_status(config: &Config, json: bool) -> anyhow::Result<()> {
    let client = startup::connect_nats(config, "xibaar-projections").await?;
    let js = startup::jetstream(client);
    let pool = startup::postgres(config)?;
    let lags = tokio::time::timeout(Duration::from_secs(10), projection_lag(&js, &pool))
        .await
        .map_err(|_| anyhow::anyhow!("Postgres did not answer within 10 s"))??;
    if json {
        println!("{}", serde_json::to_string(&lags)?);
        return Ok(());
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header([
        "projection",
        "checkpoint",
        "stream head",
        "lag",
        "last applied",
    ]);
    let now = chrono::Utc::now();
    for p in &lags {
        let applied = p.updated_at.map_or_else(
            || "never".to_owned(),
            |at| {
                let ago = (now - at).to_std().unwrap_or_default();
                format!(
                    "{} ({} ago)",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    humantime::format_duration(Duration::from_secs(ago.as_secs()))
                )
            },
        );
        table.add_row([
            p.projection.clone(),
            p.checkpoint.to_string(),
            p.head.to_string(),
            p.gap.to_string(),
            applied,
        ]);
    }
    println!("{table}");
    Ok(())
}

//! `xibaar sources status | pause | resume`: the SQL Server sources as an operator sees them,
//! read from and written to `XIBAAR_SOURCES` (any process may run these, wherever the sources
//! role runs).

use std::collections::BTreeMap;

use clap::Subcommand;
use xibaar_config::Config;
use xibaar_sources::SourceStatus;

use crate::startup;

#[derive(Subcommand)]
pub enum SourcesCommand {
    /// Each source's state, rows read, notifications and events sent on, errors by class, lag and watermark.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop reading a source; it keeps its place.
    Pause {
        name: String,
        /// Shown in the status while paused.
        #[arg(long, default_value = "no reason given")]
        reason: String,
    },
    /// Read a paused source again from where it stopped.
    Resume {
        name: String,
        /// A batch left in flight longer than the command streams keep commands is sent again
        /// from its first row (some of its rows may be notified twice); see docs/sources.md.
        #[arg(long)]
        forget_in_flight: bool,
    },
}

pub async fn run(config: &Config, command: SourcesCommand) -> anyhow::Result<()> {
    let client = startup::connect_nats(config, "xibaar-sources-cli").await?;
    let js = startup::jetstream(client);
    let statuses = xibaar_sources::state::statuses(&js)
        .await
        .map_err(anyhow::Error::msg)?;
    match command {
        SourcesCommand::Status { json } => {
            let mut all: BTreeMap<String, Option<SourceStatus>> = config
                .sources
                .keys()
                .map(|name| (name.clone(), None))
                .collect();
            for (name, status) in statuses {
                all.insert(name, Some(status));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", table(&all));
            }
        }
        SourcesCommand::Pause { name, reason } => {
            known(config, &statuses, &name)?;
            xibaar_sources::pause(&js, &name, &reason)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("source {name} paused; it keeps its place");
        }
        SourcesCommand::Resume {
            name,
            forget_in_flight,
        } => {
            known(config, &statuses, &name)?;
            xibaar_sources::resume(&js, &name, forget_in_flight)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("source {name} resumed");
        }
    }
    Ok(())
}

/// A source this configuration names, or one that has run somewhere.
fn known(
    config: &Config,
    statuses: &BTreeMap<String, SourceStatus>,
    name: &str,
) -> anyhow::Result<()> {
    if config.sources.contains_key(name) || statuses.contains_key(name) {
        return Ok(());
    }
    let names: Vec<&str> = config
        .sources
        .keys()
        .chain(statuses.keys())
        .map(String::as_str)
        .collect();
    anyhow::bail!(
        "no source `{name}` (known: {})",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    )
}

fn table(all: &BTreeMap<String, Option<SourceStatus>>) -> String {
    let mut out = format!(
        "{:<20} {:<13} {:<9} {:>10} {:>10} {:>9} {:>9} {:<16} {}\n",
        "SOURCE", "KIND", "STATE", "ROWS", "SENT ON", "REJECTED", "LAG", "WATERMARK", "ERRORS"
    );
    for (name, status) in all {
        let Some(s) = status else {
            out.push_str(&format!("{name:<20} {:<13} not started yet\n", "-"));
            continue;
        };
        let errors: Vec<String> = s.errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let watermark = s.watermark.as_ref().map_or("-".into(), |w| {
            w.iter().map(i64::to_string).collect::<Vec<_>>().join(".")
        });
        out.push_str(&format!(
            "{name:<20} {:<13} {:<9} {:>10} {:>10} {:>9} {:>9} {:<16} {}\n",
            s.kind,
            s.state,
            s.rows_read,
            s.emitted,
            s.rejected,
            s.lag_seconds.map_or("-".into(), |l| format!("{l:.1}s")),
            watermark,
            if errors.is_empty() {
                "-".into()
            } else {
                errors.join(", ")
            },
        ));
        if let Some(e) = &s.last_error
            && s.state != "running"
        {
            out.push_str(&format!("{:<20} last error: {e}\n", ""));
        }
    }
    out
}

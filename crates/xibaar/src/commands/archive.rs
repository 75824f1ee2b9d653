//! `xibaar archive status | verify | restore`.

use clap::Subcommand;
use xibaar_archive::{ArchiveStore, restore, verify};
use xibaar_config::Config;

use crate::startup;

#[derive(Subcommand)]
pub enum ArchiveCommand {
    /// The archived position, the stream's head, the lag and the retention margin.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Read every segment of a range again: checksums, counts, sequences, no gap or overlap.
    /// Exit 1 when anything is wrong.
    Verify {
        /// First sequence to check (default: the archive's first).
        #[arg(long)]
        from: Option<u64>,
        /// Last sequence to check (default: the archive's last).
        #[arg(long)]
        to: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Write a range of the archive back into XIBAAR_EVENTS at its original sequences (a
    /// fresh cluster after a disaster); messages already there are skipped.
    Restore {
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long)]
        to: Option<u64>,
    },
}

/// The archive of this configuration; an error naming the key when there is none.
pub fn store(config: &Config) -> anyhow::Result<ArchiveStore> {
    anyhow::ensure!(
        config.archive.enabled(),
        "configuration key `archive.bucket`: no archive is configured"
    );
    Ok(ArchiveStore::from_config(&config.archive)?)
}

/// The archive when one is configured (replay and audit read it too).
pub fn optional_store(config: &Config) -> anyhow::Result<Option<ArchiveStore>> {
    Ok(ArchiveStore::configured(&config.archive)?)
}

pub async fn run(config: &Config, command: ArchiveCommand) -> anyhow::Result<()> {
    let archive = store(config)?;
    match command {
        ArchiveCommand::Status { json } => {
            let client = startup::connect_nats(config, "xibaar-archive").await?;
            let js = startup::jetstream(client);
            let lag = xibaar_archive::archive_lag(&js).await?;
            let segments = archive.index(1).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "lag": lag, "segments": segments.len(), "bucket": archive.bucket() })
                );
            } else {
                println!("bucket            {}", archive.bucket());
                println!("segments          {}", segments.len());
                if let (Some(first), Some(last)) = (segments.first(), segments.last()) {
                    println!(
                        "range             {}..{} ({} .. {})",
                        first.first_sequence, last.last_sequence, first.first_time, last.last_time
                    );
                }
                println!("archived through  {} of {}", lag.archived_through, lag.head);
                println!(
                    "behind            {} events, {:.1}s",
                    lag.events_behind, lag.seconds_behind
                );
                match lag.retention_margin_seconds {
                    Some(m) => println!("retention margin  {m:.0}s"),
                    None => println!("retention margin  unlimited"),
                }
                if lag.lost > 0 {
                    println!(
                        "LOST              {} events dropped by the stream before they were archived",
                        lag.lost
                    );
                }
            }
            Ok(())
        }
        ArchiveCommand::Verify { from, to, json } => {
            let report = verify::verify(&archive, from, to, |last| {
                if !json {
                    eprint!("\rverified through sequence {last}   ");
                }
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                eprintln!();
                println!(
                    "{} segments, {} events, sequences {}..{}",
                    report.segments,
                    report.events,
                    report.first_sequence.unwrap_or(0),
                    report.last_sequence.unwrap_or(0)
                );
                for (from, to) in &report.gaps {
                    println!("GAP      no segment holds events {from}..{to}");
                }
                for (from, to) in &report.overlaps {
                    println!("OVERLAP  segment {from}..{to} overlaps the one before");
                }
                for (first, why) in &report.damaged {
                    println!("DAMAGED  segment starting at {first}: {why}");
                }
            }
            anyhow::ensure!(report.is_sound(), "the archive is not sound");
            Ok(())
        }
        ArchiveCommand::Restore { from, to } => {
            let client = startup::connect_nats(config, "xibaar-archive-restore").await?;
            let js = startup::jetstream(client);
            let report = restore::restore(&js, &archive, from, to, |last| {
                eprint!("\rrestored through sequence {last}   ");
            })
            .await?;
            eprintln!();
            println!(
                "restored {} events ({}..{}); {} were in the stream already",
                report.restored,
                report.first_sequence.unwrap_or(0),
                report.last_sequence.unwrap_or(0),
                report.already_there
            );
            Ok(())
        }
    }
}

//! `xibaar replay` (events by time range, notification, customer, device or type, as NDJSON or a
//! table) and `xibaar audit notification ID` (one notification's whole timeline).

use std::io::{IsTerminal, Write};

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use xibaar_archive::replay::{notification_timeline, replay};
use xibaar_config::Config;
use xibaar_core::NotificationId;
use xibaar_streams::replay::{Filter, Replayed};

use crate::startup;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// One stored event per line, exactly as stored.
    Ndjson,
    Table,
}

#[derive(Args)]
pub struct ReplayArgs {
    /// Events stored at or after this instant (RFC 3339).
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Events stored at or before this instant (RFC 3339).
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    #[arg(long)]
    pub notification: Option<uuid::Uuid>,
    /// A customer's devices, preferences, deliveries and the notifications naming them.
    #[arg(long)]
    pub customer: Option<String>,
    #[arg(long)]
    pub device: Option<String>,
    /// Event type, e.g. delivery.failed (repeatable).
    #[arg(long = "type")]
    pub types: Vec<String>,
    #[arg(long, value_enum, default_value = "ndjson")]
    pub format: Format,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Accepted → fan-out → each device's outcome, with attempts.
    Notification {
        id: uuid::Uuid,
        /// The events as a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn short(v: &Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_default()
}

/// What the table shows of an event besides time and type.
fn detail(event: &Value) -> String {
    let d = &event["data"];
    match event["type"].as_str().unwrap_or_default() {
        "notification.accepted" | "notification.scheduled" => format!(
            "{} {} audience {}",
            short(&d["priority"]),
            serde_json::to_string(&d["content"]["title"]).unwrap_or_default(),
            d["audience"]
        ),
        "notification.fanned_out" => format!("{} devices targeted", d["targeted"]),
        "delivery.succeeded" => succeeded(d),
        "delivery.failed" => format!(
            "attempt {}: {} {}",
            d["attempt"],
            short(&d["reason"]),
            short(&d["error_code"])
        ),
        "delivery.expired" => format!("attempt {}: TTL passed", d["attempt"]),
        "delivery.topic" => format!(
            "attempt {}: {} to {}",
            d["attempt"],
            short(&d["outcome"]),
            d["target"]
        ),
        "device.registered" => format!("{} app {}", short(&d["platform"]), short(&d["app_id"])),
        "device.token_invalidated" => short(&d["error_code"]),
        "preferences.changed" => d["categories"].to_string(),
        _ => String::new(),
    }
}

/// A device's success: its own event's data, or its line of a page of successes.
fn succeeded(device: &Value) -> String {
    format!(
        "attempt {}: FCM {}",
        device["attempt"],
        short(&device["fcm_message_id"])
    )
}

fn table(events: &[Value]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(["occurred at", "event", "device", "customer", "detail"]);
    for e in events {
        // A page of successes: a row for each of its devices.
        if let Some(devices) = e["data"]["devices"].as_array() {
            for d in devices {
                table.add_row([
                    short(&e["occurred_at"]),
                    short(&e["type"]),
                    short(&d["device_id"]),
                    short(&d["customer_id"]),
                    succeeded(d),
                ]);
            }
            continue;
        }
        table.add_row([
            short(&e["occurred_at"]),
            short(&e["type"]),
            short(&e["data"]["device_id"]),
            short(&e["data"]["customer_id"]),
            detail(e),
        ]);
    }
    table
}

pub async fn run_replay(config: &Config, args: ReplayArgs) -> anyhow::Result<()> {
    let client = startup::connect_nats(config, "xibaar-replay").await?;
    let js = startup::jetstream(client);
    let filter = Filter {
        since: args.since,
        until: args.until,
        notification: args.notification.map(NotificationId),
        customer: args.customer,
        device: args.device,
        types: args.types,
        from_sequence: None,
    };
    let archive = super::archive::optional_store(config)?;
    // Large writes: a replay of millions of events is mostly this copy.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    let mut rows = Vec::new();
    let show_progress = std::io::stderr().is_terminal();
    let format = args.format;
    let matched = replay(
        &js,
        archive.as_ref(),
        &filter,
        |r: Replayed| match format {
            Format::Ndjson => {
                out.write_all(&r.raw)?;
                out.write_all(b"\n")
            }
            Format::Table => {
                rows.push(r.into_event());
                Ok(())
            }
        },
        |read, sequence, head| {
            if show_progress {
                eprint!("\rreplaying: {read} events read, sequence {sequence} of {head}   ");
            }
        },
    )
    .await?;
    if show_progress {
        eprintln!();
    }
    if let Format::Table = format {
        writeln!(out, "{}", table(&rows))?;
    }
    out.flush()?;
    tracing::info!(matched, "replay finished");
    Ok(())
}

pub async fn run_audit(config: &Config, command: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::Notification { id, json } = command;
    let client = startup::connect_nats(config, "xibaar-audit").await?;
    let js = startup::jetstream(client);
    let archive = super::archive::optional_store(config)?;
    let events = notification_timeline(&js, archive.as_ref(), NotificationId(id)).await?;
    if events.is_empty() {
        anyhow::bail!("no events of notification {id}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&events)?);
    } else {
        println!("{}", table(&events));
    }
    Ok(())
}

//! `xibaar send`: a back-office send through the API, optionally waiting for the outcome.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use xibaar_config::Config;

use super::mint_token;

#[derive(Args)]
pub struct SendArgs {
    /// Customer ids to notify (repeatable); with --device, the device's customer.
    #[arg(long = "customer", conflicts_with_all = ["everyone", "topic", "condition"])]
    pub customers: Vec<String>,
    /// One device of the customer given with --customer (a device id names a phone within its
    /// customer).
    #[arg(long, requires = "customers", conflicts_with_all = ["everyone", "topic", "condition"])]
    pub device: Option<String>,
    /// Every active device (with --category: every customer opted in to it).
    #[arg(long, conflicts_with_all = ["topic", "condition"])]
    pub everyone: bool,
    /// What it is about: billing, outage, prepaid or marketing; customers opted out are skipped.
    #[arg(long)]
    pub category: Option<String>,
    /// An FCM topic of the app given with --app-id (one FCM request).
    #[arg(long, requires = "app_id", conflicts_with = "condition")]
    pub topic: Option<String>,
    /// An FCM condition such as "'a' in topics && !('b' in topics)", with --app-id.
    #[arg(long, requires = "app_id")]
    pub condition: Option<String>,
    /// The Firebase app whose topic is meant.
    #[arg(long)]
    pub app_id: Option<String>,
    #[arg(long, default_value = "normal")]
    pub priority: String,
    #[arg(long)]
    pub title: String,
    #[arg(long, default_value = "")]
    pub body: String,
    /// Data for the app as key=value (repeatable).
    #[arg(long = "data", value_parser = parse_pair)]
    pub data: Vec<(String, String)>,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// The API's base URL; defaults to http://<api.listen>.
    #[arg(long)]
    pub api_url: Option<String>,
    /// Wait until every targeted device has an outcome, and print the counts.
    #[arg(long)]
    pub wait: bool,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

pub async fn run(config: &Config, args: SendArgs) -> anyhow::Result<()> {
    let mut category = args.category.clone();
    let audience = if let Some(topic) = &args.topic {
        json!({ "kind": "topic", "app_id": args.app_id, "topic": topic })
    } else if let Some(condition) = &args.condition {
        json!({ "kind": "condition", "app_id": args.app_id, "condition": condition })
    } else if args.everyone {
        match category.take() {
            Some(category) => json!({ "kind": "category", "category": category }),
            None => json!({ "kind": "everyone" }),
        }
    } else if let Some(device) = &args.device {
        let [customer] = args.customers.as_slice() else {
            bail!("--device names a phone of one customer: give exactly one --customer with it");
        };
        json!({ "kind": "device", "customer_id": customer, "device_id": device })
    } else if !args.customers.is_empty() {
        json!({ "kind": "customers", "customer_ids": args.customers })
    } else {
        bail!(
            "say who to notify: --customer ID (repeatable), --customer ID --device ID, --everyone, --topic or --condition"
        );
    };
    let data: serde_json::Map<String, Value> = args
        .data
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let mut body = json!({
        "priority": args.priority,
        "audience": audience,
        "content": { "title": args.title, "body": args.body, "data": data },
    });
    if let Some(category) = category {
        body["category"] = Value::String(category);
    }
    let token = mint_token(
        config,
        "xibaar-cli",
        &["notifications:send", "notifications:read"],
        Duration::from_secs(600),
    )?;
    let base = args
        .api_url
        .unwrap_or_else(|| format!("http://{}", config.api.listen));
    let http = reqwest::Client::new();
    let mut request = http
        .post(format!("{base}/v1/notifications"))
        .bearer_auth(&token)
        .json(&body);
    if let Some(key) = &args.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("calling {base}"))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "the API answered {status}: {}",
            serde_json::to_string_pretty(&answer)?
        );
    }
    let id = answer["notification_id"]
        .as_str()
        .context("no notification_id in the answer")?
        .to_owned();
    println!("accepted notification {id}");
    if !args.wait {
        return Ok(());
    }
    let started = Instant::now();
    loop {
        let response = http
            .get(format!("{base}/v1/notifications/{id}"))
            .bearer_auth(&token)
            .send()
            .await?;
        if response.status().is_success() {
            let status: Value = response.json().await?;
            if status["status"] == "completed" {
                println!(
                    "completed in {:.1?}: targeted {}, sent {}, failed {}, invalid tokens {}",
                    started.elapsed(),
                    status["targeted"],
                    status["sent"],
                    status["failed"],
                    status["invalid"]
                );
                return Ok(());
            }
        }
        if started.elapsed() > args.timeout {
            bail!(
                "notification {id} was not completed within {:?}",
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

//! The worked examples of `deploy/sources.example.toml` are valid: the configuration loads,
//! every template names a column its query returns (the `AS` names of its select list), and a
//! row of plausible values becomes a message in every language.

use chrono::Utc;
use xibaar_sources::{Plan, emit, row::Row, row::Value};

fn example() -> xibaar_config::Config {
    let path = xibaar_testkit::workspace_root().join("deploy/sources.example.toml");
    let toml = std::fs::read_to_string(&path).unwrap();
    xibaar_config::Config::from_toml(&toml).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The columns a query's select list names with `AS`.
fn returned_columns(query: &str) -> Vec<String> {
    const TYPES: [&str; 4] = ["bigint", "binary", "int", "char"];
    let select = &query[..query.find("FROM").expect("a FROM")];
    select
        .split(" AS ")
        .skip(1)
        .map(|rest| {
            rest.trim_start()
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap()
                .to_owned()
        })
        .filter(|name| !TYPES.contains(&name.to_lowercase().as_str()))
        .collect()
}

fn plausible(column: &str) -> Value {
    match column {
        c if c.ends_with("_at") || c.ends_with("_date") => {
            Value::Text("2026-12-15T09:30:00".into())
        }
        "customer_id" => Value::Text("100234567".into()),
        "commune" => Value::Text("Pikine".into()),
        "period" => Value::Text("2026-11".into()),
        "meter" => Value::Text("14250018877".into()),
        "contract" => Value::Text("prepaid".into()),
        "language" => Value::Text("wo".into()),
        "reason" | "channel" | "zone" => Value::Text("text".into()),
        _ => Value::Int(1_234_567),
    }
}

#[test]
fn the_worked_examples_bind_and_render_in_every_language() {
    let config = example();
    let names: Vec<&str> = config.sources.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "bill_issued",
            "customers",
            "payment_received",
            "planned_outage",
            "prepaid_credit_low"
        ]
    );
    for (name, source) in &config.sources {
        let mut plan = Plan::new(name, source).unwrap_or_else(|e| panic!("{e}"));
        let columns = returned_columns(&source.query);
        plan.bind(&columns)
            .unwrap_or_else(|e| panic!("{e} (columns {columns:?})"));
        let row = Row(columns.iter().map(|c| plausible(c)).collect());
        let emitted =
            emit::emit(&plan, &row, Utc::now()).unwrap_or_else(|e| panic!("source {name}: {e}"));
        match emitted {
            emit::Emitted::Notification(encoded) => {
                assert!(plan.notifications.is_some(), "{name}");
                // Read back as a page of one, as the dispatcher reads it.
                let page = emit::page(vec![encoded.clone()], false).unwrap();
                let command: xibaar_core::Command = serde_json::from_slice(&page.payload).unwrap();
                let send = &command.notifications()[0];
                assert_eq!(send.notification_id, encoded.id, "{name}");
                let content = serde_json::to_value(&send.content).unwrap();
                assert_eq!(content["language"], "fr", "{name}");
                assert!(
                    content["translations"]["wo"]["body"].is_string(),
                    "{name}: {content}"
                );
                assert!(
                    !content["body"].as_str().unwrap().contains('{'),
                    "{name}: every placeholder filled: {content}"
                );
            }
            emit::Emitted::Event(message) => {
                assert!(plan.notifications.is_none(), "{name}");
                let payload: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
                assert_eq!(payload["type"], "customer.attributes_changed");
            }
        }
    }
    // The connections' credentials come from secret files, never from the file itself.
    for (name, connection) in &config.sql {
        assert!(
            connection.password.is_none() && connection.password_file.is_some(),
            "{name}"
        );
        assert_ne!(
            connection.encrypt,
            xibaar_config::Encrypt::DangerPlaintext,
            "{name}"
        );
    }
}

#[test]
fn a_query_whose_select_list_is_read_is_read_right() {
    assert_eq!(
        returned_columns("SELECT TOP (@batch) CAST(x.A AS bigint) AS a, x.B AS b FROM t"),
        ["a", "b"]
    );
}

//! The Prometheus rules and the Grafana dashboard in `deploy/`: valid, unit-tested, and about
//! metrics the code really exports.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn promtool() -> PathBuf {
    let installed = repo().join(".xibaar/tools/bin/promtool");
    assert!(
        installed.exists(),
        "promtool is missing: run scripts/install-tools (scripts/test does)"
    );
    installed
}

fn run_promtool(args: &[&str]) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(repo().join("deploy/prometheus"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    run_promtool(&["check", "rules", "alerts.yml"]);
    run_promtool(&["test", "rules", "alerts.test.yml"]);
}

/// Metric names (`xibaar_…`, `jetstream_…`) in `text`, histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let starts = (rest.starts_with("xibaar_") || rest.starts_with("jetstream_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts {
            let len = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..len];
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(name.to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

fn exported_by_the_code() -> String {
    let mut all = String::new();
    let mut dirs = vec![repo().join("crates")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.ends_with("tests") {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                all.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    all
}

#[test]
fn dashboard_and_alerts_use_only_metrics_the_code_exports() {
    let dashboard = std::fs::read_to_string(repo().join("deploy/grafana/xibaar.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let panels = parsed["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        assert!(
            !panel["targets"].as_array().unwrap().is_empty(),
            "{}",
            panel["title"]
        );
    }
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let code = exported_by_the_code();
    let mut used = metric_names(&dashboard);
    used.extend(metric_names(&rules));
    for wanted in [
        "xibaar_consumer_seconds_behind",
        "xibaar_dlq_depth",
        "xibaar_fcm_responses_total",
        "xibaar_fcm_circuit_state",
        "xibaar_projection_gap_events",
    ] {
        assert!(used.contains(wanted), "{wanted} is not watched");
    }
    let unknown: Vec<_> = used
        .iter()
        .filter(|name| !code.contains(&format!("\"{name}\"")))
        .collect();
    assert!(unknown.is_empty(), "not exported by any role: {unknown:?}");
}

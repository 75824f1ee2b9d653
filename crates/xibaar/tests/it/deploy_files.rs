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

/// A tool of the tools venv (`deploy/tools-requirements.txt`).
fn venv_tool(name: &str) -> PathBuf {
    let tools = xibaar_testkit::Tools::get().unwrap();
    tools.python.with_file_name(name)
}

fn run_tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(venv_tool(name))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} {args:?} failed:\n{text}");
    text
}

#[test]
fn the_dockerfile_passes_hadolint() {
    run_tool("hadolint", &["deploy/docker/Dockerfile"]);
}

#[test]
fn every_kubernetes_manifest_is_valid_for_a_current_kubernetes() {
    let mut manifests: Vec<String> = std::fs::read_dir(repo().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // Helm values are the chart's input, not a manifest.
        .filter(|f| f.ends_with(".yaml") && f != "nats-values.yaml")
        .map(|f| format!("deploy/k8s/{f}"))
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 5, "{manifests:?}");
    let mut args = vec!["--strict", "--kubernetes-version", "1.33.0"];
    args.extend(manifests.iter().map(String::as_str));
    let text = run_tool("kubernetes-validate", &args);
    for kind in [
        "configmap/xibaar",
        "deployment/xibaar-api",
        "deployment/xibaar-dispatcher",
        "deployment/xibaar-projector",
        "poddisruptionbudget/xibaar-api",
        "horizontalpodautoscaler/xibaar-api",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind}:\n{text}"
        );
    }
}

#[test]
fn every_yaml_file_of_the_deployment_is_yamllint_clean() {
    run_tool(
        "yamllint",
        &["--strict", "-c", "deploy/yamllint.yaml", "deploy"],
    );
}

#[test]
fn the_compose_files_parse_and_run_only_roles_and_commands_the_binary_has() {
    let python = xibaar_testkit::Tools::get().unwrap().python.clone();
    let script = r#"
import json, sys, yaml
out = {}
for path in sys.argv[1:]:
    with open(path) as f:
        out[path] = yaml.safe_load(f)
print(json.dumps(out))
"#;
    let files = ["deploy/compose/server.yaml", "deploy/compose/services.yaml"];
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(files)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let server = &parsed["deploy/compose/server.yaml"]["services"];
    for role in ["api", "dispatcher", "projector", "archiver", "sources"] {
        let command = server[role]["command"][0].as_str().unwrap();
        assert_eq!(command, role);
        let help = Command::new(env!("CARGO_BIN_EXE_xibaar"))
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(help.status.success(), "xibaar {command} is not a command");
        // The YAML anchor gives every role the image, the settings file and the secrets.
        assert_eq!(server[role]["env_file"], "xibaar.env", "{role}");
        assert_eq!(server[role]["read_only"], true, "{role}");
    }
    assert!(
        server["nats"]["image"]
            .as_str()
            .unwrap()
            .starts_with("nats:2.15")
    );
    let services = &parsed["deploy/compose/services.yaml"]["services"];
    for service in ["postgres", "minio", "prometheus", "grafana"] {
        assert!(services[service].is_object(), "{service}");
    }
    // Every file the compose files mount from the repository exists.
    for (file, doc) in parsed.as_object().unwrap() {
        let dir = repo().join(file).parent().unwrap().to_owned();
        for service in doc["services"].as_object().unwrap().values() {
            for volume in service["volumes"].as_array().into_iter().flatten() {
                let source = volume.as_str().unwrap().split(':').next().unwrap();
                if source.starts_with('.') && !source.ends_with("xibaar.toml") {
                    assert!(dir.join(source).exists(), "{file} mounts {source}");
                }
            }
        }
    }
}

/// The image is built and smoke-tested where a container engine runs; this machine's kind has
/// a Docker client but no engine, and then the test says so and checks nothing more.
#[test]
fn the_image_builds_and_runs_read_only_where_a_container_engine_runs() {
    let engine = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine {
        eprintln!(
            "no container engine here: the image is not built (hadolint checked the Dockerfile)"
        );
        return;
    }
    let out = Command::new("docker")
        .args([
            "build",
            "-f",
            "deploy/docker/Dockerfile",
            "-t",
            "xibaar:test",
            ".",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = Command::new("docker")
        .args(["run", "--rm", "--read-only", "xibaar:test", "--version"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("xibaar "),
        "{}",
        String::from_utf8_lossy(&version.stderr)
    );
}

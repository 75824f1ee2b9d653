//! What each process tells the ops page about itself: its own counters and gauges, read from
//! the Prometheus recorder every role already feeds, so the page and `/metrics` never disagree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The core-NATS subject a process publishes its heartbeat on (no stream stores it: only the
/// latest matters, and a process that stops simply falls silent).
pub fn heartbeat_subject(instance: &str) -> String {
    format!("xibaar.ops.heartbeat.{instance}")
}

/// Every instance's heartbeats.
pub const HEARTBEAT_SUBJECTS: &str = "xibaar.ops.heartbeat.>";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Unique per process run: a restarted process is a new instance, so its counters starting
    /// again from zero never look like a negative rate.
    pub instance: String,
    pub role: String,
    /// Unix time in seconds when the samples were read.
    pub at: f64,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// This process's counters and gauges whose names start with one of `prefixes` (histograms,
/// summaries and untyped samples are left out).
pub fn samples(prefixes: &[&str]) -> Vec<Sample> {
    parse(&crate::metrics_handle().render(), prefixes)
}

/// The counters and gauges of a Prometheus text exposition. A parser crate is used rather than
/// splitting lines: label values may hold spaces, commas and escaped quotes.
pub fn parse(text: &str, prefixes: &[&str]) -> Vec<Sample> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let Ok(scrape) = prometheus_parse::Scrape::parse(lines) else {
        return Vec::new();
    };
    scrape
        .samples
        .into_iter()
        .filter(|s| prefixes.iter().any(|p| s.metric.starts_with(p)))
        .filter_map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => return None,
            };
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Some(Sample {
                name: s.metric,
                labels,
                value,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_with_their_labels_are_read_and_histograms_left_out() {
        let text = r#"# TYPE xibaar_fcm_responses_total counter
xibaar_fcm_responses_total{project="p 1",code="OK"} 41
xibaar_fcm_responses_total{project="p 1",code="UNAVAILABLE"} 2
# TYPE xibaar_fcm_circuit_state gauge
xibaar_fcm_circuit_state{project="p 1"} 2
# TYPE xibaar_projector_batch_seconds histogram
xibaar_projector_batch_seconds_bucket{le="0.1"} 3
xibaar_projector_batch_seconds_sum 0.2
xibaar_projector_batch_seconds_count 3
# TYPE other_total counter
other_total 9
"#;
        let samples = parse(text, &["xibaar_"]);
        let summary: Vec<(String, Option<String>, f64)> = samples
            .iter()
            .map(|s| (s.name.clone(), s.labels.get("code").cloned(), s.value))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("xibaar_fcm_responses_total".into(), Some("OK".into()), 41.0),
                (
                    "xibaar_fcm_responses_total".into(),
                    Some("UNAVAILABLE".into()),
                    2.0
                ),
                ("xibaar_fcm_circuit_state".into(), None, 2.0),
            ]
        );
        assert_eq!(samples[2].labels["project"], "p 1");
    }
}

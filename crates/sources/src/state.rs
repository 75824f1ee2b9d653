//! What a source keeps in `XIBAAR_SOURCES`: its position (`position.<source>`: the watermark
//! and the batch in flight, changed by compare-and-set), its status (`status.<source>`, for
//! `xibaar sources status` and the ops page) and an operator's pause (`paused.<source>`).

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use xibaar_streams::names::SOURCES_BUCKET;

/// The watermark, and the batch whose commands may be partly stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The watermark of the last row whose commands JetStream holds; `None` before the first.
    pub watermark: Option<Vec<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<InFlight>,
    /// Reading through the rows present at the first start (`start = "latest"`), sending none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipping: bool,
}

/// A batch being published: rows above the position's watermark up to `through`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    pub through: Vec<i64>,
    pub rows: u32,
    pub started_at: DateTime<Utc>,
}

/// A source's state as an operator reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceStatus {
    /// `running`, `waiting` (retrying after a passing error), `paused` (by an operator or by
    /// an error that needs one), `starting`.
    pub state: String,
    pub kind: String,
    /// Rows read and commands or events stored since the role started.
    pub rows_read: u64,
    pub emitted: u64,
    /// Rows that could not become a notification (dead-lettered).
    pub rejected: u64,
    /// Errors by class (`transient`, `access`, `query`) since the role started.
    pub errors: std::collections::BTreeMap<String, u64>,
    pub last_error: Option<String>,
    pub watermark: Option<Vec<i64>>,
    /// The time of the newest row read, and now minus it.
    pub newest_row_at: Option<DateTime<Utc>>,
    pub lag_seconds: Option<f64>,
    pub updated_at: Option<DateTime<Utc>>,
}

pub async fn bucket(js: &jetstream::Context) -> Result<kv::Store, String> {
    js.get_key_value(SOURCES_BUCKET)
        .await
        .map_err(|e| format!("opening {SOURCES_BUCKET}: {e}"))
}

fn position_key(source: &str) -> String {
    format!("position.{source}")
}

fn status_key(source: &str) -> String {
    format!("status.{source}")
}

fn paused_key(source: &str) -> String {
    format!("paused.{source}")
}

/// The position and its revision (0: never written).
pub async fn position(store: &kv::Store, source: &str) -> Result<(Position, u64), String> {
    match store.entry(position_key(source)).await {
        Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
            let position = serde_json::from_slice(&entry.value)
                .map_err(|e| format!("position of {source} is unreadable: {e}"))?;
            Ok((position, entry.revision))
        }
        Ok(_) => Ok((Position::default(), 0)),
        Err(e) => Err(format!("reading the position of {source}: {e}")),
    }
}

/// Writes `position` if the stored one is still at `revision`; the new revision.
pub async fn record(
    store: &kv::Store,
    source: &str,
    position: &Position,
    revision: u64,
) -> Result<u64, String> {
    let value = Bytes::from(serde_json::to_vec(position).expect("a position serializes"));
    let key = position_key(source);
    let written = if revision == 0 {
        store.create(&key, value).await.map_err(|e| e.to_string())
    } else {
        store
            .update(&key, value, revision)
            .await
            .map_err(|e| e.to_string())
    };
    written.map_err(|e| {
        format!("recording the position of {source} (another sources role may run it): {e}")
    })
}

pub async fn publish_status(store: &kv::Store, source: &str, status: &SourceStatus) {
    let value = Bytes::from(serde_json::to_vec(status).expect("a status serializes"));
    if let Err(e) = store.put(status_key(source), value).await {
        tracing::debug!(source, error = %e, "status not recorded");
    }
}

/// Whether an operator paused `source`, and why.
pub async fn paused(store: &kv::Store, source: &str) -> Result<Option<String>, String> {
    match store.entry(paused_key(source)).await {
        Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
            Ok(Some(String::from_utf8_lossy(&entry.value).into_owned()))
        }
        Ok(_) => Ok(None),
        Err(e) => Err(format!("reading whether {source} is paused: {e}")),
    }
}

/// Pauses `source` with `reason` (`Some`) or resumes it (`None`).
pub async fn set_paused(
    store: &kv::Store,
    source: &str,
    reason: Option<&str>,
) -> Result<(), String> {
    match reason {
        Some(reason) => store
            .put(paused_key(source), Bytes::from(reason.to_owned()))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        None => store
            .delete(paused_key(source))
            .await
            .map_err(|e| e.to_string()),
    }
}

/// Every source's status, by name.
///
/// The names come from the stream's own subject counts, one request answered from the stream
/// state. `kv::Store::keys` is not used: it lists through a last-per-subject consumer, which
/// misses a key rewritten while it lists (a running source rewrites its status every poll;
/// about one listing in sixty missed it under a 5 ms rewrite).
pub async fn statuses(
    js: &jetstream::Context,
) -> Result<std::collections::BTreeMap<String, SourceStatus>, String> {
    let store = bucket(js).await?;
    let prefix = format!("$KV.{SOURCES_BUCKET}.{}", status_key(""));
    let mut subjects = store
        .stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .map_err(|e| format!("listing {SOURCES_BUCKET}: {e}"))?;
    let mut names = Vec::new();
    while let Some(subject) = subjects.next().await {
        let (subject, _) = subject.map_err(|e| format!("listing {SOURCES_BUCKET}: {e}"))?;
        if let Some(source) = subject.strip_prefix(&prefix) {
            names.push(source.to_owned());
        }
    }
    let mut out = std::collections::BTreeMap::new();
    for source in names {
        let value = store
            .get(status_key(&source))
            .await
            .map_err(|e| format!("reading the status of {source}: {e}"))?;
        // `None`: deleted since it was listed.
        if let Some(value) = value {
            let status = serde_json::from_slice(&value)
                .map_err(|e| format!("the status of {source} does not parse: {e}"))?;
            out.insert(source, status);
        }
    }
    Ok(out)
}

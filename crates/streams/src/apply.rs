//! `xibaar streams apply`: make the server's streams and consumers match the definitions.
//! Creating is idempotent; a changed setting is updated in place; a change JetStream cannot make
//! in place (retention, storage, a consumer's ack policy) is refused with the field named,
//! because it would need the stream deleted and its history lost.

use std::fmt;

use async_nats::jetstream::{
    self, ErrorCode,
    context::{ConsumerInfoErrorKind, GetStreamErrorKind},
};
use serde_json::Value;

use crate::definitions::{Definitions, StreamDef};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created { name: String },
    Updated { name: String, fields: Vec<String> },
    Unchanged { name: String },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Created { name } => write!(f, "{name}: created"),
            Change::Updated { name, fields } => write!(f, "{name}: updated {}", fields.join(", ")),
            Change::Unchanged { name } => write!(f, "{name}: unchanged"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "{name}: `{field}` cannot change from {current} to {wanted} on an existing {kind}; \
         it must be deleted and recreated, which loses its messages"
    )]
    Incompatible {
        kind: &'static str,
        name: String,
        field: &'static str,
        current: Value,
        wanted: Value,
    },
    #[error("{name}: {action} failed: {source}")]
    Server {
        name: String,
        action: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ApplyError {
    /// Whether waiting may help: JetStream unreachable, a leader being elected, a cluster not
    /// formed yet (too few servers for the replicas) all pass; a change JetStream can never
    /// make does not. A server's refusal is taken as passing: a definition it refuses for good
    /// then keeps the role from starting (its startup probe fails) and is logged every 5 s.
    pub fn is_transient(&self) -> bool {
        matches!(self, ApplyError::Server { .. })
    }
}

fn server_err<E: std::error::Error + Send + Sync + 'static>(
    name: &str,
    action: &'static str,
) -> impl FnOnce(E) -> ApplyError {
    let name = name.to_owned();
    move |e| ApplyError::Server {
        name,
        action,
        source: Box::new(e),
    }
}

/// The declared keys whose value differs on the server, or the refusal when one of them is
/// a setting JetStream cannot change in place.
fn changed_fields<T: serde::Serialize>(
    kind: &'static str,
    name: &str,
    declared: &serde_json::Map<String, Value>,
    current: &T,
    immutable: &[&'static str],
) -> Result<Vec<String>, ApplyError> {
    let current = serde_json::to_value(current).unwrap_or(Value::Null);
    let mut changed = Vec::new();
    for (key, wanted) in declared {
        let now = current.get(key).cloned().unwrap_or(Value::Null);
        if now == *wanted {
            continue;
        }
        if let Some(field) = immutable.iter().find(|f| **f == key) {
            return Err(ApplyError::Incompatible {
                kind,
                name: name.to_owned(),
                field,
                current: now,
                wanted: wanted.clone(),
            });
        }
        changed.push(key.clone());
    }
    Ok(changed)
}

/// Applies every stream, then its consumers, in file order.
#[tracing::instrument(skip_all)]
pub async fn apply(js: &jetstream::Context, defs: &Definitions) -> Result<Vec<Change>, ApplyError> {
    let mut changes = Vec::new();
    for def in &defs.streams {
        changes.push(apply_stream(js, def).await?);
        let stream = js
            .get_stream(&def.config.name)
            .await
            .map_err(server_err(&def.config.name, "reading the stream"))?;
        for consumer in &def.consumers {
            let name = format!("{}.{}", def.config.name, consumer.name());
            let change = match stream.consumer_info(consumer.name()).await {
                Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
                    stream
                        .create_consumer(consumer.config.clone())
                        .await
                        .map_err(server_err(&name, "creating the consumer"))?;
                    Change::Created { name }
                }
                Err(e) => return Err(server_err(&name, "reading the consumer")(e)),
                Ok(info) => {
                    let immutable = ["ack_policy", "deliver_policy", "durable_name"];
                    let fields = changed_fields(
                        "consumer",
                        &name,
                        &consumer.declared,
                        &info.config,
                        &immutable,
                    )?;
                    if fields.is_empty() {
                        Change::Unchanged { name }
                    } else {
                        stream
                            .update_consumer(consumer.config.clone())
                            .await
                            .map_err(server_err(&name, "updating the consumer"))?;
                        Change::Updated { name, fields }
                    }
                }
            };
            tracing::info!(%change, "consumer applied");
            changes.push(change);
        }
    }
    Ok(changes)
}

async fn apply_stream(js: &jetstream::Context, def: &StreamDef) -> Result<Change, ApplyError> {
    let name = def.config.name.clone();
    let change = match js.get_stream(&name).await {
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(ref je)
                if je.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            js.create_stream(def.config.clone())
                .await
                .map_err(server_err(&name, "creating the stream"))?;
            Change::Created { name }
        }
        Err(e) => return Err(server_err(&name, "reading the stream")(e)),
        Ok(stream) => {
            let immutable = ["retention", "storage", "name"];
            let fields = changed_fields(
                "stream",
                &name,
                &def.declared,
                &stream.cached_info().config,
                &immutable,
            )?;
            if fields.is_empty() {
                Change::Unchanged { name }
            } else {
                js.update_stream(def.config.clone())
                    .await
                    .map_err(server_err(&name, "updating the stream"))?;
                Change::Updated { name, fields }
            }
        }
    };
    tracing::info!(%change, "stream applied");
    Ok(change)
}

//! The stream and consumer files of `streams/`, in the JetStream API's own JSON shape (the
//! `nats stream add --config` / `nats consumer add --config` format). They are compiled into
//! the binary so a deployment needs no extra files; `--dir` loads an edited copy instead.

use std::path::{Path, PathBuf};

use async_nats::jetstream::{consumer, stream};
use serde_json::Value;

/// One stream with the consumers declared on it.
#[derive(Debug, Clone)]
pub struct StreamDef {
    pub config: stream::Config,
    /// The keys the file sets; only these are compared with the server's config.
    pub declared: serde_json::Map<String, Value>,
    pub consumers: Vec<ConsumerDef>,
}

#[derive(Debug, Clone)]
pub struct ConsumerDef {
    pub config: consumer::pull::Config,
    pub declared: serde_json::Map<String, Value>,
}

impl ConsumerDef {
    pub fn name(&self) -> &str {
        self.config.durable_name.as_deref().unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct Definitions {
    pub streams: Vec<StreamDef>,
}

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {source}")]
    Parse {
        file: String,
        source: serde_json::Error,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

/// `(file name, contents)` of the definitions shipped with this build.
const BUILTIN_STREAMS: [(&str, &str); 12] = [
    (
        "XIBAAR_CMD_URGENT.json",
        include_str!("../../../streams/XIBAAR_CMD_URGENT.json"),
    ),
    (
        "XIBAAR_CMD_HIGH.json",
        include_str!("../../../streams/XIBAAR_CMD_HIGH.json"),
    ),
    (
        "XIBAAR_CMD_NORMAL.json",
        include_str!("../../../streams/XIBAAR_CMD_NORMAL.json"),
    ),
    (
        "XIBAAR_CMD_LOW.json",
        include_str!("../../../streams/XIBAAR_CMD_LOW.json"),
    ),
    (
        "XIBAAR_DELIVERIES.json",
        include_str!("../../../streams/XIBAAR_DELIVERIES.json"),
    ),
    (
        "XIBAAR_EVENTS.json",
        include_str!("../../../streams/XIBAAR_EVENTS.json"),
    ),
    (
        "KV_XIBAAR_SENT.json",
        include_str!("../../../streams/KV_XIBAAR_SENT.json"),
    ),
    (
        "KV_XIBAAR_FANOUT.json",
        include_str!("../../../streams/KV_XIBAAR_FANOUT.json"),
    ),
    (
        "KV_XIBAAR_IDEMPOTENCY.json",
        include_str!("../../../streams/KV_XIBAAR_IDEMPOTENCY.json"),
    ),
    (
        "KV_XIBAAR_ARCHIVE.json",
        include_str!("../../../streams/KV_XIBAAR_ARCHIVE.json"),
    ),
    (
        "KV_XIBAAR_SOURCES.json",
        include_str!("../../../streams/KV_XIBAAR_SOURCES.json"),
    ),
    (
        "XIBAAR_DLQ.json",
        include_str!("../../../streams/XIBAAR_DLQ.json"),
    ),
];

const BUILTIN_CONSUMERS: [(&str, &str); 8] = [
    (
        "XIBAAR_CMD_URGENT.dispatcher.json",
        include_str!("../../../streams/consumers/XIBAAR_CMD_URGENT.dispatcher.json"),
    ),
    (
        "XIBAAR_CMD_HIGH.dispatcher.json",
        include_str!("../../../streams/consumers/XIBAAR_CMD_HIGH.dispatcher.json"),
    ),
    (
        "XIBAAR_CMD_NORMAL.dispatcher.json",
        include_str!("../../../streams/consumers/XIBAAR_CMD_NORMAL.dispatcher.json"),
    ),
    (
        "XIBAAR_CMD_LOW.dispatcher.json",
        include_str!("../../../streams/consumers/XIBAAR_CMD_LOW.dispatcher.json"),
    ),
    (
        "XIBAAR_DELIVERIES.sender-urgent.json",
        include_str!("../../../streams/consumers/XIBAAR_DELIVERIES.sender-urgent.json"),
    ),
    (
        "XIBAAR_DELIVERIES.sender-high.json",
        include_str!("../../../streams/consumers/XIBAAR_DELIVERIES.sender-high.json"),
    ),
    (
        "XIBAAR_DELIVERIES.sender-normal.json",
        include_str!("../../../streams/consumers/XIBAAR_DELIVERIES.sender-normal.json"),
    ),
    (
        "XIBAAR_DELIVERIES.sender-low.json",
        include_str!("../../../streams/consumers/XIBAAR_DELIVERIES.sender-low.json"),
    ),
];

fn parse_object(file: &str, text: &str) -> Result<serde_json::Map<String, Value>, DefinitionError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(DefinitionError::Invalid {
            file: file.to_owned(),
            message: "must be a JSON object".into(),
        }),
        Err(source) => Err(DefinitionError::Parse {
            file: file.to_owned(),
            source,
        }),
    }
}

fn typed<T: serde::de::DeserializeOwned>(
    file: &str,
    map: &serde_json::Map<String, Value>,
) -> Result<T, DefinitionError> {
    serde_json::from_value(Value::Object(map.clone())).map_err(|source| DefinitionError::Parse {
        file: file.to_owned(),
        source,
    })
}

impl Definitions {
    /// The definitions compiled into this build (the repository's `streams/`).
    pub fn builtin() -> Self {
        Self::from_files(&BUILTIN_STREAMS, &BUILTIN_CONSUMERS)
            .expect("the shipped stream definitions are valid (checked by tests)")
    }

    /// Reads `<dir>/*.json` (streams) and `<dir>/consumers/<STREAM>.<durable>.json`.
    pub fn load_dir(dir: &Path) -> Result<Self, DefinitionError> {
        let read_json_files = |dir: PathBuf| -> Result<Vec<(String, String)>, DefinitionError> {
            let entries = std::fs::read_dir(&dir).map_err(|source| DefinitionError::Read {
                path: dir.clone(),
                source,
            })?;
            let mut files = Vec::new();
            for entry in entries {
                let path = entry
                    .map_err(|source| DefinitionError::Read {
                        path: dir.clone(),
                        source,
                    })?
                    .path();
                if path.extension().is_some_and(|e| e == "json") {
                    let text =
                        std::fs::read_to_string(&path).map_err(|source| DefinitionError::Read {
                            path: path.clone(),
                            source,
                        })?;
                    let name = path.file_name().unwrap_or_default().to_string_lossy();
                    files.push((name.into_owned(), text));
                }
            }
            files.sort();
            Ok(files)
        };
        let streams = read_json_files(dir.to_owned())?;
        let consumers_dir = dir.join("consumers");
        let consumers = if consumers_dir.is_dir() {
            read_json_files(consumers_dir)?
        } else {
            Vec::new()
        };
        Self::from_owned(streams, consumers)
    }

    fn from_files(
        streams: &[(&str, &str)],
        consumers: &[(&str, &str)],
    ) -> Result<Self, DefinitionError> {
        let own = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect()
        };
        Self::from_owned(own(streams), own(consumers))
    }

    fn from_owned(
        streams: Vec<(String, String)>,
        consumers: Vec<(String, String)>,
    ) -> Result<Self, DefinitionError> {
        let mut defs = Vec::new();
        for (file, text) in &streams {
            let declared = parse_object(file, text)?;
            let config: async_nats::jetstream::stream::Config = typed(file, &declared)?;
            if file.strip_suffix(".json") != Some(config.name.as_str()) {
                return Err(DefinitionError::Invalid {
                    file: file.clone(),
                    message: format!(
                        "declares stream `{}`; the file must be named after it",
                        config.name
                    ),
                });
            }
            defs.push(StreamDef {
                config,
                declared,
                consumers: Vec::new(),
            });
        }
        for (file, text) in &consumers {
            let stream = file.split('.').next().unwrap_or_default();
            let declared = parse_object(file, text)?;
            let config: consumer::pull::Config = typed(file, &declared)?;
            let durable = config.durable_name.clone().unwrap_or_default();
            if format!("{stream}.{durable}.json") != *file {
                return Err(DefinitionError::Invalid {
                    file: file.clone(),
                    message: "a consumer file is named <STREAM>.<durable_name>.json".into(),
                });
            }
            let Some(def) = defs.iter_mut().find(|d| d.config.name == stream) else {
                return Err(DefinitionError::Invalid {
                    file: file.clone(),
                    message: format!("no stream `{stream}` is defined"),
                });
            };
            def.consumers.push(ConsumerDef { config, declared });
        }
        Ok(Self { streams: defs })
    }

    /// Sets every stream's replica count (1 for a single server, 3 on a cluster).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        for def in &mut self.streams {
            def.config.num_replicas = replicas;
            def.declared
                .insert("num_replicas".into(), Value::from(replicas));
        }
        self
    }

    /// Sets how long stream `name` keeps messages (its `max_age`).
    pub fn with_max_age(mut self, name: &str, max_age: std::time::Duration) -> Self {
        for def in self.streams.iter_mut().filter(|d| d.config.name == name) {
            def.config.max_age = max_age;
            let nanos = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
            def.declared.insert("max_age".into(), Value::from(nanos));
            // JetStream refuses a duplicate window longer than the retention: a stream cannot
            // recognise a repeat of a message it no longer keeps.
            if def.config.duplicate_window > max_age {
                def.config.duplicate_window = max_age;
                def.declared
                    .insert("duplicate_window".into(), Value::from(nanos));
            }
        }
        self
    }

    pub fn stream(&self, name: &str) -> Option<&StreamDef> {
        self.streams.iter().find(|d| d.config.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_definitions_parse_and_match_the_repository_files() {
        let builtin = Definitions::builtin();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../streams");
        let loaded = Definitions::load_dir(&dir).unwrap();
        let names = |d: &Definitions| {
            let mut v: Vec<String> = d
                .streams
                .iter()
                .flat_map(|s| {
                    std::iter::once(s.config.name.clone()).chain(
                        s.consumers
                            .iter()
                            .map(|c| format!("{}.{}", s.config.name, c.name())),
                    )
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names(&builtin),
            names(&loaded),
            "a file in streams/ is not compiled in"
        );
        assert_eq!(builtin.streams.len(), 12);
        let deliveries = builtin.stream("XIBAAR_DELIVERIES").unwrap();
        assert_eq!(deliveries.consumers.len(), 4);
    }

    #[test]
    fn a_consumer_for_an_undeclared_stream_is_refused() {
        let err = Definitions::from_files(&[], &[("NOPE.x.json", r#"{"durable_name":"x","ack_policy":"explicit","deliver_policy":"all","replay_policy":"instant"}"#)])
            .unwrap_err();
        assert!(err.to_string().contains("no stream `NOPE`"), "{err}");
    }
}

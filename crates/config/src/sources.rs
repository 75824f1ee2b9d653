//! `[sql.<name>]`: the utility's SQL Server databases; `[sources.<name>]`: what Xibaar reads
//! from them. The shapes are checked here; templates, columns and the query itself are checked
//! by the sources role at start (`xibaar_sources::plan`), which names the same keys.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::{ConfigError, Secret, secret};

/// How the connection to SQL Server is encrypted. Certificates are always verified; there is
/// no setting that trusts any certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encrypt {
    /// TDS 8.0: TLS from the first byte (SQL Server 2022 and later).
    Strict,
    /// TLS negotiated after the pre-login exchange (TDS 7.x); refused by a server without it.
    Required,
    /// No TLS at all, password included: for a server on the same host or a test server only.
    DangerPlaintext,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConnection {
    pub host: Option<String>,
    pub port: u16,
    pub database: Option<String>,
    pub user: Option<String>,
    /// Or `password_file`, or `XIBAAR_SQL__<NAME>__PASSWORD`.
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// Or an ADO.NET connection string (`Server=tcp:host,1433;Database=…;User Id=…;
    /// Password=…;Encrypt=strict`) instead of the keys above; or `ado_file`.
    pub ado: Option<Secret>,
    pub ado_file: Option<PathBuf>,
    pub encrypt: Encrypt,
    /// PEM certificates trusted for this server instead of the system's roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// The name the server's certificate carries, when it differs from `host`.
    pub hostname_in_certificate: Option<String>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for the server's next answer while a query runs; past it the connection
    /// is dropped and the poll retried.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
}

impl Default for SqlConnection {
    fn default() -> Self {
        Self {
            host: None,
            port: 1433,
            database: None,
            user: None,
            password: None,
            password_file: None,
            ado: None,
            ado_file: None,
            encrypt: Encrypt::Required,
            ca_file: None,
            hostname_in_certificate: None,
            connect_timeout: Duration::from_secs(15),
            query_timeout: Duration::from_secs(30),
        }
    }
}

/// The credentials of a connection, read once at start.
#[derive(Debug, Clone)]
pub enum SqlLogin {
    /// An ADO.NET connection string, credentials included.
    Ado(Secret),
    /// SQL Server authentication.
    Password {
        host: String,
        database: Option<String>,
        user: String,
        password: Secret,
    },
}

impl SqlConnection {
    /// The login of connection `name`, from the keys, a secret file or the environment.
    pub fn login(&self, name: &str) -> Result<SqlLogin, ConfigError> {
        let key = |k: &str| format!("sql.{name}.{k}");
        let invalid = |k: &str, message: &str| ConfigError::InvalidKey {
            key: key(k),
            message: message.to_owned(),
        };
        let ado = secret::resolve(
            "sql.<name>.ado",
            self.ado.as_ref(),
            self.ado_file.as_deref(),
        )
        .map_err(|e| invalid("ado_file", &e.to_string()))?;
        if let Some(ado) = ado {
            return Ok(SqlLogin::Ado(ado));
        }
        let host = self.host.clone().ok_or_else(|| {
            invalid(
                "host",
                "missing: give host, database, user and password, or ado",
            )
        })?;
        let user = self
            .user
            .clone()
            .ok_or_else(|| invalid("user", "missing"))?;
        let password = secret::resolve(
            "sql.<name>.password",
            self.password.as_ref(),
            self.password_file.as_deref(),
        )
        .map_err(|e| invalid("password_file", &e.to_string()))?
        .ok_or_else(|| {
            invalid(
                "password",
                &format!(
                    "missing: give password, password_file or XIBAAR_SQL__{}__PASSWORD",
                    name.to_uppercase()
                ),
            )
        })?;
        Ok(SqlLogin::Password {
            host,
            database: self.database.clone(),
            user,
            password,
        })
    }

    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("sql.{name}.{k}");
        let invalid = |k: &str, message: &str| {
            Err(ConfigError::InvalidKey {
                key: key(k),
                message: message.to_owned(),
            })
        };
        if self.ado.is_some() && self.ado_file.is_some() {
            return invalid("ado", "give one of ado and ado_file");
        }
        if self.password.is_some() && self.password_file.is_some() {
            return invalid("password", "give one of password and password_file");
        }
        let ado = self.ado.is_some() || self.ado_file.is_some();
        if ado && (self.host.is_some() || self.user.is_some() || self.password.is_some()) {
            return invalid(
                "ado",
                "a connection string replaces host, user and password: give one or the other",
            );
        }
        if self.connect_timeout.is_zero() {
            return invalid("connect_timeout", "must be above zero");
        }
        if self.query_timeout.is_zero() {
            return invalid("query_timeout", "must be above zero");
        }
        // The login (credentials present, files readable) is read by the sources role at its
        // start: other roles need not hold the databases' secrets.
        Ok(())
    }
}

/// What a source's rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Each row becomes one notification.
    Notifications,
    /// Each row is a customer's attributes (commune, zone, contract, language), kept in step
    /// for segment audiences.
    Customers,
}

/// Where a source starts the first time it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceStart {
    /// After the rows present then: they are read through once and not notified (a source
    /// added to a billing system years old does not announce its history).
    #[default]
    Latest,
    /// From the first row.
    Beginning,
}

/// One language's title and body templates.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextTemplates {
    pub title: String,
    pub body: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A `[sql.<name>]`.
    pub connection: String,
    pub kind: SourceKind,
    /// The query, with `@batch` (rows per poll, for `TOP (@batch)`), `@watermark` and, with a
    /// second watermark column, `@watermark_key`; it must return the rows above the watermark
    /// in watermark order.
    pub query: String,
    /// The watermark: one or two bigint columns compared in order (a rowversion cast to
    /// bigint, an increasing id, or a time in microseconds and a key).
    pub watermark: Vec<String>,
    /// The row's key column; defaults to the last watermark column.
    #[serde(default)]
    pub key: Option<String>,
    /// The row's time column (a date-time, or seconds since 1970), for the lag.
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    #[serde(default)]
    pub start: SourceStart,
    /// Most rows turned into commands per second (none: as fast as JetStream takes them). A
    /// billing run of hundreds of thousands of rows can be spread out this way.
    #[serde(default)]
    pub max_rate: Option<u32>,
    /// Notifications: the column holding the customer id (or give `audience`).
    #[serde(default)]
    pub customer: Option<String>,
    /// Notifications: a segment audience instead of `customer`, as attribute = template
    /// (`commune = "{commune}"`).
    #[serde(default)]
    pub segment: BTreeMap<String, String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default = "default_priority")]
    pub priority: String,
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// A template.
    #[serde(default)]
    pub collapse_key: Option<String>,
    /// Data handed to the app: key = template.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// The language of a device whose locale has no text of its own.
    #[serde(default)]
    pub default_language: Option<String>,
    /// Title and body templates by language (`fr`, `wo`, `en`).
    #[serde(default)]
    pub content: BTreeMap<String, TextTemplates>,
    /// Customers: attribute = column (`commune`, `zone`, `contract`, `language`).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_batch_size() -> u32 {
    500
}

fn default_priority() -> String {
    "normal".into()
}

/// Most rows one poll reads.
pub const MAX_SOURCE_BATCH: u32 = 10_000;

impl SourceConfig {
    pub(crate) fn validate(
        &self,
        name: &str,
        connections: &BTreeMap<String, SqlConnection>,
    ) -> Result<(), ConfigError> {
        let key = |k: &str| format!("sources.{name}.{k}");
        let invalid = |k: &str, message: String| {
            Err(ConfigError::InvalidKey {
                key: key(k),
                message,
            })
        };
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return invalid(
                "",
                "a source's name may hold only letters, digits, '_' and '-'".into(),
            );
        }
        if !connections.contains_key(&self.connection) {
            let known: Vec<&str> = connections.keys().map(String::as_str).collect();
            return invalid(
                "connection",
                format!(
                    "no [sql.{}] (known: {})",
                    self.connection,
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        if !(1..=2).contains(&self.watermark.len()) {
            return invalid("watermark", "name one or two columns".into());
        }
        if self.batch_size == 0 || self.batch_size > MAX_SOURCE_BATCH {
            return invalid(
                "batch_size",
                format!("must be between 1 and {MAX_SOURCE_BATCH}"),
            );
        }
        if self.poll_interval.is_zero() {
            return invalid("poll_interval", "must be above zero".into());
        }
        if self.max_rate == Some(0) {
            return invalid(
                "max_rate",
                "must be above zero (leave it out for no limit)".into(),
            );
        }
        match self.kind {
            SourceKind::Notifications => {
                if self.customer.is_some() != self.segment.is_empty() {
                    return invalid(
                        "customer",
                        "give the customer column, or a segment audience, not both".into(),
                    );
                }
                if self.content.is_empty() {
                    return invalid("content", "give a title and body for a language".into());
                }
                match &self.default_language {
                    Some(l) if self.content.contains_key(l) => {}
                    Some(l) => {
                        return invalid(
                            "default_language",
                            format!("`{l}` has no [sources.{name}.content.{l}]"),
                        );
                    }
                    None if self.content.len() == 1 => {}
                    None => {
                        return invalid(
                            "default_language",
                            "missing: name which language of `content` is the default".into(),
                        );
                    }
                }
                if !self.attributes.is_empty() {
                    return invalid(
                        "attributes",
                        "belongs to sources of kind \"customers\"".into(),
                    );
                }
            }
            SourceKind::Customers => {
                if self.customer.is_none() {
                    return invalid("customer", "missing: the customer id column".into());
                }
                if self.attributes.is_empty() {
                    return invalid("attributes", "name at least one attribute's column".into());
                }
                if !self.content.is_empty() || !self.data.is_empty() || !self.segment.is_empty() {
                    return invalid(
                        "content",
                        "a customers source sends nothing: remove content, data and segment".into(),
                    );
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn validate(
    connections: &BTreeMap<String, SqlConnection>,
    sources: &BTreeMap<String, SourceConfig>,
) -> Result<(), ConfigError> {
    for (name, connection) in connections {
        connection.validate(name)?;
    }
    for (name, source) in sources {
        source.validate(name, connections)?;
    }
    Ok(())
}

//! SQL Server through tiberius: connecting as configured (TLS verified, never "trust any
//! certificate"), running a source's query, and what each error means for the source.

use std::time::Duration;

use tiberius::{AuthMethod, Client, Config, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};
use xibaar_config::{Encrypt, SqlConnection, SqlLogin};

use crate::row::Row;

pub type Connection = Client<Compat<TcpStream>>;

/// What an error means for a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Passes by itself (a deadlock victim, a timeout, a dropped connection): retried with
    /// backoff.
    Transient,
    /// Needs a person: a refused login, a permission denied. The source pauses, keeping its
    /// place, until resumed.
    Access,
    /// The query is wrong (an unknown table or column, a syntax error): paused as well.
    Query,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Access => "access",
            ErrorClass::Query => "query",
        }
    }
}

/// A failed exchange with SQL Server, classified.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    pub class: ErrorClass,
    /// SQL Server's error number, when it answered with one.
    pub number: Option<u32>,
    pub message: String,
}

impl SqlError {
    fn from_tiberius(e: tiberius::error::Error) -> Self {
        let number = e.code();
        let class = match &e {
            tiberius::error::Error::Server(token) => classify(token.code()),
            tiberius::error::Error::Tls(_) => ErrorClass::Access,
            _ => ErrorClass::Transient,
        };
        let message = match &e {
            tiberius::error::Error::Server(token) => {
                format!("SQL Server error {}: {}", token.code(), token.message())
            }
            other => other.to_string(),
        };
        Self {
            class,
            number,
            message,
        }
    }

    pub(crate) fn io(context: &str, e: std::io::Error) -> Self {
        Self {
            class: ErrorClass::Transient,
            number: None,
            message: format!("{context}: {e}"),
        }
    }
}

/// SQL Server's error numbers by what they mean for a poll.
fn classify(number: u32) -> ErrorClass {
    match number {
        // Deadlock victim; lock request timeout; the database is starting, in recovery or
        // failing over; the server is busy; a transient Azure SQL condition.
        1205 | 1222 | 921 | 922 | 926 | 40197 | 40501 | 40613 | 49918 | 49919 | 49920 | 4060
        | 10928 | 10929 | 233 | 64 | 10053 | 10054 => ErrorClass::Transient,
        // Login failed; password expired or must change; permission denied on an object,
        // a database or a server; the login cannot open the database.
        18456 | 18486 | 18487 | 18488 | 229 | 230 | 262 | 297 | 300 | 916 | 4063 | 4064 => {
            ErrorClass::Access
        }
        _ => ErrorClass::Query,
    }
}

/// Opens a connection with `connection`'s settings and `login`.
pub async fn connect(connection: &SqlConnection, login: &SqlLogin) -> Result<Connection, SqlError> {
    let mut config = match login {
        SqlLogin::Ado(ado) => {
            let config = Config::from_ado_string(ado.expose()).map_err(|e| SqlError {
                class: ErrorClass::Access,
                number: None,
                // The string holds the password: only the parser's reason is shown.
                message: format!("the connection string is not valid ADO.NET: {}", reason(&e)),
            })?;
            if ado
                .expose()
                .to_ascii_lowercase()
                .replace(' ', "")
                .contains("trustservercertificate=true")
            {
                return Err(SqlError {
                    class: ErrorClass::Access,
                    number: None,
                    message: "the connection string turns certificate checks off \
                              (TrustServerCertificate=true): give the server's CA with ca_file \
                              instead"
                        .into(),
                });
            }
            config
        }
        SqlLogin::Password {
            host,
            database,
            user,
            password,
        } => {
            let mut config = Config::new();
            config.host(host);
            config.port(connection.port);
            if let Some(database) = database {
                config.database(database);
            }
            config.authentication(AuthMethod::sql_server(user, password.expose()));
            config.encryption(match connection.encrypt {
                Encrypt::Strict => EncryptionLevel::Strict,
                Encrypt::Required => EncryptionLevel::Required,
                Encrypt::DangerPlaintext => EncryptionLevel::NotSupported,
            });
            config
        }
    };
    config.application_name("xibaar-sources");
    if let Some(ca) = &connection.ca_file {
        config.trust_cert_ca(ca.display());
    }
    if let Some(name) = &connection.hostname_in_certificate {
        config.hostname_in_certificate(name);
    }
    config.handshake_timeout(Some(connection.connect_timeout));
    config.command_timeout(Some(connection.query_timeout));
    let tcp = tokio::time::timeout(
        connection.connect_timeout,
        TcpStream::connect(config.get_addr()),
    )
    .await
    .map_err(|_| SqlError::io("connecting", std::io::ErrorKind::TimedOut.into()))?
    .map_err(|e| SqlError::io("connecting", e))?;
    tcp.set_nodelay(true)
        .map_err(|e| SqlError::io("connecting", e))?;
    Client::connect(config, tcp.compat_write())
        .await
        .map_err(SqlError::from_tiberius)
}

/// The error's kind without its text, which may quote the input.
fn reason(e: &tiberius::error::Error) -> &'static str {
    match e {
        tiberius::error::Error::Conversion(_) => "a value could not be read",
        _ => "it could not be parsed",
    }
}

/// Up to `batch` rows above `watermark`, each handed to `each` as it arrives (so that what
/// the rows become is built while the server is still sending the rows after them).
pub async fn fetch_each(
    client: &mut Connection,
    statement: &str,
    batch: u32,
    watermark: &[i64],
    timeout: Duration,
    mut each: impl FnMut(Row),
) -> Result<(), SqlError> {
    use futures::TryStreamExt;
    let batch = i64::from(batch);
    let mut params: Vec<&dyn tiberius::ToSql> = vec![&batch];
    for w in watermark {
        params.push(w);
    }
    // The command timeout bounds each answer; this bounds the whole read, so a server that
    // trickles rows cannot hold a poll forever.
    let read = async {
        let mut stream = client
            .query(statement, &params)
            .await
            .map_err(SqlError::from_tiberius)?;
        // The first result set's rows; the stream is read to its end all the same, so that
        // the connection is ready for the next query.
        while let Some(item) = stream.try_next().await.map_err(SqlError::from_tiberius)? {
            if let tiberius::QueryItem::Row(row) = item
                && row.result_index() == 0
            {
                each(Row::from_tiberius(row));
            }
        }
        Ok::<_, SqlError>(())
    };
    tokio::time::timeout(timeout * 4, read)
        .await
        .map_err(|_| SqlError::io("reading rows", std::io::ErrorKind::TimedOut.into()))?
}

/// The query's columns, read without rows (`@batch` = 0), to check the templates at start.
pub async fn columns(
    client: &mut Connection,
    statement: &str,
    watermark_columns: usize,
) -> Result<Vec<String>, SqlError> {
    let zero = 0i64;
    let low = i64::MIN;
    let mut params: Vec<&dyn tiberius::ToSql> = vec![&zero];
    for _ in 0..watermark_columns {
        params.push(&low);
    }
    let mut stream = client
        .query(statement, &params)
        .await
        .map_err(SqlError::from_tiberius)?;
    let columns = stream
        .columns()
        .await
        .map_err(SqlError::from_tiberius)?
        .map(|cs| cs.iter().map(|c| c.name().to_owned()).collect())
        .unwrap_or_default();
    stream
        .into_results()
        .await
        .map_err(SqlError::from_tiberius)?;
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classed_by_what_they_need() {
        assert_eq!(classify(1205), ErrorClass::Transient);
        assert_eq!(classify(1222), ErrorClass::Transient);
        assert_eq!(classify(18456), ErrorClass::Access);
        assert_eq!(classify(229), ErrorClass::Access);
        assert_eq!(classify(208), ErrorClass::Query);
        assert_eq!(classify(102), ErrorClass::Query);
    }
}

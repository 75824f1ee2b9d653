use std::path::Path;

use async_nats::{Client, ConnectOptions};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read NATS credentials {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
}

/// The servers of a `nats.url`: one URL, or several separated by commas (the seeds of a
/// cluster, as the NATS tools take them).
pub fn server_list(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Connects with the role's name (shown by `nats server report connections`) to any of the
/// servers of `url` (one URL, or several separated by commas). The client also learns the
/// rest of the cluster from the server, and reconnects by itself for ever, to whichever server
/// answers; callers see errors only per request. A server listed but down at start is skipped.
pub async fn connect(
    url: &str,
    credentials: Option<&Path>,
    name: &str,
) -> Result<Client, ConnectError> {
    let mut options = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None);
    let servers = server_list(url)
        .into_iter()
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConnectError::Connect {
            url: url.to_owned(),
            source: async_nats::ConnectError::with_source(
                async_nats::ConnectErrorKind::ServerParse,
                e,
            ),
        })?;
    if let Some(path) = credentials {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| ConnectError::Credentials {
                    path: path.display().to_string(),
                    source,
                })?;
    }
    options
        .connect(servers)
        .await
        .map_err(|source| ConnectError::Connect {
            url: url.to_owned(),
            source,
        })
}

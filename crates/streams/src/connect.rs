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

/// Connects with the role's name (shown by `nats server report connections`). The client
/// reconnects by itself for ever; callers see errors only per request.
pub async fn connect(
    url: &str,
    credentials: Option<&Path>,
    name: &str,
) -> Result<Client, ConnectError> {
    let mut options = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None);
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
        .connect(url)
        .await
        .map_err(|source| ConnectError::Connect {
            url: url.to_owned(),
            source,
        })
}

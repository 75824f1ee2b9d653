//! OAuth2 for FCM: a JWT assertion signed with the service account's key (by gcp_auth's signer)
//! exchanged at the key's `token_uri`. The exchange goes through our reqwest client rather than
//! gcp_auth's own, which ignores `HTTPS_PROXY` and custom CAs and cannot be replaced.

use std::{path::Path, sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::sync::Mutex;

pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Tokens are refreshed this long before they expire, so no request carries a dying token.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read service account key {path}: {detail}")]
    Key { path: String, detail: String },
    #[error("signing the token request failed: {0}")]
    Sign(String),
    #[error("token request to {uri} failed: {source}")]
    Transport {
        uri: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("token endpoint {uri} refused the service account ({status}): {body}")]
    Refused {
        uri: String,
        status: u16,
        body: String,
    },
}

/// The fields of a Google service-account key file that the exchange needs.
#[derive(Deserialize)]
struct KeyFile {
    client_email: String,
    token_uri: String,
    #[serde(default)]
    private_key_id: Option<String>,
}

pub struct ServiceAccountKey {
    client_email: String,
    token_uri: String,
    key_id: Option<String>,
    signer: gcp_auth::CustomServiceAccount,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccountKey {
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let err = |detail: String| TokenError::Key {
            path: path.display().to_string(),
            detail,
        };
        let json = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: KeyFile = serde_json::from_str(&json).map_err(|e| err(e.to_string()))?;
        let signer =
            gcp_auth::CustomServiceAccount::from_json(&json).map_err(|e| err(e.to_string()))?;
        Ok(Self {
            client_email: file.client_email,
            token_uri: file.token_uri,
            key_id: file.private_key_id,
            signer,
        })
    }

    /// The signed JWT-bearer assertion (RFC 7523) for the FCM scope.
    fn assertion(&self, now: DateTime<Utc>) -> Result<String, TokenError> {
        let mut header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
        if let Some(kid) = &self.key_id {
            header["kid"] = kid.clone().into();
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": FCM_SCOPE,
            "aud": self.token_uri,
            "iat": now.timestamp(),
            "exp": now.timestamp() + 3600,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .signer
            .signer()
            .sign(input.as_bytes())
            .map_err(|e| TokenError::Sign(e.to_string()))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

#[derive(Clone)]
struct AccessToken {
    value: Arc<str>,
    expires_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: i64,
}

/// A cached access token for one service account; one refresh at a time.
pub(crate) struct TokenSource {
    key: ServiceAccountKey,
    current: Mutex<Option<AccessToken>>,
}

impl TokenSource {
    pub(crate) fn new(key: ServiceAccountKey) -> Self {
        Self {
            key,
            current: Mutex::new(None),
        }
    }

    /// A token valid for at least the refresh margin, fetched if needed.
    pub(crate) async fn token(&self, http: &reqwest::Client) -> Result<Arc<str>, TokenError> {
        let mut current = self.current.lock().await;
        let margin = chrono::Duration::from_std(REFRESH_MARGIN).unwrap_or_default();
        if let Some(t) = current.as_ref()
            && t.expires_at - margin > Utc::now()
        {
            return Ok(t.value.clone());
        }
        let fresh = self.fetch(http).await?;
        let value = fresh.value.clone();
        *current = Some(fresh);
        Ok(value)
    }

    /// Drops `rejected` so the next call fetches a new token (after FCM answered 401).
    pub(crate) async fn invalidate(&self, rejected: &str) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|t| &*t.value == rejected) {
            *current = None;
        }
    }

    #[tracing::instrument(skip_all, fields(uri = %self.key.token_uri))]
    async fn fetch(&self, http: &reqwest::Client) -> Result<AccessToken, TokenError> {
        let now = Utc::now();
        let assertion = self.key.assertion(now)?;
        let uri = self.key.token_uri.clone();
        let transport = |source| TokenError::Transport {
            uri: uri.clone(),
            source,
        };
        let response = http
            .post(&uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(TokenError::Refused {
                uri,
                status: status.as_u16(),
                body,
            });
        }
        let token: TokenResponse = response.json().await.map_err(transport)?;
        metrics::counter!("xibaar_fcm_token_refreshes_total").increment(1);
        tracing::info!(expires_in = token.expires_in, "fetched an FCM access token");
        Ok(AccessToken {
            value: token.access_token.into(),
            expires_at: now + chrono::Duration::seconds(token.expires_in),
        })
    }
}

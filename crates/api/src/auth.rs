//! Bearer tokens: HS256 JWTs with `iss`, `aud`, `exp` (and `nbf` when present) checked. `sub` is
//! the customer id for app users and the client name for back-office systems; `scope` is a
//! space-separated list. Only HS256 is accepted, so `alg: none` and algorithm confusion fail.

use std::collections::HashSet;

use axum::{extract::FromRequestParts, http::request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use xibaar_core::{Actor, ActorKind, CustomerId};

use crate::{AppState, problem::ApiError};

pub mod scopes {
    pub const SEND: &str = "notifications:send";
    pub const READ: &str = "notifications:read";
    pub const AUDIT: &str = "audit:read";
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| ApiError::Unauthorized(format!("the bearer token is not valid: {e}")))?;
        Ok(Caller {
            subject: data.claims.sub,
            scopes: data
                .claims
                .scope
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        })
    }
}

/// Signs a token; used by `xibaar token` and tests.
pub fn mint(
    secret: &[u8],
    issuer: &str,
    audience: &str,
    subject: &str,
    scopes: &[&str],
    ttl: std::time::Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: subject.to_owned(),
        scope: scopes.join(" "),
        iss: issuer.to_owned(),
        aud: audience.to_owned(),
        iat: now,
        exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        nbf: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub subject: String,
    pub scopes: HashSet<String>,
}

impl Caller {
    pub fn require(&self, scope: &str) -> Result<(), ApiError> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this requires the `{scope}` scope"
            )))
        }
    }

    /// The customer a customer token speaks for.
    pub fn customer(&self) -> Result<CustomerId, ApiError> {
        CustomerId::parse(self.subject.clone())
            .map_err(|e| ApiError::Forbidden(format!("the token's subject is not a customer: {e}")))
    }

    /// Back-office callers hold a scope; customers hold none.
    pub fn actor(&self) -> Actor {
        let kind = if self.scopes.is_empty() {
            ActorKind::Customer
        } else {
            ActorKind::Client
        };
        Actor {
            kind,
            id: self.subject.clone(),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::Unauthorized("send a bearer token in the Authorization header".into())
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::Unauthorized("the Authorization header must be `Bearer <token>`".into())
            })?;
        let caller = state.auth.verify(token.trim())?;
        let budget = state.limits.check(&caller)?;
        if let Some(slot) = parts.extensions.get::<crate::limit::BudgetSlot>() {
            let _ = slot.0.set(budget);
        }
        Ok(caller)
    }
}

//! Bearer tokens: JWTs with `iss`, `aud`, `exp` (and `nbf` when present) checked. `sub` is the
//! customer id for app users and the client name for back-office systems; `scope` is a
//! space-separated list.
//!
//! Two kinds of keys, either or both: an HS256 shared secret, and a JSON Web Key Set of RSA
//! (RS256) and P-256 (ES256) public keys from the identity provider. A token is checked with
//! exactly one algorithm, the one its key is for: RS256 and ES256 tokens must name a `kid` of
//! the set whose key type matches, HS256 tokens are accepted only when a secret is configured,
//! and `alg: none` or any other algorithm is refused. So a token signed with HMAC over an RSA
//! public key (algorithm confusion) never meets that key as an HMAC secret.

use std::{collections::HashMap, collections::HashSet, path::Path, sync::Arc};

use axum::{extract::FromRequestParts, http::request::Parts};
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm},
};
use serde::{Deserialize, Serialize};
use xibaar_core::{Actor, ActorKind, CustomerId};

use crate::{AppState, problem::ApiError};

pub mod scopes {
    pub const SEND: &str = "notifications:send";
    pub const READ: &str = "notifications:read";
    pub const AUDIT: &str = "audit:read";
    /// The ops page's figures.
    pub const OPS: &str = "ops:read";
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

#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("cannot read the key set {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the key set is not a JSON Web Key Set: {0}")]
    Parse(serde_json::Error),
    #[error("a key of the set has no `kid`; tokens could not name it")]
    MissingKid,
    #[error("key `{kid}`: {reason}")]
    Unsupported { kid: String, reason: String },
}

pub struct Authenticator {
    issuer: String,
    audience: String,
    hs256: Option<DecodingKey>,
    /// `kid` → the one algorithm the key verifies, and the key.
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    /// Tokens already verified, by their exact text: a client sends the same token with every
    /// request until it expires, and checking its signature and claims again took an eighth of
    /// the api's time per send. Any change to a token's text misses; the time claims are
    /// checked again on every use; the keys never change while the api runs.
    verified: quick_cache::sync::Cache<String, Verified>,
}

/// Seconds of clock difference accepted on `exp` and `nbf`.
const LEEWAY_SECONDS: i64 = 30;

/// Verified tokens kept (a few hundred bytes each).
const VERIFIED_TOKENS: usize = 50_000;

/// A token whose signature and claims were checked, and its time claims.
#[derive(Clone)]
struct Verified {
    caller: Caller,
    exp: i64,
    nbf: Option<i64>,
}

impl Authenticator {
    /// Accepts no token until keys are added.
    pub fn new(issuer: &str, audience: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            hs256: None,
            keys: HashMap::new(),
            verified: quick_cache::sync::Cache::new(VERIFIED_TOKENS),
        }
    }

    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Self {
        Self::new(issuer, audience).with_hs256(secret)
    }

    pub fn with_hs256(mut self, secret: &[u8]) -> Self {
        self.hs256 = Some(DecodingKey::from_secret(secret));
        self
    }

    /// Adds every key of a JSON Web Key Set: RSA keys verify RS256, P-256 keys ES256.
    pub fn with_jwks(mut self, set: &JwkSet) -> Result<Self, KeySetError> {
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().ok_or(KeySetError::MissingKid)?;
            let unsupported = |reason: &str| KeySetError::Unsupported {
                kid: kid.clone(),
                reason: reason.to_owned(),
            };
            let algorithm = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => {
                    return Err(unsupported(
                        "only RSA (RS256) and P-256 (ES256) keys are accepted",
                    ));
                }
            };
            let declared = jwk.common.key_algorithm;
            let matches = match declared {
                None => true,
                Some(KeyAlgorithm::RS256) => algorithm == Algorithm::RS256,
                Some(KeyAlgorithm::ES256) => algorithm == Algorithm::ES256,
                Some(_) => false,
            };
            if !matches {
                return Err(unsupported(&format!(
                    "its `alg` {declared:?} does not fit its key type"
                )));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| unsupported(&e.to_string()))?;
            self.keys.insert(kid, (algorithm, key));
        }
        Ok(self)
    }

    pub fn with_jwks_file(self, path: &Path) -> Result<Self, KeySetError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeySetError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let set: JwkSet = serde_json::from_str(&text).map_err(KeySetError::Parse)?;
        self.with_jwks(&set)
    }

    /// The caller a request's `Authorization: Bearer` header proves; their budget is not
    /// charged yet.
    pub(crate) fn bearer(&self, headers: &axum::http::HeaderMap) -> Result<Caller, ApiError> {
        let header = headers
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
        self.verify(token.trim())
    }

    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        self.verify_at(token, chrono::Utc::now().timestamp())
    }

    /// [`Authenticator::verify`] at `now` (seconds since the epoch) for a token verified
    /// before; a new token is checked against the real clock.
    fn verify_at(&self, token: &str, now: i64) -> Result<Caller, ApiError> {
        let invalid =
            |why: String| ApiError::Unauthorized(format!("the bearer token is not valid: {why}"));
        if let Some(known) = self.verified.get(token) {
            // The same tests, with the same leeway and words, as the full check below.
            let refused = |kind| invalid(jsonwebtoken::errors::Error::from(kind).to_string());
            if known.exp < now - LEEWAY_SECONDS {
                self.verified.remove(token);
                return Err(refused(ErrorKind::ExpiredSignature));
            }
            if known.nbf.is_some_and(|nbf| nbf > now + LEEWAY_SECONDS) {
                return Err(refused(ErrorKind::ImmatureSignature));
            }
            return Ok(known.caller);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self
                .hs256
                .as_ref()
                .ok_or_else(|| invalid("HS256 tokens are not accepted here".into()))?,
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| invalid("it names no key (`kid`)".into()))?;
                let (algorithm, key) = self
                    .keys
                    .get(kid)
                    .ok_or_else(|| invalid(format!("no key `{kid}` is known")))?;
                if *algorithm != header.alg {
                    return Err(invalid(format!(
                        "key `{kid}` is for {algorithm:?}, not {:?}",
                        header.alg
                    )));
                }
                key
            }
            other => return Err(invalid(format!("algorithm {other:?} is not accepted"))),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS.unsigned_abs();
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| invalid(e.to_string()))?;
        let caller = Caller::new(
            data.claims.sub,
            data.claims
                .scope
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        );
        self.verified.insert(
            token.to_owned(),
            Verified {
                caller: caller.clone(),
                exp: data.claims.exp,
                nbf: data.claims.nbf,
            },
        );
        Ok(caller)
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

/// The authenticated caller of a request. Shared with the verified-token cache: a request
/// takes its caller for the cost of one reference count.
#[derive(Debug, Clone)]
pub struct Caller(Arc<Identity>);

/// Who a verified token names.
#[derive(Debug)]
pub struct Identity {
    pub subject: String,
    pub scopes: HashSet<String>,
}

impl std::ops::Deref for Caller {
    type Target = Identity;

    fn deref(&self) -> &Identity {
        &self.0
    }
}

impl Caller {
    pub fn new(subject: String, scopes: HashSet<String>) -> Self {
        Self(Arc::new(Identity { subject, scopes }))
    }

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
        let caller = state.auth.bearer(&parts.headers)?;
        let budget = state.limits.check(&caller)?;
        if let Some(slot) = parts.extensions.get::<crate::limit::BudgetSlot>() {
            let _ = slot.0.set(budget);
        }
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-secret-of-thirty-two-bytes-or-more";

    fn sign(claims: &Claims) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("signs")
    }

    fn claims(exp: i64, nbf: Option<i64>) -> Claims {
        Claims {
            sub: "customer-1".into(),
            scope: String::new(),
            iss: "xibaar".into(),
            aud: "xibaar-api".into(),
            exp,
            iat: chrono::Utc::now().timestamp(),
            nbf,
        }
    }

    fn message(result: Result<Caller, ApiError>) -> String {
        match result {
            Err(ApiError::Unauthorized(why)) => why,
            Err(other) => panic!("expected 401, got {other:?}"),
            Ok(caller) => panic!("accepted for {}", caller.subject),
        }
    }

    #[test]
    fn a_verified_token_is_still_refused_once_expired_or_before_its_nbf_and_any_change_misses() {
        let auth = Authenticator::hs256(SECRET, "xibaar", "xibaar-api");
        let now = chrono::Utc::now().timestamp();
        let token = sign(&claims(now + 60, Some(now - 10)));
        assert_eq!(auth.verify(&token).expect("valid").subject, "customer-1");
        assert_eq!(auth.verify(&token).expect("cached").subject, "customer-1");

        // Inside the leeway, as the full check allows.
        assert!(
            auth.verify_at(&token, now + 60 + LEEWAY_SECONDS - 1)
                .is_ok()
        );
        assert!(
            auth.verify_at(&token, now - 10 - LEEWAY_SECONDS + 1)
                .is_ok()
        );
        // Before `nbf`, then after `exp`: refused with the full check's words.
        let fresh = Authenticator::hs256(SECRET, "xibaar", "xibaar-api");
        let immature = sign(&claims(now + 3_600, Some(now + 3_600)));
        assert_eq!(
            message(auth.verify_at(&token, now - 10 - LEEWAY_SECONDS - 1)),
            message(fresh.verify(&immature))
        );
        let expired = sign(&claims(now - 3_600, None));
        assert_eq!(
            message(auth.verify_at(&token, now + 60 + LEEWAY_SECONDS + 1)),
            message(fresh.verify(&expired))
        );
        // Forgotten once expired: the full check decides again.
        assert!(auth.verify(&token).is_ok());

        // A token whose payload or signature changed is a token never seen.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let other = sign(&Claims {
            sub: "customer-2".into(),
            ..claims(now + 60, None)
        });
        parts[1] = other.split('.').nth(1).expect("payload").to_owned();
        message(auth.verify(&parts.join(".")));
        // One character inside the signature (not the last, whose low bits are padding).
        let at = token.len() - 10;
        let flipped = if &token[at..=at] == "A" { "B" } else { "A" };
        let tampered = format!("{}{flipped}{}", &token[..at], &token[at + 1..]);
        message(auth.verify(&tampered));
    }
}

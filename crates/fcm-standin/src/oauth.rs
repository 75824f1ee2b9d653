//! `POST /token`: RFC 7523 JWT-bearer grant, verified as Google's token endpoint does.

use std::sync::Arc;

use axum::{
    Form, Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

use crate::state::Shared;

/// Scopes Google grants FCM access with: the narrow one Xibaar asks for, and `cloud-platform`,
/// which Google's own libraries (firebase-admin) ask for among others.
const FCM_SCOPES: [&str; 2] = [
    "https://www.googleapis.com/auth/firebase.messaging",
    "https://www.googleapis.com/auth/cloud-platform",
];
/// The audience Google documents for service-account assertions, which google-auth signs for
/// whatever `token_uri` it posts to; the stand-in also accepts its own token URL.
const GOOGLE_TOKEN_URIS: [&str; 2] = [
    "https://oauth2.googleapis.com/token",
    "https://www.googleapis.com/oauth2/v4/token",
];
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

#[derive(Deserialize)]
pub(crate) struct TokenRequest {
    grant_type: String,
    assertion: String,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    scope: String,
    iat: i64,
    exp: i64,
}

fn invalid_grant(description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": "invalid_grant", "error_description": description })),
    )
        .into_response()
}

pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    Form(req): Form<TokenRequest>,
) -> Response {
    if req.grant_type != JWT_BEARER {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "unsupported_grant_type", "error_description": "Invalid grant_type" })),
        )
            .into_response();
    }
    let mut validation = Validation::new(Algorithm::RS256);
    let mut audiences = vec![shared.token_uri.as_str()];
    audiences.extend(GOOGLE_TOKEN_URIS);
    validation.set_audience(&audiences);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    validation.leeway = 60;
    for account in &shared.accounts {
        let Ok(key) = DecodingKey::from_rsa_pem(account.public_key_pem.as_bytes()) else {
            continue;
        };
        let mut validation = validation.clone();
        validation.set_issuer(&[&account.client_email]);
        match jsonwebtoken::decode::<Claims>(&req.assertion, &key, &validation) {
            Ok(data) => {
                let claims = data.claims;
                if !claims.scope.split(' ').any(|s| FCM_SCOPES.contains(&s)) {
                    return invalid_grant("Invalid OAuth scope or ID token audience provided.");
                }
                if claims.exp - claims.iat > 3600 {
                    return invalid_grant(
                        "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
                    );
                }
                debug_assert_eq!(claims.iss, account.client_email);
                let (access_token, expires_in) = shared.issue_token(&account.project_id);
                return Json(json!({
                    "access_token": access_token,
                    "expires_in": expires_in,
                    "token_type": "Bearer",
                }))
                .into_response();
            }
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature
                | jsonwebtoken::errors::ErrorKind::InvalidIssuer => continue,
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    return invalid_grant(
                        "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
                    );
                }
                jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                    return invalid_grant("Invalid JWT: Failed audience check.");
                }
                _ => return invalid_grant(&format!("Invalid JWT: {e}")),
            },
        }
    }
    invalid_grant("Invalid JWT Signature.")
}

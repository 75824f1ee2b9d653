//! Bearer tokens: HS256 secrets and RS256/ES256 key sets accepted; every usual JWT attack
//! refused.

use std::path::PathBuf;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use xibaar_api::{Authenticator, auth::Claims};

const SECRET: &[u8] = b"back-office-secret-0123456789abcdef";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

fn authenticator() -> Authenticator {
    Authenticator::new("https://idp.example", "xibaar-api")
        .with_hs256(SECRET)
        .with_jwks_file(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwks.json"))
        .unwrap()
}

fn claims() -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        sub: "customer-42".into(),
        scope: String::new(),
        iss: "https://idp.example".into(),
        aud: "xibaar-api".into(),
        exp: now + 600,
        iat: now,
        nbf: None,
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Claims, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture("rs256-test.key.pem")).unwrap()
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(&fixture("es256-test.key.pem")).unwrap()
}

fn refused(token: &str, why: &str) {
    match authenticator().verify(token) {
        Err(xibaar_api::problem::ApiError::Unauthorized(detail)) => {
            assert!(detail.contains(why), "{detail:?} should say {why:?}")
        }
        other => panic!("expected 401 ({why}), got {other:?}"),
    }
}

#[test]
fn tokens_from_every_configured_key_are_accepted() {
    let auth = authenticator();
    let mut c = claims();
    c.scope = "notifications:send notifications:read".into();
    let caller = auth
        .verify(&sign(Algorithm::RS256, Some("idp-rsa-1"), &c, &rsa()))
        .unwrap();
    assert_eq!(caller.subject, "customer-42");
    assert!(caller.scopes.contains("notifications:read"));
    auth.verify(&sign(Algorithm::ES256, Some("idp-ec-1"), &claims(), &ec()))
        .unwrap();
    auth.verify(&sign(
        Algorithm::HS256,
        None,
        &claims(),
        &EncodingKey::from_secret(SECRET),
    ))
    .unwrap();
}

#[test]
fn alg_none_is_refused() {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap());
    refused(&format!("{header}.{body}."), "not valid");
}

#[test]
fn a_wrong_key_is_refused() {
    let other = EncodingKey::from_rsa_pem(&fixture("rs256-other.key.pem")).unwrap();
    refused(
        &sign(Algorithm::RS256, Some("idp-rsa-1"), &claims(), &other),
        "InvalidSignature",
    );
    refused(
        &sign(
            Algorithm::HS256,
            None,
            &claims(),
            &EncodingKey::from_secret(b"guessed-secret-guessed-secret-00"),
        ),
        "InvalidSignature",
    );
    refused(
        &sign(Algorithm::RS256, Some("idp-rsa-9"), &claims(), &rsa()),
        "no key `idp-rsa-9`",
    );
    refused(
        &sign(Algorithm::RS256, None, &claims(), &rsa()),
        "names no key",
    );
}

#[test]
fn algorithm_confusion_is_refused() {
    // HMAC keyed with the RSA public key, as an attacker who read the key set would sign.
    let public = fixture("rs256-test.pub.pem");
    let forged = sign(
        Algorithm::HS256,
        Some("idp-rsa-1"),
        &claims(),
        &EncodingKey::from_secret(&public),
    );
    refused(&forged, "InvalidSignature");
    let without_secret = Authenticator::new("https://idp.example", "xibaar-api")
        .with_jwks_file(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwks.json"))
        .unwrap();
    assert!(without_secret.verify(&forged).is_err());
    // An ES256 token naming the RSA key, and an RS256 token naming the EC key.
    refused(
        &sign(Algorithm::ES256, Some("idp-rsa-1"), &claims(), &ec()),
        "is for RS256",
    );
    refused(
        &sign(Algorithm::RS256, Some("idp-ec-1"), &claims(), &rsa()),
        "is for ES256",
    );
    refused(
        &sign(Algorithm::RS384, Some("idp-rsa-1"), &claims(), &rsa()),
        "not accepted",
    );
}

#[test]
fn expired_early_wrong_audience_and_tampered_tokens_are_refused() {
    let now = chrono::Utc::now().timestamp();
    let mut expired = claims();
    expired.exp = now - 120;
    refused(
        &sign(Algorithm::RS256, Some("idp-rsa-1"), &expired, &rsa()),
        "ExpiredSignature",
    );
    let mut early = claims();
    early.nbf = Some(now + 600);
    refused(
        &sign(Algorithm::ES256, Some("idp-ec-1"), &early, &ec()),
        "ImmatureSignature",
    );
    let mut elsewhere = claims();
    elsewhere.aud = "billing-api".into();
    refused(
        &sign(Algorithm::RS256, Some("idp-rsa-1"), &elsewhere, &rsa()),
        "InvalidAudience",
    );
    let mut foreign = claims();
    foreign.iss = "https://evil.example".into();
    refused(
        &sign(Algorithm::RS256, Some("idp-rsa-1"), &foreign, &rsa()),
        "InvalidIssuer",
    );
    // Same signature, payload changed to another customer.
    let token = sign(Algorithm::RS256, Some("idp-rsa-1"), &claims(), &rsa());
    let parts: Vec<&str> = token.split('.').collect();
    let mut changed = claims();
    changed.sub = "customer-43".into();
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&changed).unwrap());
    refused(
        &format!("{}.{body}.{}", parts[0], parts[2]),
        "InvalidSignature",
    );
}

#[test]
fn key_sets_with_unusable_keys_are_refused_at_start() {
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(r#"{"keys":[{"kty":"oct","kid":"shared","k":"c2VjcmV0"}]}"#).unwrap();
    let err = Authenticator::new("i", "a").with_jwks(&set).err().unwrap();
    assert!(err.to_string().contains("key `shared`"), "{err}");
    let no_kid: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&fixture("jwks.json"))
        .map(|mut s: jsonwebtoken::jwk::JwkSet| {
            s.keys[0].common.key_id = None;
            s
        })
        .unwrap();
    assert!(Authenticator::new("i", "a").with_jwks(&no_kid).is_err());
}

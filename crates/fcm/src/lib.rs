//! The FCM HTTP v1 client: long-lived HTTP/2 connections shared by every Firebase app of the
//! deployment, as many as the requests in flight need (FCM allows 100 streams on each), OAuth2 access tokens from service-account keys (signed by gcp_auth, exchanged
//! through the same HTTP client so `HTTPS_PROXY` and the extra CA bundle apply), bounded
//! concurrency, and FCM's errors classified the way FCM documents them.
//!
//! TLS verification is never disabled; there is no setting for it.

mod auth;
mod breaker;
mod client;
mod connections;
mod error;
mod message;

pub use auth::{ServiceAccountKey, TokenError};
pub use breaker::{BreakerSettings, CircuitBreaker, CircuitState, Verdict};
pub use client::{FcmClient, FcmClientError, SentMessage};
pub use error::{FcmError, FcmErrorCode};
pub use message::{Message, Target};

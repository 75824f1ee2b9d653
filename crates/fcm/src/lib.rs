//! The FCM HTTP v1 client: long-lived HTTP/2 connections on hyper shared by every Firebase app
//! of the deployment, as many as the requests in flight need (FCM allows 100 streams on each),
//! through `HTTPS_PROXY` and with the extra CA bundle when configured; OAuth2 access tokens from
//! service-account keys (signed by gcp_auth, exchanged through reqwest with the same proxy and
//! CA bundle); bounded concurrency; and FCM's errors classified the way FCM documents them.
//!
//! TLS verification is never disabled; there is no setting for it.

mod auth;
mod breaker;
mod client;
mod connections;
mod error;
mod message;
mod transport;

pub use auth::{ServiceAccountKey, TokenError};
pub use breaker::{BreakerSettings, CircuitBreaker, CircuitState, Verdict};
pub use client::{FcmClient, FcmClientError, SentMessage};
pub use error::{FcmError, FcmErrorCode};
pub use message::{Message, Target};
pub use transport::TransportError;

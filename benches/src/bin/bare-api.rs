//! The api benchmark's HTTP baseline: a minimal axum handler that parses the same send body and
//! publishes it with async-nats, answering 202 once JetStream has acknowledged it. No
//! authentication, validation, idempotency or rate limit: the least an HTTP front of JetStream
//! costs. Run by `api` as its own process, on the same runtime and allocator as `xibaar`.
//!
//! `bare-api <listen address> <nats url>`

use std::sync::Arc;

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The body's shape, parsed as the api parses it (serde into types), then kept as it came.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Send {
    priority: String,
    audience: serde_json::Value,
    content: Content,
}

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Content {
    title: String,
    body: String,
    #[serde(default)]
    data: std::collections::BTreeMap<String, String>,
}

async fn send(State(js): State<Arc<async_nats::jetstream::Context>>, body: Bytes) -> StatusCode {
    if serde_json::from_slice::<Send>(&body).is_err() {
        return StatusCode::UNPROCESSABLE_ENTITY;
    }
    let id = uuid::Uuid::now_v7().to_string();
    let stored = async {
        js.publish_with_headers(
            format!("xibaar.cmd.normal.{id}"),
            xibaar_streams::headers(&id, "send_notification"),
            body,
        )
        .await?
        .await?;
        anyhow::Ok(())
    };
    match stored.await {
        Ok(()) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn main() -> anyhow::Result<()> {
    // As the `xibaar` binary runs: what runs in this process pays for memory what a role does.
    xibaar::without_huge_pages();
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(nats)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bare-api <listen address> <nats url>");
    };
    tokio::runtime::Runtime::new()?.block_on(async move {
        let client = async_nats::connect(nats).await?;
        let js = Arc::new(xibaar::startup::jetstream(client));
        let app = Router::new()
            .route("/v1/notifications", post(send))
            .with_state(js);
        let listener = tokio::net::TcpListener::bind(listen).await?;
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}

//! `POST /v1/projects/{project}/messages:send`.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{
    errors::{self, ScriptedError},
    state::{Received, Shared},
};

const PAYLOAD_LIMIT: usize = 4096;
const TOPIC_PAYLOAD_LIMIT: usize = 2048;

pub(crate) async fn send(
    State(shared): State<Arc<Shared>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = shared.request_started();
    let arrived_at = chrono::Utc::now();
    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = answer(&shared, &project, &headers, &body, arrived_at);
    if !response.status().is_success() {
        shared.count_error();
    }
    response
}

fn answer(
    shared: &Shared,
    project: &str,
    headers: &HeaderMap,
    body: &[u8],
    arrived_at: chrono::DateTime<chrono::Utc>,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(allowed) = bearer.and_then(|t| shared.token_project(t)) else {
        return errors::unauthenticated();
    };
    if allowed != project {
        return errors::permission_denied(project);
    }
    if let Err(retry_after) = shared.charge_quota(project) {
        return errors::scripted(ScriptedError::QuotaExceeded, Some(retry_after));
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return errors::invalid_argument(&format!("Invalid JSON payload received. {e}")),
    };
    let Some(message) = request.get("message").filter(|m| m.is_object()) else {
        return errors::invalid_argument(
            "Invalid JSON payload received. Unknown name \"message\".",
        );
    };
    let targets: Vec<&str> = ["token", "topic", "condition"]
        .into_iter()
        .filter(|k| message.get(*k).is_some())
        .collect();
    if targets.len() != 1 {
        return errors::invalid_argument("Exactly one of token, topic or condition must be set.");
    }
    if let Some(data) = message.get("data") {
        let Some(map) = data.as_object() else {
            return errors::invalid_argument("Invalid value at 'message.data'.");
        };
        if let Some((key, _)) = map.iter().find(|(_, v)| !v.is_string()) {
            return errors::invalid_argument(&format!(
                "Invalid value at 'message.data[{key}].value' (TYPE_STRING)"
            ));
        }
    }
    let payload =
        json!({ "notification": message.get("notification"), "data": message.get("data") });
    let limit = if targets[0] == "token" {
        PAYLOAD_LIMIT
    } else {
        TOPIC_PAYLOAD_LIMIT
    };
    if serde_json::to_vec(&payload).map_or(usize::MAX, |v| v.len()) > limit {
        return errors::invalid_argument("Message is too big");
    }
    let token = message.get("token").and_then(Value::as_str);
    if let Some((error, retry_after)) = shared.take_rule(token) {
        return errors::scripted(error, retry_after);
    }
    let validate_only = request.get("validate_only").and_then(Value::as_bool) == Some(true);
    let id = format!(
        "0:{}%{:016x}",
        chrono::Utc::now().timestamp_micros(),
        rand::random::<u64>()
    );
    if !validate_only {
        shared.record(Received {
            project: project.to_owned(),
            token: token.map(str::to_owned),
            message: message.clone(),
            arrived_at,
            received_at: chrono::Utc::now(),
        });
    }
    Json(json!({ "name": format!("projects/{project}/messages/{id}") })).into_response()
}

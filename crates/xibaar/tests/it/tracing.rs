//! One notification, one trace: the api, the dispatcher and the projector run as their own
//! processes with JSON logs and OTLP export, and everything they log or export about one
//! notification carries the trace id the caller started.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use xibaar_testkit::{KillOnDrop, eventually};

use crate::support::{Pipeline, notification};

/// Collects the bodies of OTLP/HTTP trace exports.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Bytes>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route(
            "/v1/traces",
            post(
                |State(received): State<Arc<Mutex<Vec<Bytes>>>>, body: Bytes| async move {
                    received.lock().unwrap().push(body);
                    // An empty ExportTraceServiceResponse.
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn lines_with(log: &std::path::Path, trace_id: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["openTelemetry"]["traceId"] == trace_id)
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_notification_is_one_trace_across_api_dispatcher_fcm_call_events_and_projector() {
    let p = Pipeline::start_roles(xibaar::Roles::NONE).await;
    let (otlp, exported) = otlp_receiver().await;
    let logs = tempfile::tempdir().unwrap();
    let env = [
        ("XIBAAR_LOG__FORMAT", "json"),
        (
            "XIBAAR_LOG__FILTER",
            "info,xibaar_dispatcher=debug,xibaar_projector=debug",
        ),
        ("XIBAAR_LOG__OTLP_TRACES_ENDPOINT", otlp.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    // Stopped even when an assertion fails.
    let _processes: Vec<KillOnDrop> = ["api", "dispatcher", "projector"]
        .into_iter()
        .map(|role| {
            let log = std::fs::File::create(logs.path().join(format!("{role}.log"))).unwrap();
            p.spawn_role(role, &env, log)
        })
        .collect();
    let up = eventually(Duration::from_secs(30), || async {
        let r = p.http.get(format!("{}/v1/me/preferences", p.api)).send();
        r.await.ok().map(|_| ())
    })
    .await;
    assert!(up.is_some(), "the api process did not start");
    eventually(Duration::from_secs(30), || async {
        sqlx::query("SELECT 1 FROM projection_checkpoints LIMIT 1")
            .execute(&p.pool)
            .await
            .ok()
            .map(|_| ())
    })
    .await
    .expect("the projector ran its migrations");
    p.register_device("traced-customer", "traced-phone", "tok-traced")
        .await;
    p.wait_for_devices(1).await;

    // The caller starts the trace.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let response = p
        .http
        .post(format!("{}/v1/notifications", p.api))
        .bearer_auth(p.back_office())
        .header("traceparent", &traceparent)
        .json(&notification(
            "high",
            &["traced-customer"],
            "Outage cleared",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let answered = response.headers()["traceparent"].to_str().unwrap();
    assert_eq!(
        xibaar_streams::trace::trace_id(answered),
        Some(trace_id.as_str()),
        "the api answers with the trace it continued: {answered}"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    let id = body["notification_id"].as_str().unwrap().to_owned();
    let status = p.wait_completed(&id, Duration::from_secs(30)).await;
    assert_eq!(status["sent"], 1, "{status}");
    let pushed: Vec<_> = p
        .standin
        .received()
        .into_iter()
        .filter_map(|r| r.token)
        .collect();
    assert_eq!(pushed, vec!["tok-traced".to_owned()]);

    // Every role logged about it under the caller's trace id.
    let expect = [
        ("api", "notification accepted"),
        ("dispatcher", "fanned out"),
        ("dispatcher", "pushed"),
        ("projector", "applied; commits with its batch"),
    ];
    let found = eventually(Duration::from_secs(20), || async {
        expect
            .iter()
            .all(|(role, message)| {
                lines_with(&logs.path().join(format!("{role}.log")), &trace_id)
                    .iter()
                    .any(|l| l["fields"]["message"] == *message)
            })
            .then_some(())
    })
    .await;
    for (role, message) in expect {
        let lines = lines_with(&logs.path().join(format!("{role}.log")), &trace_id);
        assert!(
            found.is_some() || lines.iter().any(|l| l["fields"]["message"] == message),
            "{role} logged no `{message}` line with trace id {trace_id}: {lines:#?}"
        );
    }
    // The projector's lines name the events of this notification, all of them in the trace.
    let projected: Vec<String> = lines_with(&logs.path().join("projector.log"), &trace_id)
        .iter()
        .filter_map(|l| l["fields"]["event"].as_str().map(str::to_owned))
        .collect();
    for event in [
        "notification.accepted",
        "notification.fanned_out",
        "delivery.page_succeeded",
    ] {
        assert!(
            projected.iter().any(|e| e == event),
            "{event} not in {projected:?}"
        );
    }

    // The messages themselves carry it: the command and the events. (The delivery job left its
    // work-queue stream when it was acked; the dispatcher's `pushed` line above is in the trace
    // only because the job carried it.)
    let js = p.jetstream().await;
    for stream in ["XIBAAR_CMD_HIGH", "XIBAAR_EVENTS"] {
        let stream_handle = js.get_stream(stream).await.unwrap();
        let last = p.stream_messages(stream).await;
        let mut traced = 0;
        for seq in 1..=last {
            let Ok(message) = stream_handle.get_raw_message(seq).await else {
                continue;
            };
            let in_trace = message
                .headers
                .get("traceparent")
                .and_then(|v| xibaar_streams::trace::trace_id(v.as_str()))
                == Some(trace_id.as_str());
            traced += usize::from(in_trace);
        }
        assert!(traced >= 1, "no message of {stream} is in the trace");
    }

    // And every process exported spans of it over OTLP.
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let exported_by = |service: &str| {
        exported
            .lock()
            .unwrap()
            .iter()
            .any(|body| contains(body, service.as_bytes()) && contains(body, &trace_bytes))
    };
    let all_exported = eventually(Duration::from_secs(20), || async {
        ["xibaar-api", "xibaar-dispatcher", "xibaar-projector"]
            .iter()
            .all(|s| exported_by(s))
            .then_some(())
    })
    .await;
    assert!(
        all_exported.is_some(),
        "spans exported: api {}, dispatcher {}, projector {}",
        exported_by("xibaar-api"),
        exported_by("xibaar-dispatcher"),
        exported_by("xibaar-projector")
    );
}

//! The production FCM client against the stand-in, over real HTTP/2.

use std::{collections::BTreeMap, path::Path, time::Duration};

use chrono::Utc;
use xibaar_config::{FcmApp, FcmConfig};
use xibaar_core::{
    Content, CustomerId, DeliveryJob, DeviceId, FcmToken, NotificationId, Platform, Priority,
};
use xibaar_fcm::{FcmClient, FcmClientError, FcmErrorCode, Message};
use xibaar_fcm_standin::{ErrorRule, ScriptedError, StandIn, StandInConfig};

const APP: &str = "1:42:android:test";

fn client(standin: &StandIn, dir: &Path) -> FcmClient {
    let key = dir.join("sa.json");
    xibaar_fcm_standin::write_service_account(&key, &standin.token_uri()).unwrap();
    client_with_key(standin, key)
}

fn client_with_key(standin: &StandIn, key: std::path::PathBuf) -> FcmClient {
    FcmClient::new(&config(standin, key)).unwrap()
}

/// The configuration of one app on the stand-in, its key at `key`.
fn config(standin: &StandIn, key: std::path::PathBuf) -> FcmConfig {
    FcmConfig {
        endpoint: standin.url(),
        apps: vec![FcmApp {
            app_id: APP.into(),
            project_id: "xibaar-local".into(),
            service_account_file: key,
        }],
        ..FcmConfig::default()
    }
}

/// A client keeping to `per_minute` messages for the project.
fn limited_client(standin: &StandIn, dir: &Path, per_minute: u32) -> FcmClient {
    let key = dir.join("sa.json");
    xibaar_fcm_standin::write_service_account(&key, &standin.token_uri()).unwrap();
    FcmClient::new(&FcmConfig {
        rate_limit_per_minute: std::num::NonZeroU32::new(per_minute).unwrap(),
        ..config(standin, key)
    })
    .unwrap()
}

fn message(token: &str, priority: Priority) -> Message {
    Message::for_job(&DeliveryJob {
        notification_id: NotificationId::generate(),
        priority,
        device_id: DeviceId::parse("d1").unwrap(),
        customer_id: CustomerId::parse("c1").unwrap(),
        token: FcmToken::parse(token).unwrap(),
        platform: Platform::Android,
        app_id: APP.into(),
        content: Content {
            title: "Power cut".into(),
            body: "Your area is without power until 14:00".into(),
            data: BTreeMap::from([("kind".into(), "outage".into())]),
            image_url: None,
            ..Default::default()
        },
        delivery: xibaar_core::DeliveryOptions::default(),
        correlation_id: "c".into(),
        accepted_at: Utc::now(),
    })
}

async fn fcm_error(client: &FcmClient, token: &str) -> xibaar_fcm::FcmError {
    match client.send(APP, &message(token, Priority::Normal)).await {
        Err(FcmClientError::Fcm(e)) => e,
        other => panic!("expected an FCM error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_message_reaches_fcm_with_one_token_exchange() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&standin, dir.path());
    for _ in 0..3 {
        let sent = client
            .send(APP, &message("tok-1", Priority::Urgent))
            .await
            .unwrap();
        assert!(
            sent.name.starts_with("projects/xibaar-local/messages/"),
            "{}",
            sent.name
        );
    }
    assert_eq!(standin.tokens_issued(), 1, "the access token is cached");
    let received = standin.received();
    assert_eq!(received.len(), 3);
    let m = &received[0].message;
    assert_eq!(m["token"], "tok-1");
    assert_eq!(m["notification"]["title"], "Power cut");
    assert_eq!(m["data"]["kind"], "outage");
    assert_eq!(m["android"]["priority"], "HIGH");
    assert_eq!(m["apns"]["headers"]["apns-priority"], "10");
}

#[tokio::test]
async fn every_error_class_is_classified_as_fcm_documents_it() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&standin, dir.path());
    let cases = [
        (
            ScriptedError::Unregistered,
            FcmErrorCode::Unregistered,
            "invalid",
        ),
        (
            ScriptedError::SenderIdMismatch,
            FcmErrorCode::SenderIdMismatch,
            "invalid",
        ),
        (
            ScriptedError::InvalidToken,
            FcmErrorCode::InvalidArgument,
            "invalid",
        ),
        (
            ScriptedError::InvalidArgument,
            FcmErrorCode::InvalidArgument,
            "rejected",
        ),
        (
            ScriptedError::QuotaExceeded,
            FcmErrorCode::QuotaExceeded,
            "retry",
        ),
        (
            ScriptedError::Unavailable,
            FcmErrorCode::Unavailable,
            "retry",
        ),
        (ScriptedError::Internal, FcmErrorCode::Internal, "retry"),
        (
            ScriptedError::ThirdPartyAuthError,
            FcmErrorCode::ThirdPartyAuthError,
            "credentials",
        ),
    ];
    for (i, (scripted, code, class)) in cases.into_iter().enumerate() {
        let token = format!("tok-{i}");
        standin.add_rule(
            ErrorRule::for_token(&token, scripted)
                .times(1)
                .retry_after(9),
        );
        let e = fcm_error(&client, &token).await;
        assert_eq!(e.code, code, "{scripted:?}");
        let got = if e.token_is_invalid() {
            "invalid"
        } else if e.is_retryable() {
            "retry"
        } else if e.is_credential_failure() {
            "credentials"
        } else {
            "rejected"
        };
        assert_eq!(got, class, "{scripted:?}");
        if class == "retry" {
            assert_eq!(e.retry_after, Some(Duration::from_secs(9)), "{scripted:?}");
        }
        if class == "credentials" {
            // The project's credentials are refused: its circuit opens (see the circuit test).
            assert_eq!(
                client.circuit_state(APP),
                Some(xibaar_fcm::CircuitState::Open)
            );
            continue;
        }
        // The rule was used up: the same token now goes through.
        client
            .send(APP, &message(&token, Priority::Low))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_revoked_access_token_is_refreshed_once() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&standin, dir.path());
    client
        .send(APP, &message("t", Priority::High))
        .await
        .unwrap();
    standin.revoke_tokens();
    client
        .send(APP, &message("t", Priority::High))
        .await
        .unwrap();
    assert_eq!(standin.tokens_issued(), 2);
    // A 401 that persists after the refresh is returned, not retried for ever.
    standin.add_rule(ErrorRule::always(ScriptedError::Unauthenticated));
    assert_eq!(
        fcm_error(&client, "t").await.code,
        FcmErrorCode::Unauthenticated
    );
}

#[tokio::test]
async fn the_quota_is_enforced_per_minute_with_retry_after() {
    let standin = StandIn::start(StandInConfig {
        quota_per_minute: 2,
        ..StandInConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&standin, dir.path());
    client
        .send(APP, &message("a", Priority::Low))
        .await
        .unwrap();
    client
        .send(APP, &message("b", Priority::Low))
        .await
        .unwrap();
    let e = fcm_error(&client, "c").await;
    assert_eq!(e.code, FcmErrorCode::QuotaExceeded);
    let wait = e.retry_after.expect("Retry-After on 429");
    assert!(wait <= Duration::from_secs(60));
}

#[tokio::test]
async fn a_key_the_token_endpoint_does_not_know_is_refused() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sa.json");
    xibaar_fcm_standin::write_service_account(&key, &standin.token_uri()).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&key).unwrap()).unwrap();
    json["client_email"] = "someone-else@elsewhere.iam.gserviceaccount.com".into();
    std::fs::write(&key, json.to_string()).unwrap();
    let client = client_with_key(&standin, key);
    match client.send(APP, &message("t", Priority::Low)).await {
        Err(FcmClientError::Token(xibaar_fcm::TokenError::Refused {
            status: 400, body, ..
        })) => {
            assert!(body.contains("invalid_grant"), "{body}");
        }
        other => panic!("expected the token request to be refused, got {other:?}"),
    }
    assert_eq!(standin.accepted_count(), 0);
}

#[tokio::test]
async fn the_project_rate_limit_spaces_requests_so_the_quota_is_never_hit() {
    // 1,200/min = 20/s with a bucket of 2: 42 messages cannot all go out in under 2 s, and the
    // stand-in, enforcing the same quota, answers none of them with 429.
    let standin = StandIn::start(StandInConfig {
        quota_per_minute: 1_200,
        ..StandInConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = std::sync::Arc::new(limited_client(&standin, dir.path(), 1_200));
    let started = std::time::Instant::now();
    let sends = (0..42).map(|i| {
        let client = client.clone();
        async move {
            client
                .send(APP, &message(&format!("t{i}"), Priority::Low))
                .await
        }
    });
    for result in futures::future::join_all(sends).await {
        result.expect("sent within the quota");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((standin.accepted_count(), standin.error_count()), (42, 0));
}

#[tokio::test]
async fn urgent_messages_take_the_next_cell_ahead_of_a_queue_of_low_ones() {
    // 600/min = one message per 100 ms. 40 low messages queue for four seconds; urgent ones
    // sent meanwhile go out with the next free cell.
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = std::sync::Arc::new(limited_client(&standin, dir.path(), 600));
    let lows: Vec<_> = (0..40)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .send(APP, &message(&format!("low{i}"), Priority::Low))
                    .await
            })
        })
        .collect();
    let mut waits = Vec::new();
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let started = std::time::Instant::now();
        client
            .send(APP, &message(&format!("urgent{i}"), Priority::Urgent))
            .await
            .expect("sent");
        waits.push(started.elapsed());
    }
    for low in lows {
        low.await.unwrap().expect("sent");
    }
    // Two cells at most: the one the current waiter is taking, then the urgent message's.
    assert!(
        waits.iter().all(|w| *w < Duration::from_millis(250)),
        "urgent messages waited {waits:?}"
    );
    let order: Vec<_> = standin
        .received()
        .into_iter()
        .filter_map(|r| r.token)
        .collect();
    let last_urgent = order.iter().rposition(|t| t.starts_with("urgent")).unwrap();
    assert!(
        last_urgent < 25,
        "the urgent messages went out at {last_urgent}: {order:?}"
    );
}

#[tokio::test]
async fn an_open_circuit_refuses_without_calling_fcm_and_a_probe_closes_it() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sa.json");
    xibaar_fcm_standin::write_service_account(&key, &standin.token_uri()).unwrap();
    let client = FcmClient::new(&FcmConfig {
        circuit_open_for: Duration::from_millis(300),
        circuit_max_open_for: Duration::from_secs(1),
        ..config(&standin, key)
    })
    .unwrap();
    standin.add_rule(ErrorRule::always(ScriptedError::ThirdPartyAuthError));
    assert_eq!(
        fcm_error(&client, "a").await.code,
        FcmErrorCode::ThirdPartyAuthError
    );
    assert_eq!(
        client.circuit_state(APP),
        Some(xibaar_fcm::CircuitState::Open)
    );
    assert!(client.paused_for().is_some());
    match client.send(APP, &message("b", Priority::Urgent)).await {
        Err(FcmClientError::CircuitOpen { retry_in, .. }) => {
            assert!(retry_in <= Duration::from_millis(300));
        }
        other => panic!("expected the open circuit to refuse, got {other:?}"),
    }
    assert_eq!(standin.error_count(), 1, "nothing reached FCM while open");
    standin.clear_rules();
    tokio::time::sleep(Duration::from_millis(350)).await;
    client
        .send(APP, &message("c", Priority::Urgent))
        .await
        .expect("the probe goes through");
    assert_eq!(
        client.circuit_state(APP),
        Some(xibaar_fcm::CircuitState::Closed)
    );
    assert!(client.paused_for().is_none());
}

#[tokio::test]
async fn the_standins_record_is_read_completely_with_a_cursor_while_pushes_arrive() {
    let standin = StandIn::start(StandInConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = client(&standin, dir.path());
    let sent = 3_000;
    use futures::StreamExt;
    let pushes = futures::stream::iter(0..sent)
        .map(|i| {
            let client = &client;
            async move {
                client
                    .send(APP, &message(&format!("t-{i}"), Priority::Normal))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>();
    let http = reqwest::Client::new();
    let read = async {
        // Pages of at most 500 while the pushes arrive, until every push is read.
        let (mut after, mut tokens) = (0_u64, Vec::new());
        while tokens.len() < sent {
            let page: serde_json::Value = http
                .get(format!(
                    "{}/__standin/messages?after={after}&limit=500",
                    standin.url()
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for m in page["messages"].as_array().unwrap() {
                assert_eq!(m["seq"], after + 1, "numbered without gaps");
                after += 1;
                tokens.push(m["token"].as_str().unwrap().to_owned());
            }
            assert_eq!(page["next"], after);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokens
    };
    let ((), mut tokens) = tokio::join!(
        async {
            pushes.await;
        },
        read
    );
    tokens.sort_by_key(|t| t[2..].parse::<u32>().unwrap());
    let expected: Vec<String> = (0..sent).map(|i| format!("t-{i}")).collect();
    assert_eq!(tokens, expected, "every push read exactly once");
}

/// FCM allows 100 concurrent streams per HTTP/2 connection: 400 requests in flight at a
/// latency of half a second are carried by four connections side by side, not queued behind
/// one (which would hold at most 100 at the stand-in at any moment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_one_connections_streams_open_more_connections() {
    let standin = StandIn::start(StandInConfig {
        latency: Duration::from_millis(500),
        latency_jitter: Duration::from_millis(100),
        ..StandInConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sa.json");
    xibaar_fcm_standin::write_service_account(&key, &standin.token_uri()).unwrap();
    let client = FcmClient::new(&FcmConfig {
        concurrency: 400,
        ..config(&standin, key)
    })
    .unwrap();
    let sends = (0..400).map(|i| {
        let client = &client;
        async move {
            client
                .send(APP, &message(&format!("tok-{i}"), Priority::Normal))
                .await
        }
    });
    let results = futures::future::join_all(sends).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(client.connections(), 4);
    // The stand-in's own count includes the connection that fetched the access token.
    assert!(standin.connections() >= 4, "{}", standin.connections());
    assert!(
        standin.peak_in_flight() > 100,
        "requests queued behind one connection: at most {} at the stand-in at once",
        standin.peak_in_flight()
    );
    // The stand-in's own answer times, which benchmarks measure a client's part against: never
    // below the latency it was given (500 ± 100 ms), each message from its arrival.
    assert!(standin.answer_time(0.0) >= Duration::from_millis(400));
    assert!(standin.answer_time(100.0) >= standin.answer_time(50.0));
    let received = standin.received();
    assert_eq!(received.len(), 400);
    for r in received {
        let answered_after = r.received_at - r.arrived_at;
        assert!(
            answered_after >= chrono::TimeDelta::milliseconds(400),
            "{answered_after}"
        );
    }
}

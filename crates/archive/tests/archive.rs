//! The archive against real servers: nats-server and an S3 server that checks signatures.

use std::time::Duration;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use xibaar_archive::{
    ArchiveStore, Archiver, ArchiverSettings,
    archiver::{archive_bucket, read_position},
    replay, restore, segment, verify,
};
use xibaar_streams::{
    Definitions, names,
    replay::{Filter, Replayed},
};
use xibaar_testkit::{NatsServer, S3Server, eventually};

async fn jetstream_with_streams(nats: &NatsServer) -> jetstream::Context {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    xibaar_streams::apply(&js, &Definitions::builtin())
        .await
        .unwrap();
    js
}

fn store(s3: &S3Server) -> ArchiveStore {
    let config = xibaar_config::Config::from_toml(&format!("[archive]\n{}", s3.archive_toml()))
        .unwrap()
        .archive;
    ArchiveStore::from_config(&config).unwrap()
}

fn settings(max_events: u64) -> ArchiverSettings {
    ArchiverSettings {
        max_events,
        max_bytes: 1 << 20,
        max_age: Duration::from_millis(500),
        lease: Duration::from_secs(2),
    }
}

/// Events shaped as the pipeline stores them: a type in the envelope and the subject, an id
/// in `Nats-Msg-Id`.
async fn publish(js: &jetstream::Context, from: u64, count: u64) {
    let mut acks = Vec::new();
    for n in from..from + count {
        let notification = uuid::Uuid::now_v7();
        let (kind, subject) = if n % 3 == 0 {
            (
                "delivery.failed",
                format!("xibaar.evt.delivery.{notification}.failed"),
            )
        } else {
            (
                "notification.accepted",
                format!("xibaar.evt.notification.{notification}.accepted"),
            )
        };
        let payload = serde_json::json!({
            "id": format!("event-{n}"),
            "type": kind,
            "occurred_at": "2026-12-02T19:00:00Z",
            "data": {"notification_id": notification, "customer_id": format!("c{}", n % 7), "n": n},
        });
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("event-{n}").as_str(),
        );
        headers.insert("Xibaar-Type", kind);
        acks.push(
            js.publish_with_headers(
                subject,
                headers,
                serde_json::to_vec(&payload).unwrap().into(),
            )
            .await
            .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

fn spawn_archiver(
    js: &jetstream::Context,
    s3: &S3Server,
    settings: ArchiverSettings,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let shutdown = CancellationToken::new();
    let archiver = Archiver::new(js.clone(), store(s3), settings);
    let task = tokio::spawn(archiver.run(shutdown.clone()));
    (shutdown, task)
}

async fn head(js: &jetstream::Context) -> u64 {
    js.get_stream(names::EVENTS)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence
}

/// Waits until the archived position reaches the stream's head.
async fn archived_to_head(js: &jetstream::Context) {
    let kv = archive_bucket(js).await.unwrap();
    let target = head(js).await;
    let reached = eventually(Duration::from_secs(60), || async {
        let (position, _) = read_position(&kv).await.ok()?;
        (position.last_sequence >= target).then_some(())
    })
    .await;
    let (position, _) = read_position(&kv).await.unwrap();
    assert!(
        reached.is_some(),
        "archived through {} of {target}",
        position.last_sequence
    );
}

async fn replay_all(
    js: &jetstream::Context,
    archive: Option<&ArchiveStore>,
    filter: &Filter,
) -> Vec<(u64, bytes::Bytes)> {
    let mut out = Vec::new();
    replay::replay(
        js,
        archive,
        filter,
        |r: Replayed| {
            out.push((r.sequence, r.raw));
            Ok(())
        },
        |_, _, _| {},
    )
    .await
    .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_segments_verify_replay_as_the_stream_did_and_restore_at_their_sequences() {
    let (nats, s3) = (
        NatsServer::start().await.unwrap(),
        S3Server::start().await.unwrap(),
    );
    let js = jetstream_with_streams(&nats).await;
    publish(&js, 1, 2_500).await;
    let (shutdown, task) = spawn_archiver(&js, &s3, settings(300));
    archived_to_head(&js).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let archive = store(&s3);
    let report = verify::verify(&archive, None, None, |_| {}).await.unwrap();
    assert!(report.is_sound(), "{report:?}");
    assert_eq!(
        (report.events, report.first_sequence, report.last_sequence),
        (2_500, Some(1), Some(2_500))
    );
    assert_eq!(
        report.segments, 9,
        "300 events per segment, the last one sealed by age"
    );

    // What a stream that never dropped anything replays …
    let filters = [
        Filter::default(),
        Filter {
            types: vec!["delivery.failed".into()],
            ..Filter::default()
        },
        Filter {
            customer: Some("c3".into()),
            ..Filter::default()
        },
    ];
    let mut whole = Vec::new();
    for f in &filters {
        whole.push(replay_all(&js, None, f).await);
    }
    assert_eq!(whole[0].len(), 2_500);
    // … the archive and the stream replay alike once the stream kept only its last 651 (its
    // first event in the middle of a segment).
    js.get_stream(names::EVENTS)
        .await
        .unwrap()
        .purge()
        .sequence(1_850)
        .await
        .unwrap();
    assert!(
        replay::replay(&js, None, &Filter::default(), |_| Ok(()), |_, _, _| {})
            .await
            .unwrap()
            == 651
    );
    for (f, expected) in filters.iter().zip(&whole) {
        assert_eq!(&replay_all(&js, Some(&archive), f).await, expected, "{f:?}");
    }
    // A time range reaching back into the archive: from segment 901..=1200's first event on.
    let since = archive.index(1_000).await.unwrap()[0].first_time;
    let from_time = replay_all(
        &js,
        Some(&archive),
        &Filter {
            since: Some(since),
            ..Filter::default()
        },
    )
    .await;
    assert!(
        (1_600..2_500).contains(&from_time.len()),
        "{}",
        from_time.len()
    );
    assert_eq!(from_time, whole[0][2_500 - from_time.len()..].to_vec());
    assert_eq!(from_time[0].0, 901);

    // A time range ending inside the archive: up to segment 301..=600's last event.
    let until = archive.index(400).await.unwrap()[0].last_time;
    let to_time = replay_all(
        &js,
        Some(&archive),
        &Filter {
            until: Some(until),
            ..Filter::default()
        },
    )
    .await;
    assert!((600..1_000).contains(&to_time.len()), "{}", to_time.len());
    assert_eq!(to_time, whole[0][..to_time.len()].to_vec());

    // A fresh server after a disaster gets every event back at its sequence, once.
    let fresh = NatsServer::start().await.unwrap();
    let fresh_js = jetstream_with_streams(&fresh).await;
    let restored = restore::restore(&fresh_js, &archive, 1, None, |_| {})
        .await
        .unwrap();
    assert_eq!((restored.restored, restored.already_there), (2_500, 0));
    assert_eq!(
        replay_all(&fresh_js, None, &Filter::default()).await,
        whole[0]
    );
    let again = restore::restore(&fresh_js, &archive, 1, None, |_| {})
        .await
        .unwrap();
    assert_eq!((again.restored, again.already_there), (0, 2_500));
    let stored = fresh_js
        .get_stream(names::EVENTS)
        .await
        .unwrap()
        .get_raw_message(1_234)
        .await
        .unwrap();
    assert_eq!(
        stored
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str()),
        Some("event-1234")
    );
    // Part of a range into a fresh stream starts at the range's first sequence.
    let partial = NatsServer::start().await.unwrap();
    let partial_js = jetstream_with_streams(&partial).await;
    let part = restore::restore(&partial_js, &archive, 1_000, Some(1_999), |_| {})
        .await
        .unwrap();
    assert_eq!(
        (part.first_sequence, part.last_sequence, part.restored),
        (Some(1_000), Some(1_999), 1_000)
    );
    assert_eq!(
        replay_all(&partial_js, None, &Filter::default()).await,
        whole[0][999..1_999].to_vec()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_away_for_a_while_is_caught_up_without_a_gap() {
    let (nats, s3) = (
        NatsServer::start().await.unwrap(),
        S3Server::start().await.unwrap(),
    );
    let js = jetstream_with_streams(&nats).await;
    let (shutdown, task) = spawn_archiver(&js, &s3, settings(200));
    publish(&js, 1, 500).await;
    archived_to_head(&js).await;
    s3.stop();
    publish(&js, 501, 700).await;
    // The archiver meets a closed port for a while, segments waiting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kv = archive_bucket(&js).await.unwrap();
    assert!(read_position(&kv).await.unwrap().0.last_sequence <= 600);
    s3.start_again().await.unwrap();
    archived_to_head(&js).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let report = verify::verify(&store(&s3), None, None, |_| {})
        .await
        .unwrap();
    assert!(report.is_sound(), "{report:?}");
    assert_eq!((report.events, report.last_sequence), (1_200, Some(1_200)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_archivers_at_once_neither_overwrite_nor_leave_a_gap() {
    let (nats, s3) = (
        NatsServer::start().await.unwrap(),
        S3Server::start().await.unwrap(),
    );
    let js = jetstream_with_streams(&nats).await;
    let first = spawn_archiver(&js, &s3, settings(150));
    publish(&js, 1, 300).await;
    archived_to_head(&js).await;
    // A second one while the first works: it stands by.
    let second = spawn_archiver(&js, &s3, settings(150));
    publish(&js, 301, 300).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The first dies mid-stream without a word (its lease is not released); the second takes
    // over once the lease runs out.
    first.1.abort();
    let _ = first.1.await;
    publish(&js, 601, 600).await;
    archived_to_head(&js).await;
    second.0.cancel();
    second.1.await.unwrap().unwrap();
    let archive = store(&s3);
    let report = verify::verify(&archive, None, None, |_| {}).await.unwrap();
    assert!(report.is_sound(), "{report:?}");
    assert_eq!((report.events, report.last_sequence), (1_200, Some(1_200)));
    let replayed = replay_all(&js, None, &Filter::default()).await;
    js.get_stream(names::EVENTS)
        .await
        .unwrap()
        .purge()
        .sequence(1_201)
        .await
        .unwrap();
    assert_eq!(
        replay_all(&js, Some(&archive), &Filter::default()).await,
        replayed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_uploaded_by_a_run_that_stopped_before_its_manifest_is_sealed_by_the_next() {
    let (nats, s3) = (
        NatsServer::start().await.unwrap(),
        S3Server::start().await.unwrap(),
    );
    let js = jetstream_with_streams(&nats).await;
    publish(&js, 1, 400).await;
    // What a run killed between the segment and its manifest leaves: events 1..=250 uploaded.
    let archive = store(&s3);
    let mut writer = segment::Writer::default();
    let stream = js.get_stream(names::EVENTS).await.unwrap();
    for sequence in 1..=250 {
        let m = stream.direct_get(sequence).await.unwrap();
        writer.push(&segment::Record {
            sequence,
            subject: m.subject.to_string(),
            time: chrono::DateTime::from_timestamp_nanos(m.time.unix_timestamp_nanos() as i64),
            headers: m
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        v.iter().map(|v| v.as_str().to_owned()).collect(),
                    )
                })
                .collect(),
            payload: m.payload.clone(),
        });
    }
    let (body, _) = writer.finish().unwrap();
    archive
        .put_new(&archive.segment_key(1), body, "application/gzip")
        .await
        .unwrap();

    let (shutdown, task) = spawn_archiver(&js, &s3, settings(1_000));
    archived_to_head(&js).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let report = verify::verify(&archive, None, None, |_| {}).await.unwrap();
    assert!(report.is_sound(), "{report:?}");
    assert_eq!(
        (report.segments, report.events),
        (2, 400),
        "the uploaded segment kept, the rest after it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_damaged_segment_and_a_missing_one() {
    let (nats, s3) = (
        NatsServer::start().await.unwrap(),
        S3Server::start().await.unwrap(),
    );
    let js = jetstream_with_streams(&nats).await;
    publish(&js, 1, 300).await;
    let (shutdown, task) = spawn_archiver(&js, &s3, settings(100));
    archived_to_head(&js).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let archive = store(&s3);
    // Damage the first segment on disk and remove the second's manifest.
    let bucket = s3.root().join(xibaar_testkit::s3_credentials::BUCKET);
    let segment = bucket.join("xibaar/XIBAAR_EVENTS/segments/00000000000000000001.ndjson.gz");
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();
    let manifests = bucket.join("xibaar/XIBAAR_EVENTS/manifests");
    let third = std::fs::read_dir(&manifests)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("00000000000000000101")
        })
        .unwrap();
    std::fs::remove_file(third).unwrap();
    let report = verify::verify(&archive, None, None, |_| {}).await.unwrap();
    assert!(!report.is_sound());
    assert_eq!(
        report.damaged.iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![1]
    );
    assert!(
        report.damaged[0].1.contains("checksum"),
        "{:?}",
        report.damaged
    );
    assert_eq!(report.gaps, vec![(101, 200)]);
    assert_eq!(report.last_sequence, Some(300));
}

use async_nats::jetstream::stream::RetentionPolicy;
use xibaar_streams::{ApplyError, Change, Definitions};
use xibaar_testkit::NatsServer;

#[tokio::test]
async fn applying_streams_is_idempotent_and_refuses_a_retention_change() {
    let nats = NatsServer::start().await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let defs = Definitions::builtin();

    let first = xibaar_streams::apply(&js, &defs).await.unwrap();
    assert!(
        first.iter().all(|c| matches!(c, Change::Created { .. })),
        "{first:?}"
    );
    assert_eq!(first.len(), 12 + 8);
    let second = xibaar_streams::apply(&js, &defs).await.unwrap();
    assert!(
        second.iter().all(|c| matches!(c, Change::Unchanged { .. })),
        "{second:?}"
    );

    // A changed limit is updated in place.
    let mut longer = defs.clone();
    let dlq = longer
        .streams
        .iter_mut()
        .find(|s| s.config.name == "XIBAAR_DLQ")
        .unwrap();
    dlq.config.max_age = std::time::Duration::from_secs(60 * 86400);
    dlq.declared
        .insert("max_age".into(), (60u64 * 86400 * 1_000_000_000).into());
    let third = xibaar_streams::apply(&js, &longer).await.unwrap();
    assert!(
        third.contains(&Change::Updated {
            name: "XIBAAR_DLQ".into(),
            fields: vec!["max_age".into()]
        }),
        "{third:?}"
    );

    // Retention cannot change in place: refused, naming the stream and the field.
    let mut wrong = defs.clone();
    let events = wrong
        .streams
        .iter_mut()
        .find(|s| s.config.name == "XIBAAR_EVENTS")
        .unwrap();
    events.config.retention = RetentionPolicy::WorkQueue;
    events
        .declared
        .insert("retention".into(), "workqueue".into());
    let err = xibaar_streams::apply(&js, &wrong).await.unwrap_err();
    assert!(
        matches!(
            err,
            ApplyError::Incompatible {
                field: "retention",
                ..
            }
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("XIBAAR_EVENTS") && message.contains("retention"),
        "{message}"
    );
}

#[tokio::test]
async fn coalesced_publishes_each_get_their_own_ack_or_error() {
    use async_nats::jetstream::context::PublishErrorKind;
    use xibaar_streams::CoalescingPublisher;

    let nats = NatsServer::start().await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "COALESCE".into(),
            subjects: vec!["coalesce.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let publisher = CoalescingPublisher::spawn(js.clone());
    let with_id = |id: &str| xibaar_streams::traced_headers(id, "test", None);

    // 250 publishes from as many tasks at once, 10 of them to a subject no stream takes.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..250u32 {
        let (publisher, headers) = (publisher.clone(), with_id(&format!("m-{i}")));
        let subject = if i % 25 == 7 {
            format!("nowhere.{i}")
        } else {
            format!("coalesce.{i}")
        };
        tasks.spawn(async move {
            let ack = publisher
                .publish(subject, headers, i.to_string().into())
                .await?
                .await;
            Ok::<_, async_nats::jetstream::context::PublishError>((i, ack))
        });
    }
    let mut sequences = Vec::new();
    for (i, ack) in tasks.join_all().await.into_iter().map(Result::unwrap) {
        match ack {
            Ok(ack) => {
                assert_ne!(i % 25, 7, "a publish to no stream was acknowledged");
                assert!(!ack.duplicate);
                let stored = stream.get_raw_message(ack.sequence).await.unwrap();
                assert_eq!(stored.subject.as_str(), format!("coalesce.{i}"));
                assert_eq!(stored.payload, i.to_string().as_bytes());
                sequences.push(ack.sequence);
            }
            Err(e) => {
                assert_eq!(i % 25, 7, "publish {i} failed: {e}");
                assert_eq!(e.kind(), PublishErrorKind::StreamNotFound, "{e}");
            }
        }
    }
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=240).collect::<Vec<u64>>());

    // A repeated message id is still recognised as one.
    let again = publisher
        .publish("coalesce.3".into(), with_id("m-3"), "3".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(stream.info().await.unwrap().state.messages, 240);
}

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
    assert_eq!(first.len(), 9 + 8);
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

//! The sources' statuses as `xibaar sources status` and the ops page list them, against
//! JetStream for real.

use std::time::Duration;

use async_nats::jetstream;
use xibaar_sources::{SourceStatus, state};
use xibaar_streams::Definitions;
use xibaar_testkit::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_rewritten_while_the_statuses_are_listed_is_never_missed() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    xibaar_streams::apply(&js, &Definitions::builtin())
        .await
        .unwrap();
    let store = state::bucket(&js).await.unwrap();
    let running = SourceStatus {
        state: "running".into(),
        ..Default::default()
    };
    state::publish_status(&store, "bills", &running).await;
    // A running source rewrites its position and status every poll; here every few
    // milliseconds, as fast as a source with no poll interval could.
    let writer = {
        let store = store.clone();
        let running = running.clone();
        tokio::spawn(async move {
            loop {
                store.put("position.bills", "{}".into()).await.unwrap();
                state::publish_status(&store, "bills", &running).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut missed = 0;
    for _ in 0..300 {
        let statuses = state::statuses(&js).await.unwrap();
        match statuses.get("bills") {
            Some(s) => assert_eq!(s, &running),
            None => missed += 1,
        }
    }
    writer.abort();
    assert_eq!(missed, 0, "listings that missed a running source, of 300");
}

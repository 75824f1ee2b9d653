use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures::StreamExt;
use xibaar_testkit::eventually;

use crate::support::{Pipeline, checkpoint, notification};

/// The real `xibaar projector` process; SIGKILLed on drop.
struct ProjectorProcess(Child);

impl ProjectorProcess {
    fn spawn(p: &Pipeline) -> Self {
        let port = crate::support::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_xibaar"))
            .arg("--config")
            .arg(&p.config_path)
            .arg("projector")
            .env("XIBAAR_OPS__LISTEN", format!("127.0.0.1:{port}"))
            .env("XIBAAR_PROJECTOR__BATCH_SIZE", "25")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }

    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for ProjectorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_projector_mid_stream_converges_without_double_counts() {
    let p = Pipeline::start_roles(xibaar::Roles {
        api: true,
        dispatcher: true,
        projector: false,
        archiver: false,
        sources: false,
    })
    .await;
    let projector = ProjectorProcess::spawn(&p);
    for i in 0..5 {
        p.register_device(&format!("c{i}"), &format!("phone-{i}"), &format!("tok-{i}"))
            .await;
    }
    p.wait_for_devices(5).await;

    let sent: Vec<()> = futures::stream::iter(0..400)
        .map(|i| {
            let p = &p;
            async move {
                let body = notification(
                    ["urgent", "low"][i % 2],
                    &[&format!("c{}", i % 5)],
                    "bill ready",
                );
                assert_eq!(p.send(&body, None).await.status(), 202);
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    assert_eq!(sent.len(), 400);

    // Kill it while it is projecting, twice.
    let mut projector = Some(projector);
    for round in 0..2 {
        let before = checkpoint(&p.pool).await;
        eventually(Duration::from_secs(30), || async {
            (checkpoint(&p.pool).await > before + 50).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("the projector made no progress in round {round}"));
        projector.take().unwrap().kill();
        projector = Some(ProjectorProcess::spawn(&p));
    }

    // 5 registrations + 400 × (accepted, fanned_out, succeeded).
    let expected_events = 5 + 400 * 3;
    let converged = eventually(Duration::from_secs(60), || async {
        (checkpoint(&p.pool).await == expected_events).then_some(())
    })
    .await;
    assert!(
        converged.is_some(),
        "checkpoint stuck at {}",
        checkpoint(&p.pool).await
    );
    assert_eq!(
        p.stream_messages("XIBAAR_EVENTS").await,
        expected_events as u64
    );

    let (notifications, targeted, sent, completed): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(targeted)::bigint, sum(sent)::bigint, count(*) FILTER (WHERE status = 'completed')
         FROM notifications",
    )
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!(
        (notifications, targeted, sent, completed),
        (400, 400, 400, 400)
    );
    let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&p.pool)
        .await
        .unwrap();
    assert_eq!(deliveries, 400);
    let over: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE sent <> 1 OR targeted <> 1")
            .fetch_one(&p.pool)
            .await
            .unwrap();
    assert_eq!(over, 0, "no double counts");
    assert_eq!(p.standin.accepted_count(), 400);
}

use serde_json::Value;

use crate::support::Pipeline;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_and_metrics_answer() {
    let mut p = Pipeline::start().await;
    for probe in ["live", "startup", "ready"] {
        let r = p
            .http
            .get(format!("{}/health/{probe}", p.ops))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{probe}");
    }
    let ready: Value = p
        .http
        .get(format!("{}/health/ready", p.ops))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["postgres"], "ok");

    // Postgres down: not ready (the dispatcher and projector need it), and it says why.
    p.pg.stop();
    let r = p
        .http
        .get(format!("{}/health/ready", p.ops))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_ne!(body["checks"]["postgres"], "ok");
    p.pg.restart().await.unwrap();

    let accepted = p
        .send(&crate::support::notification("low", &["nobody"], "t"), None)
        .await;
    assert_eq!(accepted.status(), 202);
    let metrics = p.metrics().await;
    assert!(
        metrics.contains(
            "xibaar_api_notifications_accepted_total{priority=\"low\",replayed=\"false\"} 1"
        ),
        "{metrics}"
    );
    p.stop_roles().await;
}

//! The ops page in headless Chromium (Debian's `chromium` and `chromium-driver`, installed by
//! `scripts/install-tools`): it needs an `ops:read` token, shows live figures over SSE, and
//! they move while broadcasts run. The screenshot is saved under `target/tmp/ops-page.png`.

use std::{
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use fantoccini::{ClientBuilder, Locator};
use serde_json::json;
use xibaar_testkit::{KillOnDrop, eventually};

use crate::support::Pipeline;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn number(text: &str) -> Option<f64> {
    text.replace([',', '%', ' '], "").parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_page_shows_live_figures_that_move_while_broadcasts_run() {
    assert!(
        std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists(),
        "the ops page test needs Debian's chromium and chromium-driver; scripts/install-tools installs them"
    );
    let p = Pipeline::start().await;
    p.seed_devices(2_000).await;

    // The figures need the ops scope; the page itself holds none.
    let stream = format!("{}/v1/ops/stream", p.api);
    let anonymous = p.http.get(&stream).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let customer = p.http.get(&stream).bearer_auth(p.token("c1", &[])).send();
    assert_eq!(customer.await.unwrap().status(), 403);
    let page = p.http.get(format!("{}/ops", p.api)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Xibaar operations"));

    let port = crate::support::free_port();
    let _driver = KillOnDrop(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let webdriver = format!("http://127.0.0.1:{port}");
    let up = eventually(Duration::from_secs(20), || async {
        p.http
            .get(format!("{webdriver}/status"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    assert!(up.is_some(), "chromedriver did not start");
    let profile = tempfile::tempdir().unwrap();
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1200",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }
    });
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities.as_object().unwrap().clone())
        .connect(&webdriver)
        .await
        .expect("a headless Chromium session");

    let text = |id: &'static str| {
        let browser = browser.clone();
        async move { browser.find(Locator::Id(id)).await.ok()?.text().await.ok() }
    };

    // Without a token the page asks for one.
    browser.goto(&format!("{}/ops", p.api)).await.unwrap();
    let asked = eventually(Duration::from_secs(10), || async {
        (text("status").await? == "no token").then_some(())
    })
    .await;
    assert!(asked.is_some(), "the page did not ask for a token");

    let token = p.token("ops-console", &["ops:read"]);
    browser
        .goto(&format!("{}/ops#token={token}", p.api))
        .await
        .unwrap();
    let live = eventually(Duration::from_secs(15), || async {
        (text("status").await? == "live" && text("updated").await? != "—").then_some(())
    })
    .await;
    assert!(
        live.is_some(),
        "no figures arrived: status {:?}",
        text("status").await
    );
    let pushed_before = number(&text("pushes-total").await.unwrap()).unwrap();

    // Broadcasts to the 2,000 devices until the test has seen the figures move.
    let running = Arc::new(AtomicBool::new(true));
    let load = {
        let running = running.clone();
        let (http, api, auth) = (p.http.clone(), p.api.clone(), p.back_office());
        tokio::spawn(async move {
            let mut sent = 0;
            while running.load(Ordering::Relaxed) && sent < 40 {
                let r = http
                    .post(format!("{api}/v1/notifications"))
                    .bearer_auth(&auth)
                    .json(&json!({
                        "priority": "normal",
                        "audience": { "kind": "everyone" },
                        "content": { "title": format!("Load {sent}"), "body": "Ops page test" },
                    }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                sent += 1;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        })
    };

    let moving = eventually(Duration::from_secs(40), || async {
        let rate = number(&text("push-rate").await?)?;
        let total = number(&text("pushes-total").await?)?;
        (rate > 0.0 && total > pushed_before).then_some(total)
    })
    .await
    .expect("pushes per second and the push total never moved on the page");
    let later = eventually(Duration::from_secs(20), || async {
        let total = number(&text("pushes-total").await?)?;
        (total > moving).then_some(total)
    })
    .await;
    assert!(
        later.is_some(),
        "the push total stayed at {moving} while broadcasts ran"
    );
    let events = number(&text("event-rate").await.unwrap()).unwrap_or(0.0);
    let accepted = number(&text("accepted-rate").await.unwrap()).unwrap_or(0.0);
    assert!(
        events > 0.0 || accepted > 0.0,
        "events/s {events}, accepted/s {accepted}"
    );

    // The tables are filled: four priorities, the consumers, the project's closed circuit.
    let priorities = browser
        .find_all(Locator::Css("#priorities tbody tr"))
        .await
        .unwrap();
    assert_eq!(priorities.len(), 4);
    let consumers = browser
        .find_all(Locator::Css("#consumers tbody tr"))
        .await
        .unwrap();
    assert_eq!(
        consumers.len(),
        8,
        "four command and four delivery consumers"
    );
    let circuits = browser
        .find(Locator::Css("#circuits tbody"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(circuits.contains("xibaar-local"), "{circuits}");
    assert!(circuits.contains("closed"), "{circuits}");

    let png = browser.screenshot().await.unwrap();
    running.store(false, Ordering::Relaxed);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000);
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ops-page.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
    browser.close().await.unwrap();
    load.await.unwrap();
}

//! A notification in several languages: each device gets the text of its locale's language, or
//! the default; each customer's inbox shows their language.

use std::time::Duration;

use serde_json::{Value, json};
use xibaar_testkit::eventually;

use crate::support::Pipeline;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_device_and_inbox_reads_its_own_language_or_the_default() {
    let p = Pipeline::start().await;
    p.register_device_in("awa", "phone", "tok-wolof", Some("wo-SN"))
        .await;
    p.register_device_in("binta", "phone", "tok-french", Some("fr-SN"))
        .await;
    p.register_device_in("chris", "phone", "tok-english", Some("en-GB"))
        .await;
    p.register_device("dior", "phone", "tok-no-locale").await;
    p.wait_for_devices(4).await;

    let body = json!({
        "priority": "high",
        "audience": { "kind": "customers", "customer_ids": ["awa", "binta", "chris", "dior"] },
        "content": {
            "title": "Facture disponible", "body": "Montant : 12 500 FCFA",
            "language": "fr",
            "translations": {
                "wo": { "title": "Sa faktiir jot na", "body": "Xaalis bi : 12 500 FCFA" },
                "en": { "title": "Bill ready", "body": "Amount: 12,500 FCFA" }
            }
        },
        "category": "billing",
    });
    let id = p.accept(&body).await;
    p.wait_completed(&id, Duration::from_secs(30)).await;

    let pushed: Vec<(String, String, String)> = p
        .standin
        .received()
        .into_iter()
        .map(|r| {
            let n = &r.message["notification"];
            (
                r.token.unwrap(),
                n["title"].as_str().unwrap().to_owned(),
                n["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let text = |token: &str| {
        pushed
            .iter()
            .find(|(t, _, _)| t == token)
            .map(|(_, title, body)| (title.as_str(), body.as_str()))
            .unwrap_or_else(|| panic!("no push to {token}: {pushed:?}"))
    };
    assert_eq!(pushed.len(), 4, "{pushed:?}");
    assert_eq!(
        text("tok-wolof"),
        ("Sa faktiir jot na", "Xaalis bi : 12 500 FCFA")
    );
    assert_eq!(
        text("tok-french"),
        ("Facture disponible", "Montant : 12 500 FCFA")
    );
    assert_eq!(text("tok-english"), ("Bill ready", "Amount: 12,500 FCFA"));
    assert_eq!(
        text("tok-no-locale"),
        ("Facture disponible", "Montant : 12 500 FCFA"),
        "no locale: the default"
    );

    for (customer, title, language) in [
        ("awa", "Sa faktiir jot na", "wo"),
        ("binta", "Facture disponible", "fr"),
        ("chris", "Bill ready", "en"),
        ("dior", "Facture disponible", "fr"),
    ] {
        let item = eventually(Duration::from_secs(30), || async {
            let page: Value = p
                .http
                .get(format!("{}/v1/me/inbox", p.api))
                .bearer_auth(p.token(customer, &[]))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            page["items"].get(0).cloned()
        })
        .await
        .unwrap_or_else(|| panic!("{customer}'s inbox stayed empty"));
        assert_eq!(item["title"], title, "{customer}");
        assert_eq!(item["language"], language, "{customer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translations_without_a_default_language_are_refused_naming_the_field() {
    let p = Pipeline::start_without_dispatcher().await;
    let body = json!({
        "priority": "normal",
        "audience": { "kind": "customers", "customer_ids": ["awa"] },
        "content": {
            "title": "Facture", "body": "…",
            "translations": { "wo": { "title": "Faktiir", "body": "…" }, "EN": { "title": "x", "body": "y" } }
        },
    });
    let r = p.send(&body, None).await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let problem: Value = r.json().await.unwrap();
    let text = problem.to_string();
    assert!(text.contains("EN"), "the bad language is named: {text}");

    let body = json!({
        "priority": "normal",
        "audience": { "kind": "customers", "customer_ids": ["awa"] },
        "content": {
            "title": "Facture", "body": "…",
            "translations": { "wo": { "title": "", "body": "…" } }
        },
    });
    let r = p.send(&body, None).await;
    assert_eq!(r.status(), 422);
    let problem: Value = r.json().await.unwrap();
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["content.language", "content.translations.wo.title"],
        "{problem}"
    );
}

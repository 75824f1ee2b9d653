//! SQL Server sources end to end: rows in the utility's databases (the testkit's TDS server)
//! become pushes at the FCM stand-in, in each device's language, exactly once across a kill -9
//! of the sources role; customer attributes from a customers source steer segment audiences.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};
use xibaar_testkit::{
    SqlServer, SqlTable, eventually,
    tds::{ColumnDefinition, ColumnValue, SqlDataType},
};

use crate::support::Pipeline;

const WAIT: Duration = Duration::from_secs(60);

const BILLS: &str = "SELECT TOP (@P1) BILL_ID, CUSTOMER_ID, AMOUNT, DUE FROM DBO.BILLS \
                     WHERE BILL_ID > @P2 ORDER BY BILL_ID";
const CUSTOMERS: &str = "SELECT TOP (@P1) VERSION, CUSTOMER_ID, COMMUNE, CONTRACT, LANG \
                         FROM DBO.CUSTOMERS WHERE VERSION > @P2 ORDER BY VERSION";
const OUTAGES: &str = "SELECT TOP (@P1) OUTAGE_ID, COMMUNE, STARTS FROM DBO.OUTAGES \
                       WHERE OUTAGE_ID > @P2 ORDER BY OUTAGE_ID";

fn sql_connection(server: &SqlServer) -> String {
    format!(
        "[sql.cis]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"xibaar\"\npassword = \"s3cret\"\n\
         encrypt = \"danger_plaintext\"\nquery_timeout = \"2s\"\n",
        server.port()
    )
}

fn text(s: &str) -> ColumnValue {
    ColumnValue::NVarChar(s.to_owned())
}

fn bill(id: i64) -> Vec<ColumnValue> {
    vec![
        ColumnValue::BigInt(id),
        text(&format!("cust-{}", id % 10)),
        ColumnValue::BigInt(12_000 + id),
        text("2026-12-15"),
    ]
}

/// The pushes the stand-in accepted: (token, notification id, title, body).
fn pushes(p: &Pipeline) -> Vec<(String, String, String, String)> {
    p.standin
        .received()
        .into_iter()
        .map(|r| {
            let m = &r.message;
            (
                r.token.unwrap(),
                m["data"]["xibaar_notification_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                m["notification"]["title"].as_str().unwrap().to_owned(),
                m["notification"]["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The notification ids stored in `XIBAAR_CMD_NORMAL`, page after page, in order.
async fn stored_notifications(p: &Pipeline) -> Vec<String> {
    let js = p.jetstream().await;
    let mut stream = js.get_stream("XIBAAR_CMD_NORMAL").await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut ids = Vec::new();
    if state.messages == 0 {
        return ids;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let message = stream.direct_get(seq).await.unwrap();
        let command: xibaar_core::Command = serde_json::from_slice(&message.payload).unwrap();
        ids.extend(
            command
                .notifications()
                .iter()
                .map(|n| n.notification_id.to_string()),
        );
    }
    ids
}

async fn position(p: &Pipeline, source: &str) -> Value {
    let kv = p
        .jetstream()
        .await
        .get_key_value("XIBAAR_SOURCES")
        .await
        .unwrap();
    let value = kv
        .get(format!("position.{source}"))
        .await
        .unwrap()
        .unwrap_or_default();
    serde_json::from_slice(&value).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bills_become_pushes_in_each_language_exactly_once_across_a_kill() {
    let sql = SqlServer::start().await.unwrap();
    sql.serve(SqlTable {
        statement: BILLS.into(),
        columns: vec![
            ColumnDefinition::new("BILL_ID", SqlDataType::BigInt),
            ColumnDefinition::new("CUSTOMER_ID", SqlDataType::NVarChar),
            ColumnDefinition::new("AMOUNT", SqlDataType::BigInt),
            ColumnDefinition::new("DUE", SqlDataType::NVarChar),
        ],
        rows: (1..=200).map(bill).collect(),
        watermark: vec![0],
    });
    let nats = crate::support::Nats::Server(xibaar_testkit::NatsServer::start().await.unwrap());
    let mut p = Pipeline::prepare_on(nats).await;
    // 100 rows a second in batches of 100: a batch is in flight for a second, and the kill
    // below lands inside one however slow the machine is.
    p.add_toml(
        &(sql_connection(&sql)
            + r#"
[sources.bills]
connection = "cis"
kind = "notifications"
query = "SELECT TOP (@BATCH) BILL_ID, CUSTOMER_ID, AMOUNT, DUE FROM DBO.BILLS WHERE BILL_ID > @WATERMARK ORDER BY BILL_ID"
watermark = ["BILL_ID"]
customer = "CUSTOMER_ID"
start = "beginning"
poll_interval = "100ms"
batch_size = 100
max_rate = 100
category = "billing"
priority = "normal"
default_language = "fr"
[sources.bills.content.fr]
title = "Facture n° {BILL_ID}"
body = "Votre facture de {AMOUNT:fcfa} est à régler avant le {DUE:date}."
[sources.bills.content.wo]
title = "Faktiir n° {BILL_ID}"
body = "Sa faktiir bu {AMOUNT:fcfa} war na ñu ko fey balaa {DUE:date}."
"#),
    );
    p.start_in_process(xibaar::Roles {
        sources: false,
        ..xibaar::Roles::ALL
    })
    .await;
    for i in 0..10 {
        let locale = if i % 2 == 0 { "wo-SN" } else { "fr-SN" };
        p.register_device_in(
            &format!("cust-{i}"),
            "phone",
            &format!("tok-{i}"),
            Some(locale),
        )
        .await;
    }
    p.wait_for_devices(10).await;

    let sources = p.spawn_role("sources", &[], std::process::Stdio::null());
    eventually(WAIT, || async {
        (stored_notifications(&p).await.len() >= 30).then_some(())
    })
    .await
    .expect("the source stores notifications");
    let mut sources = sources;
    sources.0.kill().unwrap();
    sources.0.wait().unwrap();
    let stored_at_kill = stored_notifications(&p).await.len();
    let at_kill = position(&p, "bills").await;
    assert!(
        at_kill["in_flight"].is_object(),
        "killed inside a batch: {at_kill} ({stored_at_kill} commands stored)"
    );
    assert!(stored_at_kill < 200);

    let _sources = p.spawn_role("sources", &[], std::process::Stdio::null());
    let all = eventually(WAIT, || async {
        let all = pushes(&p);
        (all.len() >= 200).then_some(all)
    })
    .await
    .unwrap_or_else(|| panic!("200 pushes; got {}", pushes(&p).len()));
    // Settle: a repeat would come after the rest.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = if pushes(&p).len() > all.len() {
        pushes(&p)
    } else {
        all
    };
    assert_eq!(all.len(), 200, "each bill pushed exactly once");
    // Stored in pages of a tenth of a second's rows (`max_rate` 100), none stored twice.
    let stored = stored_notifications(&p).await;
    assert_eq!(stored.len(), 200, "each bill stored once");
    assert_eq!(p.stream_messages("XIBAAR_CMD_NORMAL").await, 20);
    let mut per_notification: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, id, _, _) in &all {
        *per_notification.entry(id).or_default() += 1;
    }
    assert_eq!(per_notification.len(), 200);
    assert!(per_notification.values().all(|n| *n == 1));

    // French and Wolof devices side by side, each in its own language.
    let push_for = |bill: i64| {
        all.iter()
            .find(|(_, _, title, _)| title.ends_with(&format!("n° {bill}")))
            .unwrap_or_else(|| panic!("bill {bill} pushed"))
    };
    let (token, _, title, body) = push_for(42);
    assert_eq!(token, "tok-2");
    assert_eq!(title, "Faktiir n° 42");
    assert_eq!(
        body,
        "Sa faktiir bu 12\u{202f}042 FCFA war na ñu ko fey balaa 15 desaambar 2026."
    );
    let (token, _, title, body) = push_for(43);
    assert_eq!(token, "tok-3");
    assert_eq!(title, "Facture n° 43");
    assert_eq!(
        body,
        "Votre facture de 12\u{202f}043 FCFA est à régler avant le 15 décembre 2026."
    );

    // The operator's view: what was read and sent on, where it stands.
    let (ok, status) = p.cli(&["sources", "status"]);
    assert!(ok, "{status}");
    let line = status
        .lines()
        .find(|l| l.starts_with("bills"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        line.contains("running") && line.contains(" 200 "),
        "{status}"
    );
}

fn customer(version: i64, id: &str, commune: &str, contract: &str, lang: &str) -> Vec<ColumnValue> {
    vec![
        ColumnValue::BigInt(version),
        text(id),
        text(commune),
        text(contract),
        text(lang),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_outage_reaches_exactly_the_customers_of_its_commune() {
    let sql = SqlServer::start().await.unwrap();
    sql.serve(SqlTable {
        statement: CUSTOMERS.into(),
        columns: vec![
            ColumnDefinition::new("VERSION", SqlDataType::BigInt),
            ColumnDefinition::new("CUSTOMER_ID", SqlDataType::NVarChar),
            ColumnDefinition::new("COMMUNE", SqlDataType::NVarChar),
            ColumnDefinition::new("CONTRACT", SqlDataType::NVarChar),
            ColumnDefinition::new("LANG", SqlDataType::NVarChar),
        ],
        rows: vec![
            customer(1, "awa", "Pikine", "Woyofal", "wo"),
            customer(2, "binta", "Pikine", "postpaid", "fr"),
            customer(3, "coumba", "Dakar-Plateau", "Woyofal", "fr"),
            customer(4, "demba", "Guédiawaye", "postpaid", "wo"),
        ],
        watermark: vec![0],
    });
    sql.serve(SqlTable {
        statement: OUTAGES.into(),
        columns: vec![
            ColumnDefinition::new("OUTAGE_ID", SqlDataType::BigInt),
            ColumnDefinition::new("COMMUNE", SqlDataType::NVarChar),
            ColumnDefinition::new("STARTS", SqlDataType::NVarChar),
        ],
        rows: Vec::new(),
        watermark: vec![0],
    });
    let nats = crate::support::Nats::Server(xibaar_testkit::NatsServer::start().await.unwrap());
    let mut p = Pipeline::prepare_on(nats).await;
    p.add_toml(
        &(sql_connection(&sql)
            + r#"
[sources.customers]
connection = "cis"
kind = "customers"
query = "SELECT TOP (@BATCH) VERSION, CUSTOMER_ID, COMMUNE, CONTRACT, LANG FROM DBO.CUSTOMERS WHERE VERSION > @WATERMARK ORDER BY VERSION"
watermark = ["VERSION"]
key = "CUSTOMER_ID"
customer = "CUSTOMER_ID"
start = "beginning"
poll_interval = "100ms"
attributes = { commune = "COMMUNE", contract = "CONTRACT", language = "LANG" }

[sources.outages]
connection = "cis"
kind = "notifications"
query = "SELECT TOP (@BATCH) OUTAGE_ID, COMMUNE, STARTS FROM DBO.OUTAGES WHERE OUTAGE_ID > @WATERMARK ORDER BY OUTAGE_ID"
watermark = ["OUTAGE_ID"]
segment = { commune = "{COMMUNE}" }
start = "beginning"
poll_interval = "100ms"
category = "outage"
priority = "high"
default_language = "fr"
[sources.outages.content.fr]
title = "Coupure programmée à {COMMUNE}"
body = "Le courant sera coupé le {STARTS:datetime}."
[sources.outages.content.wo]
title = "Dagg bu ñu waajal ci {COMMUNE}"
body = "Dañuy dagg kuuraŋ bi {STARTS:datetime}."
"#),
    );
    p.start_in_process(xibaar::Roles::ALL).await;
    // Binta's phone says French; the others say nothing, and their language comes from the
    // customer system.
    for name in ["awa", "binta", "coumba", "demba"] {
        let locale = (name == "binta").then_some("fr-SN");
        p.register_device_in(name, "phone", &format!("tok-{name}"), locale)
            .await;
    }
    p.wait_for_devices(4).await;
    let customers_known = |n: i64| {
        let pool = p.pool.clone();
        async move {
            eventually(WAIT, || async {
                let count: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
                (count >= n).then_some(())
            })
            .await
            .expect("customer attributes projected");
        }
    };
    customers_known(4).await;

    sql.insert(
        OUTAGES,
        [vec![
            ColumnValue::BigInt(1),
            text("Pikine"),
            text("2026-12-20T09:00:00"),
        ]],
    );
    let outage = eventually(WAIT, || async {
        let all = pushes(&p);
        (all.len() >= 2).then_some(all)
    })
    .await
    .expect("the outage pushed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut reached: Vec<(String, String)> = pushes(&p)
        .into_iter()
        .map(|(token, _, title, _)| (token, title))
        .collect();
    reached.sort();
    assert_eq!(outage.len(), 2);
    assert_eq!(
        reached,
        vec![
            // Awa reads Wolof (her customer record), Binta French (her phone).
            (
                "tok-awa".to_owned(),
                "Dagg bu ñu waajal ci Pikine".to_owned()
            ),
            (
                "tok-binta".to_owned(),
                "Coupure programmée à Pikine".to_owned()
            ),
        ]
    );

    // Coumba moves to Pikine; Binta's record changes her contract only. A segment send from
    // the API now reaches Awa, Binta and Coumba: prepaid customers of Pikine, Awa and Coumba.
    sql.update(
        CUSTOMERS,
        1,
        customer(5, "coumba", "Pikine", "prepaid", "fr"),
    );
    sql.update(
        CUSTOMERS,
        1,
        customer(6, "binta", "Pikine", "postpayé", "fr"),
    );
    eventually(WAIT, || async {
        let communes: Vec<(String, String)> =
            sqlx::query_as("SELECT customer_id, commune FROM customers ORDER BY customer_id")
                .fetch_all(&p.pool)
                .await
                .ok()?;
        (communes
            .iter()
            .any(|(c, commune)| c == "coumba" && commune == "Pikine"))
        .then_some(())
    })
    .await
    .expect("the move projected");
    let id = p
        .accept(&json!({
            "priority": "normal",
            "audience": { "kind": "segment", "commune": "Pikine", "contract": "prepaid" },
            "content": { "title": "Woyofal", "body": "Recharge offerte" },
        }))
        .await;
    p.wait_completed(&id, WAIT).await;
    let mut prepaid: Vec<String> = pushes(&p)
        .into_iter()
        .filter(|(_, n, _, _)| *n == id)
        .map(|(token, _, _, _)| token)
        .collect();
    prepaid.sort();
    assert_eq!(prepaid, vec!["tok-awa", "tok-coumba"]);
}

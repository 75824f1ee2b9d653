//! The sources role against SQL Server at the wire level: tiberius talking TDS to the testkit's
//! server (`mssql-mock-tds` behind a proxy that answers by watermark), and JetStream for real.
//!
//! With `XIBAAR_TEST_MSSQL_ADO` set to an ADO.NET connection string, `against_a_real_server`
//! runs the scenarios a real server can play (login, the parameterized watermark query,
//! paging, a refused login, a query past its timeout) against that server, in a table it
//! creates and drops.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use xibaar_sources::{SourceStatus, state};
use xibaar_streams::Definitions;
use xibaar_testkit::{
    NatsServer, SqlServer, SqlTable, eventually,
    tds::{ColumnDefinition, ColumnValue, SqlDataType},
};

/// The mock matches statements by their upper-cased text: the tested SQL is upper-case.
const QUERY: &str = "SELECT TOP (@BATCH) BILL_ID, CUSTOMER_ID, AMOUNT, DUE, LANG FROM DBO.BILLS \
                     WHERE BILL_ID > @WATERMARK ORDER BY BILL_ID";
/// As tiberius sends it: the names numbered.
const STATEMENT: &str = "SELECT TOP (@P1) BILL_ID, CUSTOMER_ID, AMOUNT, DUE, LANG FROM DBO.BILLS \
                         WHERE BILL_ID > @P2 ORDER BY BILL_ID";
const WAIT: Duration = Duration::from_secs(30);

async fn jetstream_with_streams(nats: &NatsServer) -> jetstream::Context {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    xibaar_streams::apply(&js, &Definitions::builtin())
        .await
        .unwrap();
    js
}

fn bills_table() -> SqlTable {
    SqlTable {
        statement: STATEMENT.into(),
        columns: vec![
            ColumnDefinition::new("BILL_ID", SqlDataType::BigInt),
            ColumnDefinition::new("CUSTOMER_ID", SqlDataType::NVarChar),
            ColumnDefinition::new("AMOUNT", SqlDataType::BigInt),
            ColumnDefinition::new("DUE", SqlDataType::NVarChar),
            ColumnDefinition::new("LANG", SqlDataType::NVarChar),
        ],
        rows: Vec::new(),
        watermark: vec![0],
    }
}

fn bill(id: i64) -> Vec<ColumnValue> {
    vec![
        ColumnValue::BigInt(id),
        ColumnValue::NVarChar(format!("cust-{}", id % 7)),
        ColumnValue::BigInt(12_500 + id),
        ColumnValue::NVarChar("2026-12-15".into()),
        ColumnValue::NVarChar("fr".into()),
    ]
}

fn sql_toml(server: &SqlServer, extra: &str) -> String {
    format!(
        "[sql.billing]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"xibaar\"\npassword = \"s3cret\"\n\
         encrypt = \"danger_plaintext\"\nconnect_timeout = \"2s\"\nquery_timeout = \"1s\"\n{extra}\n",
        server.port()
    )
}

fn source_toml(name: &str, query: &str, batch: u32) -> String {
    format!(
        r#"
[sources.{name}]
connection = "billing"
kind = "notifications"
query = "{query}"
watermark = ["BILL_ID"]
poll_interval = "100ms"
batch_size = {batch}
start = "beginning"
customer = "CUSTOMER_ID"
category = "billing"
default_language = "fr"
collapse_key = "bill-{{BILL_ID}}"
[sources.{name}.content.fr]
title = "Nouvelle facture"
body = "Votre facture de {{AMOUNT:fcfa}} est à régler avant le {{DUE:date}}."
[sources.{name}.content.wo]
title = "Faktiir bu bees"
body = "Sa faktiir bu {{AMOUNT:fcfa}} war na ñu ko fey balaa {{DUE:date}}."
"#
    )
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn start(js: &jetstream::Context, toml: &str) -> Result<Running, String> {
    let config = xibaar_config::Config::from_toml(toml).map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    let runners = xibaar_sources::prepare(&config, js, &stop)
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(xibaar_sources::run(runners));
    Ok(Running { stop, task })
}

async fn status(js: &jetstream::Context, source: &str) -> SourceStatus {
    state::statuses(js)
        .await
        .unwrap()
        .remove(source)
        .unwrap_or_default()
}

async fn wait_status(
    js: &jetstream::Context,
    source: &str,
    what: &str,
    check: impl Fn(&SourceStatus) -> bool,
) -> SourceStatus {
    match eventually(WAIT, || async {
        let s = status(js, source).await;
        check(&s).then_some(s)
    })
    .await
    {
        Some(s) => s,
        None => panic!(
            "source {source}: {what} did not happen; status: {:?}",
            status(js, source).await
        ),
    }
}

/// Every notification stored in XIBAAR_CMD_NORMAL (in pages), by notification id.
async fn commands(js: &jetstream::Context) -> BTreeMap<String, serde_json::Value> {
    let mut stream = js.get_stream("XIBAAR_CMD_NORMAL").await.unwrap();
    let info = stream.info().await.unwrap();
    let mut out = BTreeMap::new();
    if info.state.messages == 0 {
        return out;
    }
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let message = stream.direct_get(seq).await.unwrap();
        // Read as the dispatcher reads it: each notification whole, what its page shares
        // included.
        let command: xibaar_core::Command = serde_json::from_slice(&message.payload).unwrap();
        assert!(
            matches!(command, xibaar_core::Command::SendNotifications(_)),
            "a source stores pages"
        );
        for notification in command.notifications() {
            let id = notification.notification_id.to_string();
            let whole = serde_json::to_value(notification).unwrap();
            assert!(
                out.insert(id.clone(), whole).is_none(),
                "notification {id} stored twice"
            );
        }
    }
    out
}

async fn wait_commands(js: &jetstream::Context, n: usize) -> BTreeMap<String, serde_json::Value> {
    eventually(WAIT, || async {
        let c = commands(js).await;
        (c.len() >= n).then_some(c)
    })
    .await
    .unwrap_or_else(|| panic!("{n} commands were not stored"))
}

#[tokio::test]
async fn rows_become_commands_page_by_page_above_the_watermark() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream_with_streams(&nats).await;
    let server = SqlServer::start().await.unwrap();
    let mut table = bills_table();
    table.rows = (1..=25).map(bill).collect();
    server.serve(table);
    let toml = sql_toml(&server, "") + &source_toml("bills", QUERY, 10);
    let running = start(&js, &toml).await.unwrap();

    let stored = wait_commands(&js, 25).await;
    wait_status(&js, "bills", "reading through row 25", |s| {
        s.watermark == Some(vec![25])
    })
    .await;
    // The check at start reads no row; then pages of 10 above the last watermark, then a
    // poll that finds nothing more.
    let requests: Vec<Vec<i64>> = eventually(WAIT, || async {
        let r: Vec<Vec<i64>> = server.requests().into_iter().map(|r| r.params).collect();
        (r.len() >= 5).then_some(r)
    })
    .await
    .expect("five requests");
    assert_eq!(
        requests[0],
        vec![0, i64::MIN],
        "the columns are read with TOP (0)"
    );
    assert_eq!(requests[1], vec![10, i64::MIN]);
    assert_eq!(requests[2], vec![10, 10]);
    assert_eq!(requests[3], vec![10, 20]);
    assert_eq!(requests[4], vec![10, 25]);

    // A row's command is all of what the source says it becomes, in both languages.
    let one = stored
        .values()
        .find(|c| c["collapse_key"] == "bill-12")
        .expect("row 12's command");
    assert_eq!(one["audience"]["customer_ids"][0], "cust-5");
    assert_eq!(one["category"], "billing");
    assert_eq!(
        one["content"]["body"],
        "Votre facture de 12\u{202f}512 FCFA est à régler avant le 15 décembre 2026."
    );
    assert_eq!(one["content"]["language"], "fr");
    assert_eq!(
        one["content"]["translations"]["wo"]["body"],
        "Sa faktiir bu 12\u{202f}512 FCFA war na ñu ko fey balaa 15 desaambar 2026."
    );

    // New rows are read on the next poll, and only they.
    server.insert(STATEMENT, (26..=28).map(bill));
    let stored = wait_commands(&js, 28).await;
    assert_eq!(stored.len(), 28);
    let s = wait_status(&js, "bills", "reading row 28", |s| {
        s.watermark == Some(vec![28])
    })
    .await;
    assert_eq!(s.emitted, 28);
    assert_eq!(s.rows_read, 28);
    assert_eq!(s.state, "running");
    running.stop().await;

    // Started again, the source goes on from its watermark: nothing is stored twice.
    let before = server.requests().len();
    let running = start(&js, &toml).await.unwrap();
    eventually(WAIT, || async {
        (server.requests().len() > before + 1).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(server.requests()[before + 1].params, vec![10, 28]);
    assert_eq!(commands(&js).await.len(), 28);
    running.stop().await;
}

#[tokio::test]
async fn a_deadlock_is_retried_and_loses_nothing() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream_with_streams(&nats).await;
    let server = SqlServer::start().await.unwrap();
    let mut table = bills_table();
    table.rows = (1..=5).map(bill).collect();
    server.serve(table);
    // The check at start passes; the first two polls are chosen as deadlock victims.
    let toml = sql_toml(&server, "") + &source_toml("bills", QUERY, 100);
    let config = xibaar_config::Config::from_toml(&toml).unwrap();
    let stop = CancellationToken::new();
    let runners = xibaar_sources::prepare(&config, &js, &stop).await.unwrap();
    for _ in 0..2 {
        server.fail_next(
            STATEMENT,
            1205,
            "Transaction (Process ID 57) was deadlocked on lock resources with another process \
             and has been chosen as the deadlock victim. Rerun the transaction.",
        );
    }
    let task = tokio::spawn(xibaar_sources::run(runners));
    let running = Running { stop, task };

    assert_eq!(wait_commands(&js, 5).await.len(), 5);
    let s = wait_status(&js, "bills", "catching up after the deadlocks", |s| {
        s.watermark == Some(vec![5]) && s.state == "running"
    })
    .await;
    assert_eq!(s.errors.get("transient"), Some(&2), "{s:?}");
    assert!(s.last_error.unwrap().contains("1205"));
    running.stop().await;
}

#[tokio::test]
async fn a_refused_login_pauses_the_source_until_resumed_and_the_others_go_on() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream_with_streams(&nats).await;
    let billing = SqlServer::start().await.unwrap();
    let mut table = bills_table();
    table.rows = (1..=3).map(bill).collect();
    billing.serve(table.clone());
    billing.refuse_logins(Some((18456, "Login failed for user 'xibaar'.")));
    // A second source on another server is not held up by the first.
    let other = SqlServer::start().await.unwrap();
    let other_query = QUERY.replace("DBO.BILLS", "DBO.PAYMENTS");
    let other_statement = STATEMENT.replace("DBO.BILLS", "DBO.PAYMENTS");
    other.serve(SqlTable {
        statement: other_statement,
        rows: (101..=104).map(bill).collect(),
        ..table
    });
    let toml = sql_toml(&billing, "")
        + &format!(
            "[sql.payments]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"xibaar\"\n\
             password = \"s3cret\"\nencrypt = \"danger_plaintext\"\n",
            other.port()
        )
        + &source_toml("bills", QUERY, 100)
        + &source_toml("payments", &other_query, 100)
            .replace("connection = \"billing\"", "connection = \"payments\"");
    let running = start(&js, &toml).await.unwrap();

    let s = wait_status(&js, "bills", "pausing on the refused login", |s| {
        s.state == "paused"
    })
    .await;
    assert!(s.last_error.as_deref().unwrap().contains("18456"), "{s:?}");
    assert_eq!(s.errors.get("access"), Some(&1));
    wait_status(&js, "payments", "reading every payment", |s| {
        s.watermark == Some(vec![104])
    })
    .await;
    assert_eq!(commands(&js).await.len(), 4);

    // Paused, it does not knock again.
    let attempts = billing.logins_refused();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(billing.logins_refused(), attempts);

    // The password is fixed; an operator resumes it; it starts from where it was.
    billing.refuse_logins(None);
    xibaar_sources::resume(&js, "bills", false).await.unwrap();
    wait_status(&js, "bills", "reading every bill", |s| {
        s.watermark == Some(vec![3]) && s.state == "running"
    })
    .await;
    assert_eq!(commands(&js).await.len(), 7);
    running.stop().await;
}

#[tokio::test]
async fn a_server_that_stops_answering_is_left_and_polled_again() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream_with_streams(&nats).await;
    let server = SqlServer::start().await.unwrap();
    let mut table = bills_table();
    table.rows = (1..=3).map(bill).collect();
    server.serve(table);
    let toml = sql_toml(&server, "") + &source_toml("bills", QUERY, 100);
    let running = start(&js, &toml).await.unwrap();
    wait_status(&js, "bills", "reading the first rows", |s| {
        s.watermark == Some(vec![3])
    })
    .await;

    server.silence(true);
    server.insert(STATEMENT, (4..=6).map(bill));
    let s = wait_status(&js, "bills", "giving up on the silent server", |s| {
        s.errors.get("transient").is_some_and(|n| *n >= 1)
    })
    .await;
    let error = s.last_error.unwrap();
    assert!(error.contains("did not send"), "{error}");
    assert_eq!(commands(&js).await.len(), 3);

    server.silence(false);
    wait_status(&js, "bills", "reading on once answered", |s| {
        s.watermark == Some(vec![6]) && s.state == "running"
    })
    .await;
    assert_eq!(commands(&js).await.len(), 6);
    running.stop().await;
}

#[tokio::test]
async fn a_permission_denied_pauses_and_resuming_keeps_the_place() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream_with_streams(&nats).await;
    let server = SqlServer::start().await.unwrap();
    let mut table = bills_table();
    table.rows = (1..=4).map(bill).collect();
    server.serve(table);
    let toml = sql_toml(&server, "") + &source_toml("bills", QUERY, 2);
    let config = xibaar_config::Config::from_toml(&toml).unwrap();
    let stop = CancellationToken::new();
    let runners = xibaar_sources::prepare(&config, &js, &stop).await.unwrap();
    // The first page is read; the second is refused.
    let task = tokio::spawn(xibaar_sources::run(runners));
    wait_status(&js, "bills", "reading the first page", |s| {
        s.watermark.is_some()
    })
    .await;
    server.fail_next(
        STATEMENT,
        229,
        "The SELECT permission was denied on the object 'BILLS', database 'CIS', schema 'dbo'.",
    );
    server.insert(STATEMENT, (5..=6).map(bill));
    let s = wait_status(&js, "bills", "pausing on the denied permission", |s| {
        s.state == "paused"
    })
    .await;
    assert!(s.last_error.unwrap().contains("229"));
    let kept = s.watermark.clone();
    xibaar_sources::resume(&js, "bills", false).await.unwrap();
    wait_status(&js, "bills", "reading on", |s| s.watermark == Some(vec![6])).await;
    assert_eq!(
        commands(&js).await.len(),
        6,
        "kept at {kept:?}, nothing lost or repeated"
    );
    Running { stop, task }.stop().await;
}

#[tokio::test]
async fn bad_configuration_stops_the_start_naming_the_source_and_the_key() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream_with_streams(&nats).await;
    let server = SqlServer::start().await.unwrap();
    server.serve(bills_table());
    let good = source_toml("bills", QUERY, 100);

    // A template naming a column the query does not return.
    let toml = sql_toml(&server, "") + &good.replace("{AMOUNT:fcfa} est", "{MONTANT:fcfa} est");
    let error = start(&js, &toml).await.err().expect("refused");
    assert!(
        error.contains("sources.bills.content.fr.body") && error.contains("MONTANT"),
        "{error}"
    );

    // A query SQL Server refuses.
    server.fail_next(STATEMENT, 208, "Invalid object name 'DBO.BILLS'.");
    let toml = sql_toml(&server, "") + &good;
    let error = start(&js, &toml).await.err().expect("refused");
    assert!(
        error.contains("sources.bills.query") && error.contains("208"),
        "{error}"
    );

    // A query without its watermark.
    let toml = sql_toml(&server, "") + &good.replace("WHERE BILL_ID > @WATERMARK ", "");
    let error = start(&js, &toml).await.err().expect("refused");
    assert!(
        error.contains("sources.bills.query") && error.contains("@watermark"),
        "{error}"
    );

    // Missing credentials.
    let toml = sql_toml(&server, "").replace("password = \"s3cret\"\n", "") + &good;
    let error = start(&js, &toml).await.err().expect("refused");
    assert!(
        error.contains("`bills`") && error.contains("sql.billing.password"),
        "{error}"
    );

    // A format that does not exist.
    let toml = sql_toml(&server, "")
        + &good.replace(
            "{DUE:date}.\"\n[sources.bills.content.wo]",
            "{DUE:jour}.\"\n[sources.bills.content.wo]",
        );
    let error = start(&js, &toml).await.err().expect("refused");
    assert!(
        error.contains("sources.bills.content.fr.body") && error.contains("jour"),
        "{error}"
    );
}

/// The scenarios a real SQL Server can play, in a table of its own.
#[tokio::test]
async fn against_a_real_server() {
    let Ok(ado) = std::env::var("XIBAAR_TEST_MSSQL_ADO") else {
        eprintln!("XIBAAR_TEST_MSSQL_ADO is not set: no real SQL Server to test against");
        return;
    };
    real::run(&ado).await;
}

mod real {
    use super::*;
    use tiberius::{Client, Config};
    use tokio::net::TcpStream;
    use tokio_util::compat::TokioAsyncWriteCompatExt;

    async fn client(ado: &str) -> Client<tokio_util::compat::Compat<TcpStream>> {
        let config = Config::from_ado_string(ado).unwrap();
        let tcp = TcpStream::connect(config.get_addr()).await.unwrap();
        Client::connect(config, tcp.compat_write()).await.unwrap()
    }

    pub async fn run(ado: &str) {
        let nats = NatsServer::start().await.unwrap();
        let js = jetstream_with_streams(&nats).await;
        let table = format!("XIBAAR_TEST_BILLS_{}", uuid::Uuid::new_v4().simple());
        let mut sql = client(ado).await;
        sql.execute(
            format!(
                "CREATE TABLE {table} (BILL_ID BIGINT PRIMARY KEY, CUSTOMER_ID NVARCHAR(40), \
                 AMOUNT MONEY, DUE DATE, LANG NVARCHAR(3))"
            ),
            &[],
        )
        .await
        .unwrap();
        let insert = |from: i64, to: i64| {
            let values: Vec<String> = (from..=to)
                .map(|i| {
                    format!(
                        "({i}, 'cust-{}', {}, '2026-12-15', 'fr')",
                        i % 7,
                        12_500 + i
                    )
                })
                .collect();
            format!("INSERT INTO {table} VALUES {}", values.join(", "))
        };
        sql.execute(insert(1, 25), &[]).await.unwrap();
        let connection = format!(
            "[sql.billing]\nado = \"{}\"\nquery_timeout = \"2s\"\n",
            ado.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let query = QUERY.replace("DBO.BILLS", &table);
        let toml = connection.clone() + &source_toml("bills", &query, 10);
        let running = start(&js, &toml).await.unwrap();
        wait_commands(&js, 25).await;
        sql.execute(insert(26, 28), &[]).await.unwrap();
        wait_status(&js, "bills", "reading row 28", |s| {
            s.watermark == Some(vec![28])
        })
        .await;
        let stored = commands(&js).await;
        assert_eq!(stored.len(), 28);
        assert!(stored.values().any(|c| c["content"]["body"]
            == "Votre facture de 12\u{202f}512 FCFA est à régler avant le 15 décembre 2026."));
        running.stop().await;

        // A query slower than its timeout is left and retried.
        let slow = format!(
            "[sources.slow]\nconnection = \"billing\"\nkind = \"customers\"\n\
             query = \"WAITFOR DELAY '00:00:05'; SELECT TOP (@batch) BILL_ID, CUSTOMER_ID, LANG \
             FROM {table} WHERE BILL_ID > @watermark ORDER BY BILL_ID\"\n\
             watermark = [\"BILL_ID\"]\ncustomer = \"CUSTOMER_ID\"\nstart = \"beginning\"\n\
             attributes = {{ language = \"LANG\" }}\n"
        );
        if let Ok(running) = start(&js, &(connection.clone() + &slow)).await {
            wait_status(&js, "slow", "timing out", |s| {
                s.errors.get("transient").is_some_and(|n| *n >= 1)
            })
            .await;
            running.stop().await;
        }

        // A wrong password pauses the source with the server's 18456.
        let wrong = connection.replace("assword=", "assword=wrong-");
        let running = start(&js, &(wrong + &source_toml("denied", &query, 10)))
            .await
            .unwrap();
        let s = wait_status(&js, "denied", "pausing", |s| s.state == "paused").await;
        assert!(s.last_error.unwrap().contains("18456"));
        running.stop().await;

        sql.execute(format!("DROP TABLE {table}"), &[])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_row_that_cannot_become_a_notification_is_dead_lettered_and_the_others_go_on() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream_with_streams(&nats).await;
    let server = SqlServer::start().await.unwrap();
    let mut table = bills_table();
    let mut nameless = bill(2);
    nameless[1] = ColumnValue::NVarChar(String::new());
    table.rows = vec![bill(1), nameless, bill(3)];
    server.serve(table);
    let toml = sql_toml(&server, "") + &source_toml("bills", QUERY, 100);
    let running = start(&js, &toml).await.unwrap();

    let s = wait_status(&js, "bills", "reading every row", |s| {
        s.watermark == Some(vec![3])
    })
    .await;
    assert_eq!((s.emitted, s.rejected), (2, 1), "{s:?}");
    assert_eq!(commands(&js).await.len(), 2);
    let dlq = js.get_stream("XIBAAR_DLQ").await.unwrap();
    let letter = dlq
        .direct_get_last_for_subject("xibaar.dlq.source.bills")
        .await
        .unwrap();
    let reason = letter
        .headers
        .get("Xibaar-Dlq-Reason")
        .map(|v| v.to_string());
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("CUSTOMER_ID")),
        "{:?}",
        letter.headers
    );
    let row: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(row["key"], "2");
    running.stop().await;
}

/// Which shapes of page were stored, in order: `true` for a page that states its common fields
/// once, `false` for one whose notifications are whole.
async fn page_shapes(js: &jetstream::Context) -> Vec<bool> {
    let mut stream = js.get_stream("XIBAAR_CMD_NORMAL").await.unwrap();
    let info = stream.info().await.unwrap();
    let mut shapes = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let Ok(message) = stream.direct_get(seq).await else {
            continue;
        };
        let page: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        let shared = page.get("shared").is_some();
        for notification in page["notifications"].as_array().unwrap() {
            // Stated once or in every notification, never both, never neither.
            for field in [
                "priority",
                "category",
                "requested_by",
                "accepted_at",
                "expires_at",
            ] {
                assert_ne!(
                    notification.get(field).is_some(),
                    page["shared"].get(field).is_some(),
                    "{field} in page {seq}"
                );
            }
        }
        shapes.push(shared);
    }
    shapes
}

/// A page states once what its notifications share (a quarter of their bytes); while a
/// dispatcher of an earlier version, which reads only whole notifications, announces itself,
/// pages go out whole, and once it has been silent for the presence's stale time they state
/// their common fields again. Every page reads back as the same notifications.
#[tokio::test]
async fn pages_go_out_whole_while_a_dispatcher_of_an_earlier_version_runs() {
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream_with_streams(&nats).await;
    let server = SqlServer::start().await.unwrap();
    let mut table = bills_table();
    table.rows = (1..=5).map(bill).collect();
    server.serve(table);
    let toml = sql_toml(&server, "")
        + &source_toml("bills", QUERY, 10).replace(
            "category = \"billing\"\n",
            "category = \"billing\"\nttl = \"1d\"\n",
        );
    let running = start(&js, &toml).await.unwrap();
    wait_commands(&js, 5).await;
    assert_eq!(page_shapes(&js).await, [true]);

    // The previous version announces that it reads delivery pages, and nothing more.
    let earlier = CancellationToken::new();
    let announcing = tokio::spawn({
        let (client, earlier) = (js.client(), earlier.clone());
        async move {
            while !earlier.is_cancelled() {
                client
                    .publish("xibaar.dispatchers.present.earlier", "delivery_page".into())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    // A row at a time until a page goes out with the shape wanted (`shared` or whole).
    let mut next = 6;
    let mut rows_until = async |shared: bool| {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            server.insert(STATEMENT, [bill(next)]);
            wait_commands(&js, next as usize).await;
            next += 1;
            if page_shapes(&js).await.last() == Some(&shared) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no page with `shared` {shared}"
            );
        }
    };
    rows_until(false).await;
    let whole_from = page_shapes(&js).await.len() - 1;
    for _ in 0..3 {
        rows_until(false).await;
    }
    assert!(
        page_shapes(&js).await[whole_from..]
            .iter()
            .all(|shared| !shared)
    );

    // The earlier dispatcher gone: pages state their common fields once again.
    earlier.cancel();
    announcing.await.unwrap();
    rows_until(true).await;
    let stored = commands(&js).await;
    assert_eq!(stored.len(), next as usize - 1);
    for notification in stored.values() {
        assert_eq!(notification["category"], "billing");
        assert_eq!(notification["requested_by"]["id"], "source:bills");
        assert!(notification["expires_at"].is_string());
    }
    running.stop().await;
}

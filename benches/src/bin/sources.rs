//! A SQL Server source: rows per second turned into notifications JetStream has accepted (in
//! pages of a hundred, as the source stores them), against a bare tiberius read of the same
//! rows from the same server (the same statement, paged by the same watermark) just before and
//! just after each source run. The server is the testkit's TDS server (`mssql-mock-tds` behind
//! the proxy that answers by watermark), so both pay the same for it; it runs on a thread of
//! its own, as a server process would.

use std::time::{Duration, Instant};

use tiberius::{AuthMethod, Client, Config, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::{compat::TokioAsyncWriteCompatExt, sync::CancellationToken};
use xibaar_benches::{
    Phase, scale,
    steady::{MAX_ROUNDS, ROUNDS, Rounds},
};
use xibaar_streams::Definitions;
use xibaar_testkit::{
    NatsServer, SqlServer, SqlTable,
    tds::{ColumnDefinition, ColumnValue, SqlDataType},
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: i64 = 2000;
const QUERY: &str = "SELECT TOP (@BATCH) BILL_ID, CUSTOMER_ID, AMOUNT, DUE FROM DBO.BILLS \
                     WHERE BILL_ID > @WATERMARK ORDER BY BILL_ID";
const STATEMENT: &str = "SELECT TOP (@P1) BILL_ID, CUSTOMER_ID, AMOUNT, DUE FROM DBO.BILLS \
                         WHERE BILL_ID > @P2 ORDER BY BILL_ID";

fn table(n: usize) -> SqlTable {
    SqlTable {
        statement: STATEMENT.into(),
        columns: vec![
            ColumnDefinition::new("BILL_ID", SqlDataType::BigInt),
            ColumnDefinition::new("CUSTOMER_ID", SqlDataType::NVarChar),
            ColumnDefinition::new("AMOUNT", SqlDataType::BigInt),
            ColumnDefinition::new("DUE", SqlDataType::NVarChar),
        ],
        rows: (1..=n as i64)
            .map(|id| {
                vec![
                    ColumnValue::BigInt(id),
                    ColumnValue::NVarChar(format!("{:09}", id % 100_000)),
                    ColumnValue::BigInt(5_000 + id % 90_000),
                    ColumnValue::NVarChar("2026-12-15".into()),
                ]
            })
            .collect(),
        watermark: vec![0],
    }
}

/// The TDS server serving `table`, on a thread and runtime of its own as a server process
/// would be, so that it never waits behind the client's tasks on the benchmark's runtime: its
/// port. It lives as long as the benchmark.
fn sql_server_apart(table: SqlTable) -> anyhow::Result<u16> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = tx.send(Err(anyhow::Error::from(e)));
                return;
            }
        };
        runtime.block_on(async move {
            match SqlServer::start().await {
                Ok(sql) => {
                    sql.serve(table);
                    let _ = tx.send(Ok(sql.port()));
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
    });
    rx.recv()?
}

/// Every row read with tiberius alone, page by page above the last id: the least a source
/// spends on SQL Server.
async fn bare_read(sql_port: u16) -> anyhow::Result<usize> {
    let mut config = Config::new();
    config.host("127.0.0.1");
    config.port(sql_port);
    config.authentication(AuthMethod::sql_server("xibaar", "s3cret"));
    config.encryption(EncryptionLevel::NotSupported);
    let tcp = TcpStream::connect(config.get_addr()).await?;
    tcp.set_nodelay(true)?;
    let mut client = Client::connect(config, tcp.compat_write()).await?;
    let mut after = i64::MIN;
    let mut read = 0;
    loop {
        let rows = client
            .query(STATEMENT, &[&BATCH, &after])
            .await?
            .into_first_result()
            .await?;
        read += rows.len();
        match rows.last() {
            Some(last) => after = last.get::<i64, _>(0).unwrap_or(after),
            None => return Ok(read),
        }
        if (rows.len() as i64) < BATCH {
            return Ok(read);
        }
    }
}

/// Where source `name` stands: the watermark of the last row whose notifications JetStream
/// has accepted.
async fn watermark(store: &async_nats::jetstream::kv::Store, name: &str) -> anyhow::Result<i64> {
    let (position, _) = xibaar_sources::state::position(store, name)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(position
        .watermark
        .and_then(|w| w.first().copied())
        .unwrap_or(0))
}

/// Source `name`'s plan, bound to the table's columns.
fn bound_plan(config: &xibaar_config::Config, name: &str) -> anyhow::Result<xibaar_sources::Plan> {
    let mut plan = xibaar_sources::Plan::new(name, &config.sources[name])?;
    let columns: Vec<String> = ["BILL_ID", "CUSTOMER_ID", "AMOUNT", "DUE"]
        .map(String::from)
        .to_vec();
    plan.bind(&columns)?;
    Ok(plan)
}

/// The pages `plan` makes of the table's rows (already in memory), and the time building them
/// took.
fn build_pages(
    plan: &xibaar_sources::Plan,
    table: &SqlTable,
) -> anyhow::Result<(Duration, Vec<xibaar_sources::emit::Message>)> {
    use xibaar_sources::row::{Row, Value};
    let now = chrono::Utc::now();
    let building = Instant::now();
    let mut builder = xibaar_sources::emit::Builder::new(plan, now);
    let notifications = table
        .rows
        .iter()
        .map(|row| {
            let row = Row(row
                .iter()
                .map(|v| match v {
                    ColumnValue::BigInt(n) => Value::Int(*n),
                    ColumnValue::NVarChar(t) => Value::Text(t.clone()),
                    other => unreachable!("the table holds no {other:?}"),
                })
                .collect());
            match builder.build(&row).map_err(anyhow::Error::msg)? {
                xibaar_sources::emit::Emitted::Notification(n) => Ok(n),
                xibaar_sources::emit::Emitted::Event(_) => anyhow::bail!("a notifications source"),
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let messages: Vec<_> = notifications
        .chunks(xibaar_sources::emit::page_rows(plan.max_rate))
        .filter_map(|page| xibaar_sources::emit::page(page.to_vec(), false))
        .collect();
    Ok((building.elapsed(), messages))
}

/// The pages source `name` would store for the table's rows, and the time a bare `Pipeline`
/// (the source's publisher, 512 in flight) takes to store them: what the source's writes cost
/// JetStream alone. Also the time building them took (rows already in memory).
async fn bare_publish(
    js: &async_nats::jetstream::Context,
    config: &xibaar_config::Config,
    name: &str,
    table: &SqlTable,
) -> anyhow::Result<(Duration, Duration)> {
    let plan = bound_plan(config, name)?;
    let (built, messages) = build_pages(&plan, table)?;
    let started = Instant::now();
    let mut pipeline = xibaar_streams::Pipeline::new(js.clone(), 512);
    for m in messages {
        pipeline.publish(m.subject, m.headers, m.payload).await?;
    }
    pipeline.flush().await?;
    Ok((built, started.elapsed()))
}

fn source_toml(sql_port: u16, name: &str) -> String {
    format!(
        r#"
[sql.billing]
host = "127.0.0.1"
port = {port}
user = "xibaar"
password = "s3cret"
encrypt = "danger_plaintext"
[sources.{name}]
connection = "billing"
kind = "notifications"
query = "{QUERY}"
watermark = ["BILL_ID"]
customer = "CUSTOMER_ID"
start = "beginning"
batch_size = {BATCH}
poll_interval = "50ms"
category = "billing"
default_language = "fr"
[sources.{name}.content.fr]
title = "Facture {{BILL_ID}}"
body = "Votre facture de {{AMOUNT:fcfa}} est à régler avant le {{DUE:date}}."
[sources.{name}.content.wo]
title = "Faktiir {{BILL_ID}}"
body = "Sa faktiir bu {{AMOUNT:fcfa}} war na ñu ko fey balaa {{DUE:date}}."
"#,
        port = sql_port
    )
}

/// Source `name` from the first row to the last: until JetStream holds a command for each.
async fn run_source(
    js: &async_nats::jetstream::Context,
    sql_port: u16,
    name: &str,
    n: usize,
) -> anyhow::Result<Duration> {
    let toml = source_toml(sql_port, name);
    let config = xibaar_config::Config::from_toml(&toml)?;
    let store = xibaar_sources::state::bucket(js)
        .await
        .map_err(anyhow::Error::msg)?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let runners = xibaar_sources::prepare(&config, js, &stop).await?;
    let task = tokio::spawn(xibaar_sources::run(runners));
    while watermark(&store, name).await? < n as i64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = started.elapsed();
    stop.cancel();
    task.await?;
    Ok(wall)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As the `xibaar` binary runs: what runs in this process pays for memory what a role does.
    xibaar::without_huge_pages();
    let n = scale(200_000);
    println!(
        "sources: {n} rows in batches of {BATCH}, French and Wolof templates with amounts and dates, {ROUNDS} steady rounds (at most {MAX_ROUNDS}), each source run between two bare reads"
    );
    let nats = NatsServer::start().await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    xibaar_streams::apply(&js, &Definitions::builtin()).await?;
    let rows = table(n);
    let sql_port = sql_server_apart(rows.clone())?;
    let pids = [nats.pid().unwrap_or(0), std::process::id()];
    // For profiling: `XIBAAR_BENCH_ONLY=source` runs the source alone, `=build` builds the
    // notifications and pages alone (no SQL Server, no JetStream), ten rounds each.
    match std::env::var("XIBAAR_BENCH_ONLY").as_deref() {
        Ok("source") => {
            for round in 1..=10 {
                let phase = Phase::start(&pids)?;
                let wall = run_source(&js, sql_port, &format!("only_{round}"), n).await?;
                let cost = phase.finish()?;
                println!(
                    "  source {wall:.2?} = {:.0} rows/s; {}",
                    n as f64 / wall.as_secs_f64(),
                    cost.describe(n as u64, &["nats-server", "source + SQL server"])
                );
            }
            return Ok(());
        }
        Ok("build") => {
            let config = xibaar_config::Config::from_toml(&source_toml(sql_port, "build"))?;
            let plan = bound_plan(&config, "build")?;
            for _ in 1..=10 {
                let (built, _) = build_pages(&plan, &rows)?;
                println!(
                    "  building {:.2} µs per row",
                    built.as_secs_f64() * 1e6 / n as f64
                );
            }
            return Ok(());
        }
        _ => {}
    }
    // Each source run lies between two bare reads and is set against their mean: the
    // machine's speed swings by tens of per cent within minutes. A round whose two reads lie
    // apart compared two speeds of the machine; another round is run in its place
    // (`xibaar_benches::steady`).
    let measure_read = || async {
        let phase = Phase::start(&pids)?;
        let started = Instant::now();
        let read = bare_read(sql_port).await?;
        let bare = started.elapsed();
        let cost = phase.finish()?;
        anyhow::ensure!(read == n, "the bare read saw {read} rows, not {n}");
        Ok::<_, anyhow::Error>((n as f64 / bare.as_secs_f64(), bare, cost))
    };
    let mut before = measure_read().await?;
    let mut rounds = Rounds::default();
    while let Some(round) = rounds.next_round() {
        let phase = Phase::start(&pids)?;
        let wall = run_source(&js, sql_port, &format!("bills_{round}"), n).await?;
        let cost = phase.finish()?;
        let floor_name = format!("floor_{round}");
        let config = xibaar_config::Config::from_toml(&source_toml(sql_port, &floor_name))?;
        let (built, publish) = bare_publish(&js, &config, &floor_name, &rows).await?;
        let after = measure_read().await?;
        let ((before_rate, before_wall, before_cost), (after_rate, ..)) = (&before, &after);
        let rate = n as f64 / wall.as_secs_f64();
        let bare_rate = (before_rate + after_rate) / 2.0;
        let ratio = rate / bare_rate;
        let floor = *before_wall + publish;
        println!(
            "  round {round}: source {wall:.2?} = {rate:.0} rows/s into accepted notifications; bare tiberius read before and after it {before_rate:.0} and {after_rate:.0} rows/s, mean {bare_rate:.0}; ratio {ratio:.2} (target >= 0.5); bare publish of the same pages {publish:.2?} = {:.0}/s; read + publish = {:.0} rows/s, ratio {:.2}",
            n as f64 / publish.as_secs_f64(),
            n as f64 / floor.as_secs_f64(),
            floor.as_secs_f64() / wall.as_secs_f64()
        );
        println!(
            "    building the notifications and pages alone (one thread): {:.1} µs per row",
            built.as_secs_f64() * 1e6 / n as f64
        );
        println!(
            "    source: {}",
            cost.describe(n as u64, &["nats-server", "source + SQL server"])
        );
        println!(
            "    bare read (before): {}",
            before_cost.describe(n as u64, &["nats-server", "client + SQL server"])
        );
        rounds.record(ratio, "bare reads", *before_rate, *after_rate);
        before = after;
    }
    let (median, judged) = rounds.verdict();
    println!(
        "  ratio {judged} (target >= 0.5: {})",
        xibaar_benches::met(median >= 0.5)
    );
    Ok(())
}

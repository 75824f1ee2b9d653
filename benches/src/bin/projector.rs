//! The projector over a broadcast-shaped log (device registrations, then notifications to every
//! device with an outcome per device): events folded per second into the read models, the time
//! of `projections rebuild` over the same log, and `xibaar replay` to NDJSON as a ratio to a
//! bare ordered consumer reading the same stream in the same run.

use std::time::{Duration, Instant};

use xibaar_benches::{Phase, PhaseCost, Servers, scale};
use xibaar_projector::{Projector, ProjectorSettings};

/// The projector runs in this process: it gets the allocator it has in the `xibaar` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use xibaar_benches::{DEVICES, store_log};

type DeliveryRow = (
    uuid::Uuid,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    i32,
    Option<String>,
    chrono::DateTime<chrono::Utc>,
);
type InboxRow = (String, uuid::Uuid, i64, chrono::DateTime<chrono::Utc>);

/// The floor Postgres sets on this machine: the two rows every delivery outcome leaves (its
/// `deliveries` row and the customer's `inbox` item), copied from the projected tables into empty
/// tables of the same definition (same keys, indexes and checks) by plain bulk inserts of `batch`
/// rows a transaction, with nothing read, no conflict handling and no decoding: what no
/// projector of these read models can beat. With `inbox` false only the `deliveries` rows are
/// written, which shows what the inbox items cost. Returns the outcomes written and what the
/// machine spent on the inserts.
async fn postgres_floor(
    pool: &sqlx::PgPool,
    processes: &Processes,
    batch: usize,
    inbox: bool,
) -> anyhow::Result<(usize, PhaseCost)> {
    sqlx::raw_sql(
        "CREATE TABLE floor_deliveries (LIKE deliveries INCLUDING ALL); \
         CREATE TABLE floor_inbox (LIKE inbox INCLUDING ALL);",
    )
    .execute(pool)
    .await?;
    let deliveries: Vec<DeliveryRow> = sqlx::query_as(
        "SELECT notification_id, device_id, customer_id, outcome, reason, error_code, attempts, \
                fcm_message_id, occurred_at \
         FROM deliveries ORDER BY notification_id, device_id",
    )
    .fetch_all(pool)
    .await?;
    let mut items: Vec<InboxRow> = if inbox {
        sqlx::query_as(
            "SELECT customer_id, notification_id, position, received_at FROM inbox ORDER BY position",
        )
        .fetch_all(pool)
        .await?
    } else {
        Vec::new()
    };
    let phase = processes.start()?;
    let mut items = items.chunks_mut(batch);
    for d in deliveries.chunks(batch) {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO floor_deliveries (notification_id, device_id, customer_id, outcome, \
                                           reason, error_code, attempts, fcm_message_id, occurred_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                                  $6::text[], $7::int[], $8::text[], $9::timestamptz[])",
        )
        .bind(d.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.3.as_str()).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.4.as_deref()).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.5.as_deref()).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.6).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.7.as_deref()).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.8).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        if let Some(i) = items.next() {
            i.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            sqlx::query(
                "INSERT INTO floor_inbox (customer_id, notification_id, position, received_at) \
                 SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::bigint[], $4::timestamptz[])",
            )
            .bind(i.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.1).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.2).collect::<Vec<_>>())
            .bind(i.iter().map(|r| r.3).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    let cost = phase.finish()?;
    sqlx::raw_sql("DROP TABLE floor_deliveries; DROP TABLE floor_inbox;")
        .execute(pool)
        .await?;
    Ok((deliveries.len(), cost))
}

/// Whether the server times statements (`XIBAAR_BENCH_PG=shared_preload_libraries=pg_stat_statements`);
/// if so, its counts start from zero now.
async fn statement_timing(pool: &sqlx::PgPool) -> anyhow::Result<bool> {
    let preloaded: String = sqlx::query_scalar("SHOW shared_preload_libraries")
        .fetch_one(pool)
        .await?;
    if !preloaded.contains("pg_stat_statements") {
        return Ok(false);
    }
    sqlx::raw_sql(
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset();",
    )
    .execute(pool)
    .await?;
    Ok(true)
}

/// Where Postgres spent the projector's run: the statements taking the most time, as a share
/// of the run's wall-clock time.
async fn print_statements(pool: &sqlx::PgPool, run: Duration) -> anyhow::Result<()> {
    let rows: Vec<(String, i64, f64, i64)> = sqlx::query_as(
        "SELECT regexp_replace(left(query, 90), '\\s+', ' ', 'g'), calls, total_exec_time, rows \
         FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 10",
    )
    .fetch_all(pool)
    .await?;
    let busy: f64 = sqlx::query_scalar("SELECT sum(total_exec_time) FROM pg_stat_statements")
        .fetch_one(pool)
        .await?;
    let run_ms = run.as_secs_f64() * 1000.0;
    println!(
        "  statements: {:.1} s executing = {:.0} % of the run (top 10 by time):",
        busy / 1000.0,
        100.0 * busy / run_ms
    );
    for (query, calls, ms, rows) in rows {
        println!(
            "    {:>5.1} s {:>4.1} % {calls:>7} calls {rows:>9} rows  {query}",
            ms / 1000.0,
            100.0 * ms / run_ms
        );
    }
    Ok(())
}

/// Reads the whole stream with a bare ordered consumer, as fast as it comes; with `decode`,
/// also decodes every event as the projector's reader does (the least any projector does
/// before it folds anything).
async fn bare_read(
    js: &async_nats::jetstream::Context,
    processes: &Processes,
    head: u64,
    decode: bool,
) -> anyhow::Result<PhaseCost> {
    let phase = processes.start()?;
    xibaar_benches::read_stream(js, head, decode).await?;
    phase.finish()
}

/// `xibaar replay` (by `binary`) of the whole stream to an NDJSON file, its rate and CPU.
async fn replay_once(
    processes: &Processes,
    binary: &std::path::Path,
    (nats_url, database): (&str, &str),
    head: u64,
) -> anyhow::Result<f64> {
    let toml = format!("[nats]\nurl = \"{nats_url}\"\n[postgres]\nurl = \"{database}\"\n");
    let phase = processes.start()?;
    let output = xibaar_benches::run_replay(binary, &toml).await?;
    let cost = phase.finish()?;
    output.check(head)?;
    let rate = head as f64 / cost.wall.as_secs_f64();
    println!(
        "  xibaar replay (NDJSON to a file, {}): {head} events in {:.1?} = {rate:.0} events/s; {}",
        binary.display(),
        cost.wall,
        cpu(&cost, head)
    );
    Ok(rate)
}

/// A bare ordered consumer reading the whole stream: its rate.
async fn bare_once(
    js: &async_nats::jetstream::Context,
    processes: &Processes,
    head: u64,
) -> anyhow::Result<f64> {
    let bare = bare_read(js, processes, head, false).await?;
    let rate = head as f64 / bare.wall.as_secs_f64();
    println!(
        "  bare ordered consumer: {head} events in {:.1?} = {rate:.0} events/s; {}",
        bare.wall,
        cpu(&bare, head)
    );
    Ok(rate)
}

/// Replays by this build, and by the `xibaar` binary `XIBAAR_BENCH_BASELINE` names if any, in
/// turn, `rounds` times, each between two bare reads of the stream: a replay's ratio is its
/// rate over the mean of the bare reads before and after it, so that the machine's swings
/// within a round weigh on both sides. Prints the ratios per binary and their median, the
/// run's figure.
async fn replay_rounds(
    js: &async_nats::jetstream::Context,
    processes: &Processes,
    servers: (&str, &str),
    head: u64,
    rounds: usize,
) -> anyhow::Result<()> {
    let mut binaries = vec![xibaar_benches::xibaar_binary()];
    binaries.extend(std::env::var_os("XIBAAR_BENCH_BASELINE").map(std::path::PathBuf::from));
    // The run's first replay costs 1.5–2.4 times the CPU per event of the replays after it
    // (three runs; the kernel finding pages for its file the first time): one is run, not
    // counted.
    println!("  a first replay, not counted:");
    replay_once(processes, &binaries[0], servers, head).await?;
    let mut ratios = vec![Vec::new(); binaries.len()];
    let mut before = bare_once(js, processes, head).await?;
    for round in 1..=rounds {
        for (i, binary) in binaries.iter().enumerate() {
            let rate = replay_once(processes, binary, servers, head).await?;
            let after = bare_once(js, processes, head).await?;
            let ratio = rate / ((before + after) / 2.0);
            println!(
                "  round {round}: ratio {ratio:.2} of the bare reads around it (target >= 0.9)"
            );
            ratios[i].push(ratio);
            before = after;
        }
    }
    for (binary, mut ratios) in binaries.iter().zip(ratios) {
        let each = format!("{ratios:.2?}");
        let median = xibaar_benches::median(&mut ratios);
        println!(
            "  replay ratios, {}: {each}, median {median:.2} (target >= 0.9: {})",
            binary.display(),
            xibaar_benches::met(median >= 0.9)
        );
    }
    Ok(())
}

/// The processes a phase's CPU time is split by: nats-server and this one (the rest is
/// Postgres, nearly all of it).
struct Processes {
    pids: [u32; 2],
}

impl Processes {
    const NAMES: [&str; 2] = ["nats-server", "this process"];

    fn start(&self) -> anyhow::Result<Phase> {
        Phase::start(&self.pids)
    }
}

/// `41.2 µs of CPU per event (nats-server 9.1, this process 12.0, the rest 20.1), 1.52 cores
/// busy`.
fn cpu(cost: &PhaseCost, events: u64) -> String {
    cost.describe(events, &Processes::NAMES)
}

/// Rounds of projection and floor a run makes: its figure is their median.
const ROUNDS: usize = 3;

/// One round's measures.
struct Projected {
    projector: PhaseCost,
    floor: PhaseCost,
    /// The projector's facts/s as a share of what the floor allows for this log.
    share: f64,
}

/// The live runner catching up from sequence 1 into `pool`'s empty read models, then the
/// Postgres floor over the rows it wrote. `details`: also where Postgres spent the run (when
/// it times statements) and what the deliveries rows alone cost the floor.
async fn project_and_floor(
    js: &async_nats::jetstream::context::Context,
    pool: &sqlx::PgPool,
    processes: &Processes,
    settings: &ProjectorSettings,
    head: u64,
    facts: u64,
    details: bool,
) -> anyhow::Result<Projected> {
    let statements = details && statement_timing(pool).await?;
    let phase = processes.start()?;
    let started = Instant::now();
    let mut projector = Projector::new(js.clone(), pool.clone(), settings.clone());
    let mut registrations = None;
    projector
        .catch_up(head, &mut |reached| {
            if reached >= DEVICES as u64 && registrations.is_none() {
                registrations = Some(started.elapsed());
            }
        })
        .await?;
    drop(projector);
    let projector_cost = phase.finish()?;
    let projected = projector_cost.wall;
    if let Some(r) = registrations {
        println!(
            "    of which the {DEVICES} device registrations: {r:.1?} = {:.0} events/s",
            DEVICES as f64 / r.as_secs_f64()
        );
    }
    let per_second = facts as f64 / projected.as_secs_f64();
    println!(
        "    projector: {facts} facts ({head} events) in {projected:.1?} = {per_second:.0} facts/s"
    );
    println!("      {}", cpu(&projector_cost, facts));
    if statements {
        print_statements(pool, projected).await?;
    }
    let (outcomes, floor) = postgres_floor(pool, processes, settings.batch_size, true).await?;
    let floor_rate = outcomes as f64 / floor.wall.as_secs_f64();
    let outcome_share = outcomes as f64 / facts as f64;
    let share = per_second / (floor_rate / outcome_share);
    println!(
        "    Postgres floor: the {outcomes} outcomes' deliveries and inbox rows by bare bulk inserts in {:.1?} = {floor_rate:.0} outcomes/s, at most {:.0} facts/s of this log; projector = {share:.2} of the floor",
        floor.wall,
        floor_rate / outcome_share,
    );
    println!("      {}", cpu(&floor, facts));
    if details {
        let (_, deliveries_only) =
            postgres_floor(pool, processes, settings.batch_size, false).await?;
        println!(
            "      the deliveries rows alone: {:.1?}, {}",
            deliveries_only.wall,
            cpu(&deliveries_only, facts)
        );
    }
    Ok(Projected {
        projector: projector_cost,
        floor,
        share,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As the `xibaar` binary runs: what runs in this process pays for memory what a role does.
    xibaar::without_huge_pages();
    let n = scale(1_000_000);
    let Servers {
        nats,
        pg,
        database,
        pool,
    } = Servers::start(4).await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let processes = Processes {
        pids: [
            nats.pid()
                .ok_or_else(|| anyhow::anyhow!("nats-server is not running"))?,
            std::process::id(),
        ],
    };
    xibaar_streams::apply(&js, &xibaar_streams::Definitions::builtin()).await?;

    let started = Instant::now();
    let xibaar_benches::Log { head, facts } = store_log(&js, n).await?;
    println!(
        "projector: {head} events stored, {facts} facts (each device's outcome counted once; {DEVICES} devices, broadcasts to all of them) in {:.1?}",
        started.elapsed()
    );
    // `XIBAAR_BENCH_ONLY=replay`: three replay rounds and no projector; with
    // `XIBAAR_BENCH_BASELINE` (another `xibaar` binary), each round replays by both, in turn.
    let nats_url = nats.url();
    let servers = (nats_url.as_str(), database.as_str());
    if std::env::var("XIBAAR_BENCH_ONLY").as_deref() == Ok("replay") {
        return replay_rounds(&js, &processes, servers, head, 3).await;
    }
    let mut settings = ProjectorSettings::from(&xibaar_config::ProjectorConfig::default());
    if let Some(size) = std::env::var("XIBAAR_BENCH_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        settings.batch_size = size;
    }
    println!(
        "  batches of up to {} events, {:?} wait",
        settings.batch_size, settings.batch_wait
    );

    // Projector throughput: the live runner catching up from sequence 1, then the Postgres
    // floor over the rows it wrote, in each of the rounds; the first round projects into the
    // database the rebuild below swaps in, the others into fresh ones.
    let mut shares = Vec::new();
    let (mut projector_cost, mut floor) = (None, None);
    for round in 1..=ROUNDS {
        let (round_pool, round_database) = if round == 1 {
            (pool.clone(), None)
        } else {
            let name = format!("xibaar_round_{round}");
            let url = pg.create_database(&name).await?;
            let round_pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(&url)
                .await?;
            xibaar_store::migrate(&round_pool).await?;
            (round_pool, Some(name))
        };
        println!("  round {round}:");
        let measured = project_and_floor(
            &js,
            &round_pool,
            &processes,
            &settings,
            head,
            facts,
            round == 1,
        )
        .await?;
        shares.push(measured.share);
        if round == 1 {
            (projector_cost, floor) = (Some(measured.projector), Some(measured.floor));
        }
        if let Some(name) = round_database {
            round_pool.close().await;
            pg.drop_database(&name).await?;
        }
    }
    let median = xibaar_benches::median(&mut shares);
    println!(
        "  projector over {ROUNDS} rounds, of the Postgres floor: min {:.2}, median {median:.2} (target >= 0.75: {}), max {:.2}",
        shares[0],
        xibaar_benches::met(median >= 0.75),
        shares[shares.len() - 1]
    );
    let (projector_cost, floor) = (
        projector_cost.expect("round 1 ran"),
        floor.expect("round 1 ran"),
    );
    // Rebuild: the same log into shadow tables, then the swap.
    let phase = processes.start()?;
    let report = xibaar_projector::rebuild::rebuild(
        &js,
        None,
        &pool,
        xibaar_projector::READ_MODELS,
        settings,
        false,
        &mut |_| {},
    )
    .await?;
    let rebuild_cost = phase.finish()?;
    let rebuilt = rebuild_cost.wall;
    let rebuild_rate = facts as f64 / rebuilt.as_secs_f64();
    println!(
        "  rebuild: {facts} facts in {rebuilt:.1?} ({rebuild_rate:.0} facts/s; tables locked {:.1?} for the swap); 10,000,000 facts at this rate: {:.0} s",
        report.swap_held,
        10_000_000.0 / rebuild_rate
    );
    println!("    {}", cpu(&rebuild_cost, facts));

    // Replay to NDJSON against a bare ordered consumer of the same stream.
    let decoding = bare_read(&js, &processes, head, true).await?;
    println!(
        "  a bare ordered consumer decoding every event: {:.1?} = {:.0} events/s; per fact: {}",
        decoding.wall,
        head as f64 / decoding.wall.as_secs_f64(),
        cpu(&decoding, facts)
    );
    replay_rounds(&js, &processes, servers, head, ROUNDS).await?;

    // What any projector of these read models spends per fact at the least: reading and
    // decoding the stream, and the rows' bare inserts; the two cores give at most this rate.
    let least = decoding.cpu_per(facts) + floor.cpu_per(facts);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "  least CPU per fact of any projector of these read models: decoding {:.1} + bare inserts {:.1} = {least:.1} µs; {cores} cores at 100 % = at most {:.0} facts/s (the projector spends {:.1} µs)",
        decoding.cpu_per(facts),
        floor.cpu_per(facts),
        cores * 1e6 / least,
        projector_cost.cpu_per(facts)
    );
    Ok(())
}

//! `xibaar projections rebuild read_models`: the read models folded again from sequence 1 into
//! shadow tables while the live projector keeps serving, then swapped in within one
//! transaction.
//!
//! 1. A schema `xibaar_rebuild` gets the read-model tables, created by the same embedded
//!    migrations (so names, indexes and constraints are the live ones), through a pool whose
//!    `search_path` is that schema: the projector's statements, unqualified, land there.
//! 2. A projector on that pool replays `XIBAAR_EVENTS` from sequence 1 with an ordered
//!    consumer, then catches up with the head again (events keep arriving). What the stream
//!    no longer holds (its retention shortened once an archive holds the events) is read
//!    from the archive's segments first; without an archive such a rebuild is refused.
//! 3. The swap locks the live tables (waiting for the live projector's batch in flight and
//!    holding off its next one), brings the shadow tables up to at least the live checkpoint,
//!    moves the live tables to `xibaar_retired` and the shadow ones to `public`, and commits.
//!    The live projector then continues from the rebuilt checkpoint; statements waiting on the
//!    locks resolve the table names again and reach the new tables.
//! 4. The retired tables are dropped (or kept for comparison with `keep_retired`).

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use sqlx::{AssertSqlSafe, PgPool, postgres::PgPoolOptions};
use xibaar_archive::ArchiveStore;
use xibaar_streams::names;

use crate::{Projector, ProjectorSettings, READ_MODELS, events_head};

/// Where the shadow tables are built.
pub const SHADOW_SCHEMA: &str = "xibaar_rebuild";
/// Where the replaced tables go at the swap.
pub const RETIRED_SCHEMA: &str = "xibaar_retired";
/// The tables of the `read_models` projection, its checkpoint included, swapped as one.
pub const TABLES: [&str; 8] = [
    "projection_checkpoints",
    "devices",
    "preferences",
    "customers",
    "notifications",
    "deliveries",
    "inbox",
    "daily_stats",
];
/// `schema.table, …` for every table of [`TABLES`].
fn qualified(schema: &str) -> String {
    TABLES.map(|t| format!("{schema}.{t}")).join(", ")
}

/// `statement(table)` for every table of [`TABLES`], one after the other.
fn for_each_table(statement: impl Fn(&str) -> String) -> String {
    TABLES.iter().map(|t| statement(t)).collect()
}

/// Attempts at a statement Postgres fails to break a deadlock.
const DEADLOCK_ATTEMPTS: u32 = 10;

/// `once()` until it is not failed to break a deadlock (Postgres's `40P01`), at most
/// [`DEADLOCK_ATTEMPTS`] times, pausing longer each time; its error names `what`.
async fn again_on_deadlock<T, F, Fut>(what: &'static str, mut once: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut attempt = 1;
    loop {
        match once().await {
            Ok(done) => return Ok(done),
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("40P01") && attempt < DEADLOCK_ATTEMPTS =>
            {
                tracing::warn!(
                    attempt,
                    what,
                    "deadlocked with another transaction; retrying"
                );
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(what)),
        }
    }
}

/// Begins the swap's transaction holding every live table exclusively.
///
/// `LOCK TABLE` takes the tables one after the other. A live batch takes the checkpoint first,
/// as the swap does, so the two only queue; but another transaction may hold one table and
/// then want one the swap already holds (an api query reads `inbox`, then `notifications`).
/// Postgres breaks such a deadlock by failing one of the two; the lock is then taken again
/// here (nothing was done under it yet).
async fn lock_live_tables(
    live: &PgPool,
) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let lock = format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        qualified("public")
    );
    let lock = lock.as_str();
    again_on_deadlock("locking the live read models", move || async move {
        let mut tx = live.begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '60s'")
            .execute(&mut *tx)
            .await?;
        sqlx::query(AssertSqlSafe(lock)).execute(&mut *tx).await?;
        Ok(tx)
    })
    .await
}

/// Runs the rebuild's cleanup (`DROP SCHEMA …`, one implicit transaction), again when Postgres
/// breaks a deadlock by failing it.
///
/// A transaction that reached a live table around the swap can still hold a lock on it once
/// it is retired, and ask for another; the drop then deadlocks with it and Postgres fails one
/// of the two (a test's rebuild failed so, with its swap committed). The swap is done by then:
/// the drop is tried again, and goes through once that transaction has ended.
async fn drop_rebuild_schemas(live: &PgPool, cleanup: &str) -> anyhow::Result<()> {
    again_on_deadlock("dropping the rebuild's schemas", move || async move {
        sqlx::raw_sql(AssertSqlSafe(cleanup.to_owned()))
            .execute(live)
            .await
            .map(drop)
    })
    .await
}

/// Serialises rebuilds of one database (a session advisory lock key).
const REBUILD_LOCK: i64 = 0x7869_6261_6172_0001;

/// Where a rebuild is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Folding the log from sequence 1.
    Replaying,
    /// Holding the live tables and applying the last events before the swap.
    Swapping,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub phase: Phase,
    /// The shadow tables' checkpoint.
    pub applied_through: u64,
    /// The head of `XIBAAR_EVENTS` the current phase works towards.
    pub head: u64,
}

/// What a finished rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The checkpoint the rebuilt tables went live with.
    pub checkpoint: u64,
    /// The live projector's checkpoint at the swap.
    pub replaced_checkpoint: u64,
    pub elapsed: Duration,
    /// How long the live tables were locked.
    pub swap_held: Duration,
}

/// Rebuilds `projection` (only `read_models` exists) as described in the module docs.
#[allow(clippy::too_many_arguments)]
pub async fn rebuild(
    js: &jetstream::Context,
    archive: Option<&ArchiveStore>,
    live: &PgPool,
    projection: &str,
    settings: ProjectorSettings,
    keep_retired: bool,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        projection == READ_MODELS,
        "no projection `{projection}`; the projections are: {READ_MODELS}"
    );
    let started = Instant::now();
    let stream_first = {
        let mut stream = js
            .get_stream(names::EVENTS)
            .await
            .context("opening XIBAAR_EVENTS")?;
        stream
            .info()
            .await
            .context("reading XIBAAR_EVENTS")?
            .state
            .first_sequence
    };
    anyhow::ensure!(
        stream_first <= 1 || archive.is_some(),
        "{} starts at sequence {stream_first}: the events before it are only in the archive; \
         configure [archive] to rebuild",
        names::EVENTS
    );
    // Held for the whole rebuild on its own connection: one rebuild at a time.
    // Closed (and the lock with it) when the rebuild ends, however it ends.
    let mut guard = live.acquire().await.context("connecting to Postgres")?;
    guard.close_on_drop();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(REBUILD_LOCK)
        .fetch_one(&mut *guard)
        .await?;
    anyhow::ensure!(locked, "another rebuild of the read models is running");

    // Every identifier in these statements is a constant of this module.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {SHADOW_SCHEMA} CASCADE; CREATE SCHEMA {SHADOW_SCHEMA}"
    )))
    .execute(live)
    .await
    .context("creating the shadow schema")?;
    let shadow_options = live
        .connect_options()
        .as_ref()
        .clone()
        .options([("search_path", SHADOW_SCHEMA)]);
    let shadow = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(shadow_options)
        .await
        .context("connecting to the shadow schema")?;
    xibaar_store::migrate(&shadow)
        .await
        .context("creating the shadow tables")?;
    // No autovacuum on the shadow tables while they fill: the swap must lock them, and a lock
    // request waiting on an autovacuum worker cancels it only after `deadlock_timeout` (1 s
    // by default), per table, while the live tables are already held (a swap once held them
    // 2 s so). They are analysed here instead, and get autovacuum back at the swap.
    sqlx::raw_sql(AssertSqlSafe(for_each_table(|t| {
        format!("ALTER TABLE {SHADOW_SCHEMA}.{t} SET (autovacuum_enabled = false);")
    })))
    .execute(live)
    .await
    .context("turning autovacuum off on the shadow tables")?;

    let mut projector = Projector::new(js.clone(), shadow.clone(), settings);
    projector.announce = false;
    // Replay to the head, then to the head again: what arrived meanwhile is small.
    let mut applied = 0;
    if let Some(store) = archive.filter(|_| stream_first > 1) {
        applied = from_archive(&mut projector, js, store, stream_first - 1, progress).await?;
    }
    // Each pass ends with the statistics autovacuum would have gathered: the second pass's
    // statements, and the swapped-in tables, are planned with them.
    let analyze = format!("ANALYZE {}", qualified(SHADOW_SCHEMA));
    for _ in 0..2 {
        let head = events_head(js).await?;
        applied = phase(&mut projector, Phase::Replaying, applied, head, progress).await?;
        sqlx::raw_sql(AssertSqlSafe(analyze.clone()))
            .execute(live)
            .await
            .context("analysing the shadow tables")?;
    }

    // The swap.
    let mut tx = lock_live_tables(live).await?;
    let held = Instant::now();
    let live_checkpoint: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(last_sequence), 0) FROM public.projection_checkpoints WHERE projection = $1",
    )
    .bind(READ_MODELS)
    .fetch_one(&mut *tx)
    .await?;
    let live_checkpoint = u64::try_from(live_checkpoint).unwrap_or(0);
    // The shadow must hold at least what the live tables hold; more is fine (the live
    // projector skips what the swapped-in checkpoint covers).
    let head = live_checkpoint.max(applied);
    applied = phase(&mut projector, Phase::Swapping, applied, head, progress).await?;
    let mut moves =
        format!("DROP SCHEMA IF EXISTS {RETIRED_SCHEMA} CASCADE; CREATE SCHEMA {RETIRED_SCHEMA};");
    moves.push_str(&for_each_table(|t| {
        format!(
            "ALTER TABLE public.{t} SET SCHEMA {RETIRED_SCHEMA};\
             ALTER TABLE {SHADOW_SCHEMA}.{t} SET SCHEMA public;\
             ALTER TABLE public.{t} RESET (autovacuum_enabled);"
        )
    }));
    sqlx::raw_sql(AssertSqlSafe(moves))
        .execute(&mut *tx)
        .await
        .context("swapping the tables")?;
    tx.commit().await.context("committing the swap")?;
    let swap_held = held.elapsed();
    // The projector keeps a connection of the pool: closing the pool waits for it.
    drop(projector);
    shadow.close().await;

    let mut cleanup = format!("DROP SCHEMA {SHADOW_SCHEMA} CASCADE;");
    if !keep_retired {
        cleanup.push_str(&format!("DROP SCHEMA {RETIRED_SCHEMA} CASCADE;"));
    }
    drop_rebuild_schemas(live, &cleanup).await?;
    progress(Progress {
        phase: Phase::Done,
        applied_through: applied,
        head: applied,
    });
    Ok(Report {
        checkpoint: applied,
        replaced_checkpoint: live_checkpoint,
        elapsed: started.elapsed(),
        swap_held,
    })
}

/// Applies the archived events `1..=through` (those the stream no longer holds), segment by
/// segment, refusing a gap.
async fn from_archive(
    projector: &mut Projector,
    js: &jetstream::Context,
    store: &ArchiveStore,
    through: u64,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> anyhow::Result<u64> {
    let mut next = 1;
    let mut applied = 0;
    for entry in store.index(1).await? {
        if entry.first_sequence > through {
            break;
        }
        anyhow::ensure!(
            entry.first_sequence <= next,
            "the archive has no events {next}..{} (run `xibaar archive verify`)",
            entry.first_sequence - 1
        );
        let messages = store
            .read_segment(&entry)
            .await?
            .iter()
            .filter(|r| r.sequence >= next && r.sequence <= through)
            .map(|r| r.as_stream_message(js))
            .collect();
        let until = entry.last_sequence.min(through);
        applied = projector
            .apply_archived(messages, until, &mut |t| {
                progress(Progress {
                    phase: Phase::Replaying,
                    applied_through: t,
                    head: through,
                })
            })
            .await?;
        next = entry.last_sequence + 1;
    }
    anyhow::ensure!(
        next > through,
        "events {next}..={through} are neither in the archive nor in {} (run `xibaar archive verify`)",
        names::EVENTS
    );
    Ok(applied)
}

/// Brings the shadow from `applied` up to `head`, reporting progress in `phase`.
async fn phase(
    projector: &mut Projector,
    phase: Phase,
    applied: u64,
    head: u64,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> anyhow::Result<u64> {
    progress(Progress {
        phase,
        applied_through: applied,
        head,
    });
    projector
        .catch_up(head, &mut |through| {
            progress(Progress {
                phase,
                applied_through: through,
                head,
            })
        })
        .await
}

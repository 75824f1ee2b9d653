//! The archive, each figure a ratio to a baseline measured in the same run, alternating:
//! - the archiver's events sealed per second (read from the stream, encoded, compressed,
//!   written with their manifests and position) against bare aws-sdk-s3 puts of the very same
//!   segment bytes;
//! - `xibaar replay` of a log held only by the archive against `xibaar replay` of the same log
//!   held by the stream.

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use tokio_util::sync::CancellationToken;
use xibaar_archive::{ArchiveStore, Archiver, ArchiverSettings, archiver::archive_bucket};
use xibaar_benches::{Phase, scale, store_log};
use xibaar_streams::{Definitions, names};
use xibaar_testkit::{NatsServer, S3Server};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUNDS: usize = 2;
const SEGMENT_EVENTS: u64 = 20_000;

fn store_of(s3: &S3Server) -> anyhow::Result<ArchiveStore> {
    let config = xibaar_config::Config::from_toml(&format!("[archive]\n{}", s3.archive_toml()))?;
    Ok(ArchiveStore::from_config(&config.archive)?)
}

async fn jetstream(nats: &NatsServer) -> anyhow::Result<async_nats::jetstream::Context> {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    xibaar_streams::apply(&js, &Definitions::builtin()).await?;
    Ok(js)
}

/// Archives the whole log into a fresh bucket; the wall time and the segment files.
async fn archive_once(
    js: &async_nats::jetstream::Context,
    head: u64,
) -> anyhow::Result<(Duration, S3Server)> {
    let s3 = S3Server::start().await?;
    let kv = archive_bucket(js).await?;
    for key in ["position", "lease"] {
        let _ = kv.purge(key).await;
    }
    let settings = ArchiverSettings {
        max_events: SEGMENT_EVENTS,
        max_bytes: 256 << 20,
        max_age: Duration::from_secs(600),
        lease: Duration::from_secs(15),
    };
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task =
        tokio::spawn(Archiver::new(js.clone(), store_of(&s3)?, settings).run(shutdown.clone()));
    loop {
        let (position, _) = xibaar_archive::archiver::read_position(&kv).await?;
        // The last partial segment is sealed by age; the benchmark counts whole segments.
        if position.last_sequence >= head - head % SEGMENT_EVENTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = started.elapsed();
    shutdown.cancel();
    task.await??;
    Ok((wall, s3))
}

/// The segment objects the archiver wrote, as bytes.
fn segment_bodies(s3: &S3Server) -> anyhow::Result<Vec<Vec<u8>>> {
    let dir = s3
        .root()
        .join(xibaar_testkit::s3_credentials::BUCKET)
        .join("xibaar/XIBAAR_EVENTS/segments");
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    Ok(paths.iter().map(std::fs::read).collect::<Result<_, _>>()?)
}

/// Bare puts of `bodies`, one after the other as the archiver writes them.
async fn bare_puts(s3: &S3Server, bodies: &[Vec<u8>]) -> anyhow::Result<Duration> {
    let store = store_of(s3)?;
    let started = Instant::now();
    for (i, body) in bodies.iter().enumerate() {
        store
            .client()
            .put_object()
            .bucket(xibaar_testkit::s3_credentials::BUCKET)
            .key(format!("bare/{i:020}"))
            .body(ByteStream::from(body.clone()))
            .send()
            .await?;
    }
    Ok(started.elapsed())
}

/// `xibaar replay` on `nats` (and the archive of `s3`): wall time and the output's length.
async fn replay(nats: &NatsServer, s3: &S3Server, head: u64) -> anyhow::Result<(Duration, usize)> {
    let toml = format!(
        "[nats]\nurl = \"{}\"\n[archive]\n{}",
        nats.url(),
        s3.archive_toml()
    );
    let started = Instant::now();
    let output = xibaar_benches::run_replay(&xibaar_benches::xibaar_binary(), &toml).await?;
    let wall = started.elapsed();
    Ok((wall, output.check(head)?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As the `xibaar` binary runs: what runs in this process pays for memory what a role does.
    xibaar::without_huge_pages();
    let nats = NatsServer::start().await?;
    let js = jetstream(&nats).await?;
    // The projector benchmark's log, sized by its facts (device outcomes) so that it holds
    // about 250,000 events, a dozen segments. A page of successes is one event of a hundred
    // devices: 300,000 facts would be about 27,000 events, a segment and a half, and the
    // figures would be a segment's fixed costs, not the archive's rate.
    let log = store_log(&js, scale(4_000_000)).await?;
    let head = log.head;
    println!(
        "archive: {head} events ({} device outcomes), segments of {SEGMENT_EVENTS}, {ROUNDS} rounds alternating",
        log.facts
    );
    let sealed = head - head % SEGMENT_EVENTS;
    let pids = [nats.pid().unwrap_or(0), std::process::id()];

    let mut last_archive = None;
    for round in 1..=ROUNDS {
        let phase = Phase::start(&pids)?;
        let (wall, s3) = archive_once(&js, head).await?;
        let cost = phase.finish()?;
        let bodies = segment_bodies(&s3)?;
        let bytes: usize = bodies.iter().map(Vec::len).sum();
        let phase = Phase::start(&pids)?;
        let bare = bare_puts(&s3, &bodies).await?;
        let bare_cost = phase.finish()?;
        // A bare ordered consumer reading the log: the least any archiver spends on it.
        let started = Instant::now();
        xibaar_benches::read_stream(&js, sealed, false).await?;
        let read = started.elapsed();
        let rate = sealed as f64 / wall.as_secs_f64();
        let bare_rate = sealed as f64 / bare.as_secs_f64();
        let floor = read + bare;
        println!(
            "  round {round}: archiver {sealed} events ({} segments, {:.1} MiB compressed) in {wall:.2?} = {rate:.0} events/s; bare puts of the same bytes {bare:.2?} = {bare_rate:.0} events/s, ratio {:.2} (target >= 0.7); bare read of the stream {read:.2?}, read + puts = {:.0} events/s, ratio {:.2}",
            bodies.len(),
            bytes as f64 / 1048576.0,
            rate / bare_rate,
            sealed as f64 / floor.as_secs_f64(),
            floor.as_secs_f64() / wall.as_secs_f64()
        );
        println!(
            "    archiver: {}",
            cost.describe(sealed, &["nats-server", "archiver + S3 server"])
        );
        println!(
            "    bare puts: {}",
            bare_cost.describe(sealed, &["nats-server", "client + S3 server"])
        );
        last_archive = Some(s3);
    }
    // Replay: the log in the stream (server 1) against the same log only in the archive
    // (server 2's stream is empty, starting after the log).
    let s3 = last_archive.expect("at least one round");
    // The archive of the last round holds whole segments; the rest is sealed now by age.
    let kv = archive_bucket(&js).await?;
    let shutdown = CancellationToken::new();
    let settings = ArchiverSettings {
        max_events: SEGMENT_EVENTS,
        max_bytes: 256 << 20,
        max_age: Duration::from_millis(200),
        lease: Duration::from_secs(15),
    };
    let task =
        tokio::spawn(Archiver::new(js.clone(), store_of(&s3)?, settings).run(shutdown.clone()));
    while xibaar_archive::archiver::read_position(&kv)
        .await?
        .0
        .last_sequence
        < head
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    task.await??;
    let empty = NatsServer::start().await?;
    let empty_js = jetstream(&empty).await?;
    empty_js
        .get_stream(names::EVENTS)
        .await?
        .purge()
        .sequence(head + 1)
        .await?;
    for round in 1..=ROUNDS {
        let (stream_wall, stream_bytes) = replay(&nats, &s3, head).await?;
        let (archive_wall, archive_bytes) = replay(&empty, &s3, head).await?;
        anyhow::ensure!(
            stream_bytes == archive_bytes,
            "the two replays differ in length"
        );
        println!(
            "  round {round}: xibaar replay from the stream {stream_wall:.2?} = {:.0} events/s; from the archive {archive_wall:.2?} = {:.0} events/s; ratio {:.2} (target >= 0.7)",
            head as f64 / stream_wall.as_secs_f64(),
            head as f64 / archive_wall.as_secs_f64(),
            stream_wall.as_secs_f64() / archive_wall.as_secs_f64()
        );
    }
    Ok(())
}

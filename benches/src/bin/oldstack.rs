//! The stack Xibaar replaces (Celery with its four queues on RabbitMQ, the official
//! firebase-admin SDK) beside Xibaar, pushing to the same FCM stand-in, alternately, in one run.
//! Prints pushes/s (between 10 % and 90 % of each broadcast, with every worker already
//! consuming) and CPU µs per push of every process of each, their ratios, and what a kill -9 of
//! a worker (the old stack's, Xibaar's dispatcher) mid-broadcast loses or repeats.
//!
//! Celery configurations: the deployed one (`--pool=solo --concurrency=2`, a task per device)
//! and the best found here, batches of 500 per task through `send_each` or `send_each_async`
//! on a prefork pool of two; the best of these in each round is the one compared. At 150 ms
//! the deployed configuration is measured once, on 300 devices (it pushes one at a time).
//!
//! CPU per push counts, for Xibaar, the dispatcher, nats-server and this process (stand-in and
//! benchmark); for the old stack, the Celery worker and its children, the RabbitMQ node, the
//! enqueueing process (the old api's part, its interpreter's start included) and this process.
//! Neither side's database reads are counted (Postgres here, SQL Server there).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use xibaar_benches::{
    cpu_per_operation, cpu_shares, cpu_time, cpu_times,
    oldstack::{self, BATCHED, BATCHED_ASYNC, Celery, DEPLOYED, Install, OldStack, Rabbit},
    rig::{self, AT_ZERO_MS, COUNTED, Rig, Shape},
    scale, xibaar_binary,
};
use xibaar_core::{Audience, Priority};

/// The process of the FCM stand-in and of this benchmark.
const STAND_IN: &str = "stand-in and benchmark";

/// One broadcast's figures.
struct Figures {
    rate: f64,
    /// CPU µs per push of each process, named.
    cpu: Vec<(&'static str, f64)>,
}

impl Figures {
    fn total_cpu(&self) -> f64 {
        self.cpu.iter().map(|(_, us)| us).sum()
    }

    /// The CPU of the system's own processes: all but the FCM stand-in's (Google's side) and
    /// this benchmark's, which share a process.
    fn system_cpu(&self) -> f64 {
        self.cpu
            .iter()
            .filter(|(name, _)| *name != STAND_IN)
            .map(|(_, us)| us)
            .sum()
    }

    fn line(&self, name: &str) -> String {
        let (names, us): (Vec<&str>, Vec<f64>) = self.cpu.iter().copied().unzip();
        format!(
            "    {name:<44} {:>7.0} pushes/s; CPU µs per push {:>6.1} ({})",
            self.rate,
            self.total_cpu(),
            cpu_shares(&names, &us)
        )
    }
}

async fn xibaar(rig: &Rig, devices: usize) -> anyhow::Result<Figures> {
    let (run, dispatcher) =
        rig::broadcast_with(rig, &xibaar_binary(), devices, Priority::Normal).await?;
    rig::stop(dispatcher);
    let names = ["dispatcher", "nats-server", STAND_IN];
    Ok(Figures {
        rate: run.steady_rate,
        cpu: names.into_iter().zip(run.cpu_per_push).collect(),
    })
}

/// Waits until the stand-in has accepted `target` pushes in all.
async fn pushed(rig: &Rig, target: u64, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while rig.standin.accepted_count() < target {
        anyhow::ensure!(
            started.elapsed() < limit,
            "{} of {target} pushes after {limit:?}",
            rig.standin.accepted_count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until the stand-in has accepted `devices` more than `base`; the pushes per second
/// between 10 % and 90 % of them (start and end ramps left out, as for Xibaar's broadcasts).
async fn steady_rate(rig: &Rig, base: u64, devices: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (mut t10, mut t90) = (None, None);
    loop {
        let done = rig.standin.accepted_count().saturating_sub(base);
        if t10.is_none() && done >= devices as u64 / 10 {
            t10 = Some((Instant::now(), done));
        }
        if t90.is_none() && done >= devices as u64 * 9 / 10 {
            t90 = Some((Instant::now(), done));
        }
        if done >= devices as u64 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1_800),
            "{done} of {devices} pushes after 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ((a, na), (b, nb)) = (t10.expect("10 %"), t90.expect("90 %"));
    Ok((nb - na) as f64 / (b - a).as_secs_f64().max(1e-9))
}

async fn old(
    stack: &OldStack<'_>,
    celery: Celery,
    rig: &Rig,
    devices: usize,
) -> anyhow::Result<Figures> {
    let worker = stack.worker(celery)?;
    let node = stack.rabbit.pids();
    let before = (
        worker.cpu(),
        cpu_times(&node)?,
        cpu_time(std::process::id())?,
    );
    let base = rig.standin.accepted_count();
    let mut producer = stack.enqueue(celery, devices, "Tariff change")?;
    let producer = tokio::task::spawn_blocking(move || oldstack::wait_with_cpu(&mut producer));
    let rate = steady_rate(rig, base, devices)
        .await
        .map_err(|e| anyhow::anyhow!("{} {e}\n{}", celery.name, worker.log_tail()))?;
    let after = (
        worker.cpu(),
        cpu_times(&node)?,
        cpu_time(std::process::id())?,
    );
    let (status, producer_cpu) = producer.await??;
    anyhow::ensure!(status.success(), "enqueueing failed: {status}");
    drop(worker);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / devices as f64;
    let node_cpu: f64 = cpu_per_operation(&before.1, &after.1, devices).iter().sum();
    Ok(Figures {
        rate,
        cpu: vec![
            ("Celery worker", per(after.0 - before.0)),
            ("RabbitMQ", node_cpu),
            ("enqueueing", per(producer_cpu)),
            (STAND_IN, per(after.2 - before.2)),
        ],
    })
}

/// What a kill -9 mid-broadcast cost: devices never pushed, pushes repeated.
struct Kill {
    lost: usize,
    repeated: usize,
}

/// Counts the stand-in's recorded pushes titled `title`.
fn count(rig: &Rig, title: &str, devices: usize) -> Kill {
    let mut per_token: HashMap<String, usize> = HashMap::new();
    for r in rig.standin.received() {
        if r.message["notification"]["title"] == title {
            *per_token.entry(r.token.unwrap_or_default()).or_default() += 1;
        }
    }
    let pushes: usize = per_token.values().sum();
    Kill {
        lost: devices.saturating_sub(per_token.len()),
        repeated: pushes - per_token.len(),
    }
}

/// Waits until the stand-in's count has not moved for `quiet`.
async fn settled(rig: &Rig, quiet: Duration) {
    let mut last = (rig.standin.accepted_count(), Instant::now());
    while last.1.elapsed() < quiet {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rig.standin.accepted_count();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
}

async fn old_kill(
    stack: &OldStack<'_>,
    celery: Celery,
    rig: &Rig,
    devices: usize,
) -> anyhow::Result<Kill> {
    let title = format!("{COUNTED}: {}", celery.name);
    let worker = stack.worker(celery)?;
    let base = rig.standin.accepted_count();
    let mut producer = stack.enqueue(celery, devices, &title)?;
    pushed(rig, base + devices as u64 / 3, Duration::from_secs(600)).await?;
    worker.kill();
    let _worker = stack.worker(celery)?;
    tokio::task::spawn_blocking(move || producer.wait()).await??;
    // What the broker still holds is delivered within seconds; then nothing moves.
    settled(rig, Duration::from_secs(10)).await;
    Ok(count(rig, &title, devices))
}

async fn xibaar_kill(rig: &Rig, devices: usize) -> anyhow::Result<Kill> {
    let title = format!("{COUNTED}: Xibaar");
    let mut dispatcher = rig.spawn_dispatcher(&xibaar_binary())?;
    let base = rig.standin.accepted_count();
    rig.send(Priority::Normal, Audience::Everyone, &title)
        .await?;
    pushed(rig, base + devices as u64 / 3, Duration::from_secs(600)).await?;
    dispatcher.kill()?;
    dispatcher.wait()?;
    let restarted = rig.spawn_dispatcher(&xibaar_binary())?;
    // The killed dispatcher's pages come back after their ack wait (30 s).
    pushed(rig, base + devices as u64, Duration::from_secs(600)).await?;
    settled(rig, Duration::from_secs(5)).await;
    rig::stop(restarted);
    Ok(count(rig, &title, devices))
}

fn ratios(round: usize, x: &Figures, deployed: Option<&Figures>, batched: &[(Celery, Figures)]) {
    if let Some(d) = deployed {
        println!(
            "    round {round}: Xibaar / deployed: {:.1}× the pushes/s; CPU per push {:.3} (1/{:.1}) \
             of all processes, {:.3} (1/{:.1}) of the systems' own (the stand-in left out)",
            x.rate / d.rate,
            x.total_cpu() / d.total_cpu(),
            d.total_cpu() / x.total_cpu(),
            x.system_cpu() / d.system_cpu(),
            d.system_cpu() / x.system_cpu()
        );
    }
    if let Some((best, b)) = batched.iter().max_by(|a, b| a.1.rate.total_cmp(&b.1.rate)) {
        println!(
            "    round {round}: Xibaar / best Celery ({}): {:.1}× the pushes/s, {:.3} of the CPU per push",
            best.name,
            x.rate / b.rate,
            x.total_cpu() / b.total_cpu()
        );
    }
}

/// The old stack pushing to `rig`'s stand-in.
fn on<'a>(install: &'a Install, rabbit: &'a Rabbit, rig: &'a Rig) -> OldStack<'a> {
    OldStack {
        install,
        rabbit,
        standin: &rig.standin,
        key: &rig.key,
    }
}

/// Three rounds, each a broadcast through Xibaar, then (`with_deployed`) the deployed
/// configuration, then the batched ones; their figures and ratios printed.
async fn rounds(
    stack: &OldStack<'_>,
    rig: &Rig,
    devices: usize,
    with_deployed: bool,
) -> anyhow::Result<()> {
    for round in 1..=3 {
        let x = xibaar(rig, devices).await?;
        println!("{}", x.line(&format!("round {round}, Xibaar")));
        let deployed = if with_deployed {
            let d = old(stack, DEPLOYED, rig, devices).await?;
            println!("{}", d.line(&format!("round {round}, {}", DEPLOYED.name)));
            Some(d)
        } else {
            None
        };
        let mut batched = Vec::new();
        for celery in [BATCHED, BATCHED_ASYNC] {
            let b = old(stack, celery, rig, devices).await?;
            println!("{}", b.line(&format!("round {round}, {}", celery.name)));
            batched.push((celery, b));
        }
        ratios(round, &x, deployed.as_ref(), &batched);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As the `xibaar` binary runs: what runs in this process pays for memory what a role does.
    xibaar::without_huge_pages();
    let install = Install::find()?;
    let devices = scale(20_000);
    let unlimited = 1_000_000_000;
    println!(
        "the old stack beside Xibaar ({} cores), {devices}-device broadcasts, alternately",
        std::thread::available_parallelism()?.get()
    );
    let rabbit = Rabbit::start()?;

    println!(
        "  FCM at 0 ms (Xibaar: {} in flight)",
        AT_ZERO_MS.concurrency
    );
    let rig = Rig::start(unlimited, unlimited).await?;
    rig.seed(devices).await?;
    let stack = on(&install, &rabbit, &rig);
    rounds(&stack, &rig, devices, true).await?;

    println!(
        "  kill -9 of the worker when a third is pushed (mid-task for every batch size), restarted"
    );
    for celery in [DEPLOYED, BATCHED] {
        let k = old_kill(&stack, celery, &rig, devices).await?;
        println!(
            "    {:<44} {:>6} devices never pushed, {:>6} pushes repeated",
            celery.name, k.lost, k.repeated
        );
    }
    let k = xibaar_kill(&rig, devices).await?;
    println!(
        "    {:<44} {:>6} devices never pushed, {:>6} pushes repeated",
        "Xibaar (the dispatcher)", k.lost, k.repeated
    );
    drop(rig);

    let shape = Shape {
        concurrency: 2_048,
        latency: Duration::from_millis(150),
        jitter: Duration::from_millis(50),
    };
    println!(
        "  FCM at 150 ± 50 ms, 100 streams per connection (Xibaar: {} in flight)",
        shape.concurrency
    );
    let rig = Rig::start_shaped(unlimited, unlimited, shape).await?;
    rig.seed(devices).await?;
    let stack = on(&install, &rabbit, &rig);
    rounds(&stack, &rig, devices, false).await?;
    // One push at a time: 300 devices take about 45 s.
    let few = 300;
    let d = old(&stack, DEPLOYED, &rig, few).await?;
    println!("{}", d.line(&format!("{} ({few} devices)", DEPLOYED.name)));
    Ok(())
}

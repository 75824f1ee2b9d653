//! The dispatcher (the release `xibaar dispatcher` binary, its own process) against real
//! nats-server, PostgreSQL and the FCM stand-in. Prints figures and ratios:
//!
//! 1. baseline: the bare FCM client pushing straight at a zero-latency stand-in; then the
//!    JetStream floor (the stream writes, pull and ack every push needs, with nothing else), and
//!    the bound the two together set on these cores;
//! 2. sustained pushes/s through the whole dispatcher (fan-out, pages of jobs, sender, outcome
//!    events) at zero stand-in latency, as a ratio to the baseline and to the CPU bound;
//! 3. the same at 50 ms stand-in latency, as a ratio to what the FCM concurrency allows;
//! 4. a 1,000,000-device broadcast with the stand-in enforcing 600,000/min (and the dispatcher
//!    rate-limited to the same), against the 100 s floor the quota sets; urgent notifications
//!    sent while it drains, accept→push p50/p99;
//! 5. the dispatcher's peak RSS (VmHWM) in each run.
//!
//! The 0 ms broadcast runs three times, each set against the mean of a baseline and bound
//! measured just before it and just after it; the run's ratio to the bound is the median of
//! the three. A broadcast whose two bounds differ by more than 10 % measured a machine that
//! changed speed under it: it is printed as unsteady and another broadcast follows (up to six
//! in all); the median is taken over the steady ones (over all, should fewer than three be
//! steady). `XIBAAR_BENCH_BASELINE=<an earlier xibaar binary>` runs each round through that
//! binary too, alternately, and prints their CPU per push side by side (with
//! `XIBAAR_BENCH_ONLY=sustained`, only that and the 50 ms broadcast).
//!
//! The device registry is filled with one SQL statement (the dispatcher reads the read model;
//! how the projector builds it is measured elsewhere).
//!
//! Sizes can be lowered for a quick look: `XIBAAR_BENCH_SCALE=0.1 benches/run`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::Utc;
use xibaar_benches::{
    cpu_per_operation, cpu_shares, cpu_times, percentile,
    rig::{APP_ID, AT_ZERO_MS, CONCURRENCY, Rig, Shape, broadcast, broadcast_with, stop},
    scale,
    steady::Rounds,
    xibaar_binary,
};
use xibaar_core::{Audience, Content, CustomerId, DeliveryOptions, NotificationId, Priority};
use xibaar_fcm_standin::StandIn;

/// The delivery job of device `i`, as the fan-out writes it.
fn bench_job(i: usize, notification_id: NotificationId) -> xibaar_core::DeliveryJob {
    xibaar_core::DeliveryJob {
        notification_id,
        priority: Priority::Low,
        device_id: xibaar_core::DeviceId::parse(format!("d{i:07}")).expect("valid"),
        customer_id: CustomerId::parse(format!("c{i}")).expect("valid"),
        token: xibaar_core::FcmToken::parse(format!("fcm-token-{i:07}{}", "x".repeat(140)))
            .expect("valid"),
        platform: xibaar_core::Platform::Android,
        app_id: APP_ID.into(),
        content: Content {
            title: "Tariff change".into(),
            body: "Your November bill of 12,500 XOF is due on 5 December.".into(),
            data: [("kind".to_owned(), "bill".to_owned())].into(),
            image_url: None,
            ..Default::default()
        },
        delivery: DeliveryOptions::default(),
        correlation_id: "bench".into(),
        accepted_at: Utc::now(),
    }
}

/// The JetStream floor: the work nats-server does for every push, with no FCM, no Postgres
/// and no dispatcher, in the design's own shape. Pages of 100 delivery jobs are stored
/// (pipelined, with their `Nats-Msg-Id`, as the fan-out publishes), pulled from the low lane's
/// durable consumer; each page's `delivery.page_succeeded` event is stored (at 0 ms every
/// device of a page is answered together), and the page is acked once it is stored. Returns pushes/s and CPU µs per
/// push of nats-server and of this process (publisher and consumer).
async fn jetstream_floor(rig: &Rig, n: usize) -> anyhow::Result<(f64, Vec<f64>)> {
    use futures::{StreamExt, TryStreamExt};
    use xibaar_core::{Actor, EventEnvelope, job::PAGE_JOB_TYPE};
    let consumer: async_nats::jetstream::consumer::PullConsumer = rig
        .js
        .get_stream(xibaar_streams::names::DELIVERIES)
        .await?
        .get_consumer(&xibaar_streams::consumers::sender(Priority::Low))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let pids = [
        rig.nats.pid().context("nats-server is not running")?,
        std::process::id(),
    ];
    let per_page = xibaar_core::job::DEVICES_PER_PAGE;
    let pages = n.div_ceil(per_page);
    let before = cpu_times(&pids)?;
    let started = Instant::now();
    let publisher = {
        let js = rig.js.clone();
        tokio::spawn(async move {
            let notification_id = NotificationId::generate();
            let mut pipeline = xibaar_streams::Pipeline::new(js, 1_024);
            for p in 0..pages {
                let page = bench_page(p * per_page..((p + 1) * per_page).min(n), notification_id);
                let headers =
                    xibaar_streams::headers(&page.msg_id().expect("not empty"), PAGE_JOB_TYPE);
                pipeline
                    .publish(page.subject(), headers, serde_json::to_vec(&page)?.into())
                    .await?;
            }
            pipeline.flush().await?;
            anyhow::Ok(())
        })
    };
    // Pulled as the dispatcher's lanes pull: explicit batches whose requests expire within a
    // second. The client's continuous pull (`stream()`) stalled here now and then for its
    // request's whole expiry (about 36 s, one floor in three or four), which says nothing about
    // the JetStream work a push costs.
    let per_batch = CONCURRENCY.div_ceil(per_page).max(2);
    let mut messages = std::pin::pin!(
        futures::stream::unfold(consumer, move |consumer| async move {
            let batch = consumer
                .batch()
                .max_messages(per_batch)
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .map(|batch| batch.map_err(|e| anyhow::anyhow!("{e}")))
                .map_err(|e| anyhow::anyhow!("{e}"));
            Some((batch, consumer))
        })
        .try_flatten()
    );
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let handle = |message: async_nats::jetstream::Message| {
        let js = rig.js.clone();
        async move {
            let page: xibaar_core::DeliveryPage = serde_json::from_slice(&message.payload)?;
            let devices = page
                .devices
                .iter()
                .map(|d| xibaar_core::event::SucceededDevice {
                    device_id: d.device_id.clone(),
                    customer_id: d.customer_id.clone(),
                    attempt: 1,
                    fcm_message_id: format!("projects/xibaar-local/messages/0:{}", d.device_id),
                })
                .collect();
            let envelope = EventEnvelope::new(
                xibaar_core::Event::DeliveriesSucceeded(xibaar_core::event::DeliveriesSucceeded {
                    notification_id: page.notification_id,
                    priority: page.priority,
                    devices,
                }),
                page.correlation_id.as_str(),
                None,
                Actor::system("sender"),
            );
            xibaar_streams::publish_event(&js, &envelope).await?;
            message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::Ok(page.devices.len())
        }
    };
    let (mut pulled, mut done) = (0usize, 0usize);
    let pages_in_flight = (CONCURRENCY * 4).div_ceil(per_page);
    while done < n {
        tokio::select! {
            message = messages.next(), if pulled < pages && in_flight.len() < pages_in_flight => match message {
                Some(message) => {
                    pulled += 1;
                    in_flight.push(handle(message?));
                }
                None => anyhow::bail!("the consumer ended after {pulled} of {pages} pages"),
            },
            Some(handled) = in_flight.next() => {
                done += handled?;
            }
        }
    }
    let elapsed = started.elapsed();
    publisher.await??;
    let cpu = cpu_per_operation(&before, &cpu_times(&pids)?, n);
    Ok((n as f64 / elapsed.as_secs_f64(), cpu))
}

/// Devices `range` as one delivery page, as the fan-out writes it.
fn bench_page(
    range: std::ops::Range<usize>,
    notification_id: NotificationId,
) -> xibaar_core::DeliveryPage {
    let first = bench_job(range.start, notification_id);
    let mut page = xibaar_core::DeliveryPage::new(
        notification_id,
        first.priority,
        first.delivery.clone(),
        first.correlation_id.clone(),
        first.accepted_at,
    );
    for i in range {
        let job = bench_job(i, notification_id);
        page.push(
            job.device_id,
            job.customer_id,
            job.token,
            job.platform,
            job.app_id,
            job.content,
        );
    }
    page
}

/// The bare FCM client: `n` pushes at `CONCURRENCY` in flight, nothing else. Returns pushes/s
/// and CPU µs per push of this process (the client and the stand-in).
async fn bare_client(standin: &StandIn, dir: &Path, n: usize) -> anyhow::Result<(f64, f64)> {
    use futures::StreamExt;
    let key = dir.join("bare.json");
    xibaar_fcm_standin::write_service_account(&key, &standin.token_uri())?;
    let client = Arc::new(xibaar_fcm::FcmClient::new(&xibaar_config::FcmConfig {
        endpoint: standin.url(),
        concurrency: CONCURRENCY,
        rate_limit_per_minute: std::num::NonZeroU32::new(u32::MAX).expect("non-zero"),
        apps: vec![xibaar_config::FcmApp {
            app_id: APP_ID.into(),
            project_id: "xibaar-local".into(),
            service_account_file: key,
        }],
        ..xibaar_config::FcmConfig::default()
    })?);
    let job = |i: usize| bench_job(i, NotificationId::generate());
    // Warm up the connection and the access token.
    client
        .send(APP_ID, &xibaar_fcm::Message::for_job(&job(0)))
        .await?;
    let before = cpu_times(&[std::process::id()])?;
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            let message = xibaar_fcm::Message::for_job(&job(i));
            async move { client.send(APP_ID, &message).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let elapsed = started.elapsed();
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        anyhow::bail!("bare client send failed: {e}");
    }
    let cpu = cpu_per_operation(&before, &cpu_times(&[std::process::id()])?, n)[0];
    Ok((n as f64 / elapsed.as_secs_f64(), cpu))
}

/// What a broadcast is set against, in pushes/s.
#[derive(Debug, Clone, Copy)]
struct Bound {
    /// The bare FCM client's rate.
    bare_client: f64,
    /// What the client, the stand-in and the JetStream floor allow together on these cores.
    cpu: f64,
    /// The same without the floor's JetStream client work (the bound until stop 41).
    cpu_without_client_work: f64,
}

impl Bound {
    /// The mean of the bounds measured before and after a broadcast: the machine's speed
    /// swings by tens of per cent within minutes, and a broadcast between two measurements is
    /// set against the speed around it, not only before it.
    fn around(&self, after: &Bound) -> Bound {
        Bound {
            bare_client: (self.bare_client + after.bare_client) / 2.0,
            cpu: (self.cpu + after.cpu) / 2.0,
            cpu_without_client_work: (self.cpu_without_client_work + after.cpu_without_client_work)
                / 2.0,
        }
    }
}

/// The bare FCM client's pushes/s, the CPU bound the client, the stand-in and the JetStream
/// floor set together on these cores, and that bound without the floor's client work, printed
/// as measured now.
async fn cpu_bound(rig: &Rig, n: usize) -> anyhow::Result<Bound> {
    let (baseline, client_cpu) = bare_client(&rig.standin, rig.dir.path(), n).await?;
    println!(
        "  bare FCM client, {n} pushes, {CONCURRENCY} in flight: {baseline:>9.0} pushes/s; CPU µs per push (client and stand-in) {client_cpu:.1}"
    );
    let (floor_rate, floor_cpu) = jetstream_floor(rig, n).await?;
    println!(
        "  JetStream floor, {n} pushes (pages of 100 stored, pulled, acked; an event per push; no FCM): {floor_rate:>9.0} pushes/s; CPU µs per push: {}",
        cpu_shares(&["nats-server", "benchmark"], &floor_cpu)
    );
    // The floor (nats-server's share and the JetStream client work of storing, pulling and
    // acking pages and storing their events) and the bare client's are work every push needs; a
    // dispatcher adds its own to them, so on these cores no dispatcher can go faster. Until
    // stop 41 the bound left out the floor's client work; it is printed too, for comparison.
    let cores = std::thread::available_parallelism()?.get() as f64;
    let bound = cores * 1e6 / (floor_cpu[0] + floor_cpu[1] + client_cpu);
    let without_client_work = cores * 1e6 / (floor_cpu[0] + client_cpu);
    println!(
        "  CPU bound on {cores} cores: the floor's {:.1} (nats-server) + {:.1} (its JetStream client) + the client's and stand-in's {client_cpu:.1} µs per push allow at most {bound:>9.0} pushes/s = {:.2} of the 30,000/s target (without the floor's client work: {without_client_work:.0})",
        floor_cpu[0],
        floor_cpu[1],
        bound / 30_000.0
    );
    Ok(Bound {
        bare_client: baseline,
        cpu: bound,
        cpu_without_client_work: without_client_work,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As the `xibaar` binary runs: what runs in this process pays for memory what a role does.
    xibaar::without_huge_pages();
    let sustained_n = scale(200_000);
    let latency_n = scale(50_000);
    let million = scale(1_000_000);
    let unlimited: u64 = 1_000_000_000;
    println!(
        "dispatcher benchmark ({} cores)",
        std::thread::available_parallelism()?.get()
    );

    // `XIBAAR_BENCH_ONLY=million` runs the last part alone (for profiling);
    // `XIBAAR_BENCH_ONLY=sustained` the first two (with `XIBAAR_BENCH_BASELINE`, the A/B).
    let only = std::env::var("XIBAAR_BENCH_ONLY").unwrap_or_default();
    let only_million = only.starts_with("million");
    let mut peak_rss: f64 = 0.0;
    if !only_million {
        // 1 + 2: zero latency, no quota.
        let rig = Rig::start(unlimited, unlimited).await?;
        let mut before = cpu_bound(&rig, sustained_n).await?;
        rig.seed(sustained_n).await?;
        // `XIBAAR_BENCH_BASELINE=<an earlier xibaar binary>`: the same broadcast alternately
        // through it and through this build, each round's CPU per push side by side.
        let earlier = std::env::var_os("XIBAAR_BENCH_BASELINE").map(PathBuf::from);
        // Three steady rounds: one broadcast is set against the machine of the ten seconds
        // around it, which swings by tens of per cent within a minute; a run's figure is the
        // median. A round whose bound moved under it compared two speeds of the machine, and
        // another round is run in its place (`xibaar_benches::steady`).
        let mut rounds = Rounds::default();
        while let Some(round) = rounds.next_round() {
            let mut totals = Vec::new();
            for (name, binary) in earlier
                .iter()
                .map(|b| ("earlier", b.clone()))
                .chain([("this build", xibaar_binary())])
            {
                let (run, dispatcher) =
                    broadcast_with(&rig, &binary, sustained_n, Priority::Normal).await?;
                stop(dispatcher);
                // Every broadcast lies between two measurements of its bound.
                let after = cpu_bound(&rig, sustained_n).await?;
                let bound = before.around(&after);
                println!(
                    "  round {round}, {name}: dispatcher, {sustained_n}-device broadcast, 0 ms FCM:  {:>9.0} pushes/s steady ({:.1} s total) = {:.2} of the bare client, {:.2} of the CPU bound (target >= 0.85; {:.2} of it without the floor's client work), each the mean of the measures before and after it; peak RSS {:.1} MiB",
                    run.steady_rate,
                    run.total.as_secs_f64(),
                    run.steady_rate / bound.bare_client,
                    run.steady_rate / bound.cpu,
                    run.steady_rate / bound.cpu_without_client_work,
                    run.peak_rss_mib
                );
                println!("{}", run.cpu_line());
                if name == "this build" {
                    rounds.record(run.steady_rate / bound.cpu, "bounds", before.cpu, after.cpu);
                }
                before = after;
                totals.push((run.cpu_per_push.iter().sum::<f64>(), run.cpu_per_push[1]));
                peak_rss = peak_rss.max(run.peak_rss_mib);
            }
            if let [(earlier_total, earlier_nats), (total, nats)] = totals[..] {
                println!(
                    "  round {round}: CPU µs per push, all processes {total:.1} vs {earlier_total:.1} = {:.2} of the earlier binary's (target <= 0.5); nats-server {nats:.1} vs {earlier_nats:.1} (target <= 40)",
                    total / earlier_total
                );
            }
        }
        let (median, judged) = rounds.verdict();
        println!(
            "  this build, of the CPU bound, {judged} (target >= 0.85: {})",
            xibaar_benches::met(median >= 0.85)
        );
        drop(rig);

        // 3: 50 ms latency.
        let rig = Rig::start(unlimited, unlimited).await?;
        rig.standin.set_latency(Duration::from_millis(50));
        rig.seed(latency_n).await?;
        let (run, dispatcher) = broadcast(&rig, latency_n, Priority::Normal).await?;
        stop(dispatcher);
        let bound = CONCURRENCY as f64 / 0.050;
        println!(
            "  dispatcher, {latency_n}-device broadcast, 50 ms FCM:  {:>9.0} pushes/s steady = {:.2} of the {bound:.0}/s that {CONCURRENCY} requests in flight allow; peak RSS {:.1} MiB",
            run.steady_rate,
            run.steady_rate / bound,
            run.peak_rss_mib
        );
        println!("{}", run.cpu_line());
        peak_rss = peak_rss.max(run.peak_rss_mib);
        drop(rig);
        if only == "sustained" {
            return Ok(());
        }
    }

    // 4: a million devices under FCM's quota, urgent probes while it drains; with
    // `XIBAAR_BENCH_ONLY=million-latency`, FCM answering in 150 ms ± 50 ms (its 100 streams per
    // connection as always) and 2,048 requests in flight, which Little's law asks for 10,000/s
    // at up to 200 ms.
    let shape = if only == "million-latency" {
        Shape {
            concurrency: 2_048,
            latency: Duration::from_millis(150),
            jitter: Duration::from_millis(50),
        }
    } else {
        AT_ZERO_MS
    };
    let rig = Arc::new(Rig::start_shaped(600_000, 600_000, shape).await?);
    let seeded = rig.seed(million).await?;
    println!(
        "  registry of {million} devices filled in {:.1} s",
        seeded.as_secs_f64()
    );
    let probing = tokio_util::sync::CancellationToken::new();
    let probes = {
        let rig = rig.clone();
        let probing = probing.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut i = 0usize;
            // Let the backlog build first.
            tokio::time::sleep(Duration::from_secs(5)).await;
            while !probing.is_cancelled() {
                let customer =
                    CustomerId::parse(format!("c{}", (i * 7919) % million)).expect("valid");
                let title = format!("Urgent {i}");
                if rig
                    .send(
                        Priority::Urgent,
                        Audience::Customers {
                            customer_ids: vec![customer],
                        },
                        &title,
                    )
                    .await
                    .is_ok()
                {
                    sent.push((title, Utc::now()));
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            sent
        })
    };
    let (run, dispatcher) = broadcast(&rig, million, Priority::Low).await?;
    probing.cancel();
    let sent = probes.await?;
    // The last probes may still be on their way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(dispatcher);
    let received = rig.standin.received();
    let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
    // Accept -> answered by FCM, and accept -> reaching FCM (Xibaar's own part).
    let (mut latencies, mut to_fcm): (Vec<f64>, Vec<f64>) = sent
        .iter()
        .filter_map(|(title, accepted)| {
            received
                .iter()
                .find(|r| r.message["notification"]["title"] == title.as_str())
                .map(|r| (ms(r.received_at - *accepted), ms(r.arrived_at - *accepted)))
        })
        .unzip();
    latencies.sort_by(f64::total_cmp);
    to_fcm.sort_by(f64::total_cmp);
    // FCM's own latency during the broadcast as the stand-in measured it: the configured
    // spread, plus what this machine's load added to its timers and work.
    let standin_p99 = rig.standin.answer_time(99.0).as_secs_f64() * 1000.0;
    let floor = million as f64 / 10_000.0;
    println!(
        "  dispatcher, {million}-device broadcast, quota 600,000/min, FCM at {:?} ± {:?}, {} in flight: {:.1} s vs the {floor:.0} s floor = {:.2} of the limit (target >= 0.9); {:.0} pushes/s steady; {} quota errors; peak RSS {:.1} MiB",
        shape.latency,
        shape.jitter,
        shape.concurrency,
        run.total.as_secs_f64(),
        floor / run.total.as_secs_f64(),
        run.steady_rate,
        rig.standin.error_count(),
        run.peak_rss_mib
    );
    println!("{}", run.cpu_line());
    println!(
        "  urgent accept->push while that backlog drained: p50 {:.1} ms, p99 {:.1} ms over {} of {} probes; FCM's own p99 during it {standin_p99:.1} ms (stand-in's answer times): {:.1} ms above it (target <= 100 ms); accept->reaching FCM p50 {:.1} ms, p99 {:.1} ms",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.len(),
        sent.len(),
        percentile(&latencies, 99.0) - standin_p99,
        percentile(&to_fcm, 50.0),
        percentile(&to_fcm, 99.0),
    );
    peak_rss = peak_rss.max(run.peak_rss_mib);
    println!("  dispatcher peak RSS over all runs: {peak_rss:.1} MiB (target <= 100 MiB)");
    Ok(())
}

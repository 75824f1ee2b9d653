//! The stack Xibaar replaces, run on this machine: a RabbitMQ node of its own on loopback ports,
//! Celery workers of `benches/oldstack/app.py` (the official firebase-admin SDK) and the old
//! api's way of enqueueing a broadcast (`enqueue.py`), all pushing to the benchmark's FCM
//! stand-in. `benches/oldstack/install` installs it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use xibaar_fcm_standin::StandIn;
use xibaar_testkit::{free_port, kill_group_now, spawn_owned};

use crate::cpu_time;

/// A Celery configuration of the old stack.
#[derive(Clone, Copy)]
pub struct Celery {
    pub name: &'static str,
    pub pool: &'static str,
    pub concurrency: u32,
    /// Devices per task: 1 is a `push` task per device.
    pub batch: usize,
    /// The task a batch goes to.
    pub task: &'static str,
    pub acks_late: bool,
    pub prefetch: u32,
}

/// As the utility ran it: `--pool=solo --concurrency=2`, a task per device, Celery's defaults
/// (acknowledged when taken, four reserved ahead).
pub const DEPLOYED: Celery = Celery {
    name: "deployed (solo, a task per device)",
    pool: "solo",
    concurrency: 2,
    batch: 1,
    task: "push",
    acks_late: false,
    prefetch: 4,
};

/// Prefork on both cores, 500 devices a task through `send_each` (a thread per message),
/// acknowledged after the task, one reserved at a time.
pub const BATCHED: Celery = Celery {
    name: "prefork ×2, 500 a task, send_each",
    pool: "prefork",
    concurrency: 2,
    batch: 500,
    task: "push_batch",
    acks_late: true,
    prefetch: 1,
};

/// The same through `send_each_async` (asyncio and httpx).
pub const BATCHED_ASYNC: Celery = Celery {
    name: "prefork ×2, 500 a task, send_each_async",
    task: "push_batch_async",
    ..BATCHED
};

/// Where the old stack's files and its virtualenv are.
pub struct Install {
    dir: PathBuf,
    venv: PathBuf,
}

impl Install {
    /// The files of `benches/oldstack` and the venv `benches/oldstack/install` made.
    pub fn find() -> anyhow::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let install = Self {
            dir: root.join("benches/oldstack"),
            venv: root.join(".xibaar/tools/oldstack-venv"),
        };
        anyhow::ensure!(
            install.venv.join("bin/celery").exists(),
            "the old stack is not installed: run benches/oldstack/install"
        );
        Ok(install)
    }

    fn python(&self) -> PathBuf {
        self.venv.join("bin/python")
    }
}

/// A RabbitMQ node of its own: its own ports (AMQP, distribution, epmd), files and cookie.
pub struct Rabbit {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
    epmd_port: u16,
}

impl Rabbit {
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (port, dist_port, epmd_port) = (free_port()?, free_port()?, free_port()?);
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n")?;
        std::fs::write(dir.path().join("rabbitmq.conf"), "loopback_users = none\n")?;
        let log = std::fs::File::create(dir.path().join("node.log"))?;
        let child = spawn_owned(
            Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
                .env("HOME", dir.path())
                .env("RABBITMQ_NODENAME", format!("bench{port}@localhost"))
                .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                .env("RABBITMQ_NODE_PORT", port.to_string())
                .env("RABBITMQ_DIST_PORT", dist_port.to_string())
                .env("ERL_EPMD_ADDRESS", "127.0.0.1")
                .env("ERL_EPMD_PORT", epmd_port.to_string())
                .env("RABBITMQ_MNESIA_BASE", dir.path().join("mnesia"))
                .env("RABBITMQ_LOG_BASE", dir.path().join("log"))
                .env("RABBITMQ_CONFIG_FILE", dir.path().join("rabbitmq"))
                .env(
                    "RABBITMQ_ENABLED_PLUGINS_FILE",
                    dir.path().join("enabled_plugins"),
                )
                .env("RABBITMQ_PID_FILE", dir.path().join("pid"))
                // The script then execs the Erlang VM instead of waiting on it: the VM is the
                // process spawned, and dies with the benchmark even when that is killed.
                .env("RUNNING_UNDER_SYSTEMD", "true")
                .stdout(log.try_clone()?)
                .stderr(log),
        )
        .context("starting rabbitmq-server")?;
        let mut rabbit = Self {
            child,
            _dir: dir,
            port,
            epmd_port,
        };
        // The AMQP listener opens once the node has booted.
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = rabbit.child.try_wait()? {
                anyhow::bail!("rabbitmq-server exited: {status}");
            }
            anyhow::ensure!(Instant::now() < deadline, "RabbitMQ did not start in 120 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(rabbit)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}//", self.port)
    }

    /// The node's processes (the Erlang VM and its helpers).
    pub fn pids(&self) -> Vec<u32> {
        tree(self.child.id())
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        kill_group_now(&mut self.child);
        // epmd detaches from the node; it is this node's own (its own port).
        let _ = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-kill"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `pid` and its descendants, from `/proc/PID/task/TID/children`.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", all[i]));
        for task in tasks.into_iter().flatten().flatten() {
            let children = std::fs::read_to_string(task.path().join("children"));
            all.extend(
                children
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        i += 1;
    }
    all
}

/// CPU time of `pid` and its descendants alive now.
pub fn tree_cpu(pid: u32) -> Duration {
    tree(pid).into_iter().filter_map(|p| cpu_time(p).ok()).sum()
}

/// A Celery worker of one configuration, consuming the four queues.
pub struct Worker {
    child: Child,
    /// The ready flag and the worker's log.
    dir: tempfile::TempDir,
}

impl Worker {
    /// The end of the worker's log, for a failure's message.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("worker.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn cpu(&self) -> Duration {
        tree_cpu(self.child.id())
    }

    /// kill -9 of the worker and every process of it.
    pub fn kill(mut self) {
        kill_group_now(&mut self.child);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        kill_group_now(&mut self.child);
    }
}

/// The old stack against one stand-in: what its workers and its enqueueing are started with.
pub struct OldStack<'a> {
    pub install: &'a Install,
    pub rabbit: &'a Rabbit,
    pub standin: &'a StandIn,
    /// A service-account key whose token endpoint is the stand-in's.
    pub key: &'a Path,
}

impl OldStack<'_> {
    /// Starts a worker of `celery` and returns once it consumes.
    pub fn worker(&self, celery: Celery) -> anyhow::Result<Worker> {
        let dir = tempfile::tempdir()?;
        let flag = dir.path().join("ready");
        let log = std::fs::File::create(dir.path().join("worker.log"))?;
        let mut command = Command::new(self.install.venv.join("bin/celery"));
        command
            .current_dir(&self.install.dir)
            .args(["-A", "app", "worker", "-Q", "urgent,high,normal,low"])
            .arg(format!("--pool={}", celery.pool))
            .arg(format!("--concurrency={}", celery.concurrency))
            .args([
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ])
            .args(["--loglevel", "warning"])
            .env("OLDSTACK_READY", &flag)
            .stdout(log.try_clone()?)
            .stderr(log);
        self.configure(&mut command, celery);
        let mut child = spawn_owned(&mut command).context("starting a Celery worker")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !flag.exists() {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "the Celery worker exited: {status}\n{}",
                    std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default()
                );
            }
            anyhow::ensure!(Instant::now() < deadline, "no Celery worker ready in 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Worker { child, dir })
    }

    /// The old api enqueueing a broadcast of `devices` in the `normal` queue (tasks of
    /// `celery.batch` devices), as its own process.
    pub fn enqueue(&self, celery: Celery, devices: usize, title: &str) -> anyhow::Result<Child> {
        let mut command = Command::new(self.install.python());
        command
            .current_dir(&self.install.dir)
            .arg("enqueue.py")
            .arg(devices.to_string())
            .arg(celery.batch.to_string())
            .args([celery.task, "normal", title])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.configure(&mut command, celery);
        Ok(spawn_owned(&mut command)?)
    }

    fn configure(&self, command: &mut Command, celery: Celery) {
        command
            .env("OLDSTACK_BROKER", self.rabbit.url())
            .env("OLDSTACK_FCM", self.standin.url())
            .env("OLDSTACK_KEY", self.key)
            .env(
                "OLDSTACK_ACKS_LATE",
                if celery.acks_late { "1" } else { "0" },
            )
            .env("OLDSTACK_PREFETCH", celery.prefetch.to_string());
    }
}

/// Waits for `child` and returns the CPU time it used (its own `rusage`, read as it is reaped).
pub fn wait_with_cpu(child: &mut Child) -> anyhow::Result<(std::process::ExitStatus, Duration)> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: wait4 writes only into the two out-parameters, both valid for the call.
    #[allow(unsafe_code)]
    let (pid, usage) = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let pid = libc::wait4(child.id() as i32, &mut status, 0, &mut usage);
        (pid, usage)
    };
    anyhow::ensure!(pid > 0, "wait4: {}", std::io::Error::last_os_error());
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    Ok((
        std::process::ExitStatus::from_raw(status),
        time(usage.ru_utime) + time(usage.ru_stime),
    ))
}

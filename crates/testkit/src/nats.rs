//! A real nats-server with JetStream.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{process, tools::Tools};

pub struct NatsServer {
    child: Option<Child>,
    /// Holds the store for a throwaway server; `None` when the caller owns the directory.
    _temp: Option<tempfile::TempDir>,
    dir: PathBuf,
    port: u16,
    monitoring_port: u16,
}

impl NatsServer {
    /// A fresh server on an ephemeral port with a temporary store.
    pub async fn start() -> anyhow::Result<Self> {
        let temp = tempfile::Builder::new().prefix("xibaar-nats-").tempdir()?;
        let dir = temp.path().to_owned();
        let mut server = Self::launch(dir, None).await?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// A server keeping its store in `dir` (created if absent), on `port` or an ephemeral one.
    pub async fn start_in(dir: &Path, port: Option<u16>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Self::launch(dir.to_owned(), port).await
    }

    async fn launch(dir: PathBuf, port: Option<u16>) -> anyhow::Result<Self> {
        let tools = Tools::get()?;
        let ports_dir = dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)?;
        let log = std::fs::File::create(dir.join("nats-server.log"))?;
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut command = Command::new(&tools.nats_server);
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port_arg,
                "-m",
                "-1",
                "-js",
                "-n",
                "xibaar-test",
            ])
            .arg("-sd")
            .arg(dir.join("jetstream"))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = process::spawn_owned(&mut command)
            .with_context(|| format!("starting {}", tools.nats_server.display()))?;
        let (port, monitoring_port) = match wait_for_ports(&ports_dir, &mut child).await {
            Ok(p) => p,
            Err(e) => {
                process::kill_now(&mut child);
                let log = std::fs::read_to_string(dir.join("nats-server.log")).unwrap_or_default();
                return Err(e.context(format!("nats-server did not start; its log:\n{log}")));
            }
        };
        Ok(Self {
            child: Some(child),
            _temp: None,
            dir,
            port,
            monitoring_port,
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The HTTP monitoring endpoint (`/jsz`, `/varz`, …).
    pub fn monitoring_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitoring_port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Lame-duck free shutdown: SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_gracefully(&mut child, libc::SIGTERM, Duration::from_secs(5));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_now(&mut child);
        }
    }

    /// Starts again on the same port with the same store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let mut next = Self::launch(self.dir.clone(), Some(self.port)).await?;
        self.child = next.child.take();
        self.monitoring_port = next.monitoring_port;
        Ok(())
    }
}

async fn wait_for_ports(ports_dir: &Path, child: &mut Child) -> anyhow::Result<(u16, u16)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("nats-server exited with {status}");
        }
        if let Some(ports) = read_ports(ports_dir) {
            // The file is written once listeners are bound; connecting confirms it.
            if tokio::net::TcpStream::connect(("127.0.0.1", ports.0))
                .await
                .is_ok()
            {
                return Ok(ports);
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no ports file appeared in {}", ports_dir.display());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn read_ports(dir: &Path) -> Option<(u16, u16)> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "ports"))?;
    let json: Value = serde_json::from_str(&std::fs::read_to_string(entry.path()).ok()?).ok()?;
    let port_of = |key: &str| -> Option<u16> {
        let url = json.get(key)?.get(0)?.as_str()?;
        url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
    };
    Some((port_of("nats")?, port_of("monitoring")?))
}

impl Drop for NatsServer {
    /// A throwaway server is killed; one with a caller-owned store is stopped cleanly.
    fn drop(&mut self) {
        if self._temp.is_some() {
            self.kill();
        } else {
            self.stop();
        }
    }
}

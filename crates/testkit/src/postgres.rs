//! A real PostgreSQL server. A template cluster is initialised once per machine and copied for
//! each server, which is much faster than `initdb` per test.

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use sqlx::{Connection, Executor, PgConnection};

use crate::{
    process::{self, UNPRIVILEGED},
    tools::Tools,
};

pub struct Postgres {
    child: Option<Child>,
    _temp: Option<tempfile::TempDir>,
    dir: PathBuf,
    port: u16,
    durable: bool,
    /// Server settings (`-c name=value`) on top of the defaults.
    settings: Vec<(String, String)>,
}

/// The Unix user servers run as: ourselves, or `nobody` when we are root.
fn run_as() -> Option<(u32, u32)> {
    process::running_as_root().then_some(UNPRIVILEGED)
}

fn command(bin: &Path) -> Command {
    let mut command = Command::new(bin);
    if let Some((uid, gid)) = run_as() {
        // std also drops supplementary groups when a root parent sets the uid.
        command.uid(uid).gid(gid);
    }
    command
}

/// Gives the server's user the directory (and makes the path to it traversable).
fn hand_over(dir: &Path) -> anyhow::Result<()> {
    if let Some((uid, gid)) = run_as() {
        process::chown_tree(dir, uid, gid).with_context(|| format!("chown {}", dir.display()))?;
    }
    Ok(())
}

fn template_dir(tools: &Tools) -> anyhow::Result<PathBuf> {
    let version = std::process::Command::new(tools.pg_bin_dir.join("postgres"))
        .arg("--version")
        .output()?;
    let version = String::from_utf8_lossy(&version.stdout);
    let tag: String = version
        .split_whitespace()
        .last()
        .unwrap_or("unknown")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    let root = std::env::temp_dir().join("xibaar-testkit");
    std::fs::create_dir_all(&root)?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
    let template = root.join(format!("pg-template-{tag}"));
    if template.join("PG_VERSION").exists() {
        return Ok(template);
    }
    let staging = tempfile::Builder::new()
        .prefix("pg-init-")
        .tempdir_in(&root)?;
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))?;
    let data = staging.path().join("data");
    initdb(tools, &data)?;
    // Another process may have won the race; either template is good.
    match std::fs::rename(&data, &template) {
        Ok(()) => {}
        Err(_) if template.join("PG_VERSION").exists() => {}
        Err(e) => return Err(e).context("installing the template cluster"),
    }
    Ok(template)
}

fn initdb(tools: &Tools, data: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data)?;
    hand_over(data)?;
    let out = command(&tools.pg_bin_dir.join("initdb"))
        .arg("-D")
        .arg(data)
        .args([
            "--auth=trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .output()
        .context("running initdb")?;
    if !out.status.success() {
        bail!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Postgres {
    /// A throwaway server for a test: fsync off, data in a temporary directory.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// A throwaway server with `settings` (such as `("shared_buffers", "2GB")`) on top of the
    /// defaults.
    pub async fn start_with(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let tools = Tools::get()?;
        let template = template_dir(tools)?;
        let temp = tempfile::Builder::new().prefix("xibaar-pg-").tempdir()?;
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o755))?;
        let dir = temp.path().to_owned();
        let status = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(dir.join("data"))
            .status()?;
        if !status.success() {
            bail!("copying the template cluster failed");
        }
        let mut pg = Self {
            child: None,
            _temp: Some(temp),
            dir,
            port: 0,
            durable: false,
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        pg.launch(None).await?;
        Ok(pg)
    }

    /// A server keeping its cluster in `dir`, initialised on first use, with fsync on.
    pub async fn start_in(dir: &Path, port: Option<u16>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let data = dir.join("data");
        if !data.join("PG_VERSION").exists() {
            initdb(Tools::get()?, &data)?;
        }
        let mut pg = Self {
            child: None,
            _temp: None,
            dir: dir.to_owned(),
            port: 0,
            durable: true,
            settings: Vec::new(),
        };
        pg.launch(port).await?;
        Ok(pg)
    }

    async fn launch(&mut self, port: Option<u16>) -> anyhow::Result<()> {
        let tools = Tools::get()?;
        let socket_dir = self.dir.join("socket");
        std::fs::create_dir_all(&socket_dir)?;
        hand_over(&socket_dir)?;
        hand_over(&self.dir.join("data"))?;
        let mut last_error = None;
        for _ in 0..5 {
            let port = match port {
                Some(p) => p,
                None => crate::free_port()?,
            };
            let log_path = self.dir.join("postgres.log");
            let log = std::fs::File::create(&log_path)?;
            let mut cmd = command(&tools.pg_bin_dir.join("postgres"));
            cmd.arg("-D")
                .arg(self.dir.join("data"))
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .arg("-k")
                .arg(&socket_dir)
                .args(["-c", "max_connections=300", "-c", "shared_buffers=64MB"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            if !self.durable {
                cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                    .args(["-c", "full_page_writes=off"]);
            }
            for (name, value) in &self.settings {
                cmd.arg("-c").arg(format!("{name}={value}"));
            }
            let mut child = process::spawn_owned(&mut cmd).context("starting postgres")?;
            match wait_ready(port, &self.dir.join("data"), &mut child).await {
                Ok(()) => {
                    self.child = Some(child);
                    self.port = port;
                    return Ok(());
                }
                Err(e) => {
                    process::kill_now(&mut child);
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    let taken = format!("{e:#}").contains(PORT_TAKEN);
                    last_error = Some(e.context(format!("postgres log:\n{log}")));
                    if !taken && !log.contains("could not bind") && !log.contains("already in use")
                    {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates `name` (if absent) and returns its URL.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let mut conn = PgConnection::connect(&self.url("postgres")).await?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(name)
                .fetch_optional(&mut conn)
                .await?;
        if exists.is_none() {
            let statement = format!("CREATE DATABASE {}", identifier(name));
            conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(statement)))
                .await?;
        }
        Ok(self.url(name))
    }

    /// Creates `name` (if absent) and a pool of connections to it.
    pub async fn pool(&self, name: &str) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::PgPool::connect(&self.create_database(name).await?).await?)
    }

    /// Drops database `name` (made by [`Postgres::create_database`]), ending its sessions.
    pub async fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect(&self.url("postgres")).await?;
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", identifier(name));
        conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(statement)))
            .await?;
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_now(&mut child);
        }
    }

    /// Fast shutdown (SIGINT), as an operator would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_gracefully(&mut child, libc::SIGINT, Duration::from_secs(10));
        }
    }

    /// Starts again on the same port with the same data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let port = self.port;
        self.launch(Some(port)).await
    }
}

/// Says the port was taken by another server between choosing it and binding it.
const PORT_TAKEN: &str = "already in use by another server";

/// Waits until the server of `data` accepts connections on `port`. The port was free when
/// chosen, but another test's server may have bound it since: a server answering there with
/// another data directory is not this one.
async fn wait_ready(port: u16, data: &Path, child: &mut Child) -> anyhow::Result<()> {
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let ours = data.canonicalize().unwrap_or_else(|_| data.to_owned());
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("postgres exited with {status}");
        }
        match PgConnection::connect(&url).await {
            Ok(mut conn) => {
                let serving: String = sqlx::query_scalar("SHOW data_directory")
                    .fetch_one(&mut conn)
                    .await?;
                let _ = conn.close().await;
                let serving = Path::new(&serving);
                let serving = serving
                    .canonicalize()
                    .unwrap_or_else(|_| serving.to_owned());
                if serving != ours {
                    bail!("port {port} is {PORT_TAKEN} ({})", serving.display());
                }
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(anyhow::anyhow!(e).context("postgres did not accept connections"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

impl Drop for Postgres {
    /// A throwaway server is killed; a durable one gets a fast shutdown so its data is clean.
    fn drop(&mut self) {
        if self.durable {
            self.stop();
        } else {
            self.kill();
        }
    }
}

/// `name` as a quoted SQL identifier, stripped of quotes so that it cannot break out of it.
fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', ""))
}

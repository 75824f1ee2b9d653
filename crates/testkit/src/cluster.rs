//! A real three-node nats-server cluster on loopback: each node with its own `server_name`,
//! client, monitoring and cluster ports and store, one `cluster.name`, routes listing all three.
//! Nodes can be killed (-9) and started again on the same ports and store, one at a time or
//! before the cluster has ever formed.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context, bail};

use crate::{process, tools::Tools};

/// One node: its ports and store never change, so a restart rejoins as itself.
#[derive(Debug)]
struct Node {
    name: String,
    client_port: u16,
    monitoring_port: u16,
    config: PathBuf,
    log: PathBuf,
    /// The running process; behind a lock so a test can kill and start nodes while the
    /// pipeline on the cluster is shared by its tasks.
    child: Mutex<Option<Child>>,
}

impl Node {
    fn running(&self) -> bool {
        self.child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

/// A Raft group of JetStream: a stream (a key-value bucket is the stream `KV_<bucket>`), or a
/// durable consumer of one.
#[derive(Debug, Clone, Copy)]
pub enum Group<'a> {
    Stream(&'a str),
    Consumer(&'a str, &'a str),
}

impl Group<'_> {
    fn stream(&self) -> &str {
        match self {
            Group::Stream(s) | Group::Consumer(s, _) => s,
        }
    }
}

pub struct NatsCluster {
    nodes: Vec<Node>,
    _temp: tempfile::TempDir,
}

/// Ports free now. The cluster routes need every node's port before any node starts, so they
/// are chosen ahead; one taken in between makes that node fail to start, and the cluster is
/// laid out again on other ports.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// `/dev/shm` when it has room for three nodes' stores. Three replicas of every write on a
/// virtual disk make a cluster test wait on I/O most of its time; on a memory-backed file
/// system the stores still outlive a killed node (they are files, not the process's memory), so
/// a restarted node recovers from them as it would from a disk.
fn memory_backed_dir() -> Option<PathBuf> {
    const ROOM: u64 = 2 << 30;
    let shm = std::path::Path::new("/dev/shm");
    let stat = rustix::fs::statvfs(shm).ok()?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    (shm.is_dir() && free >= ROOM).then(|| shm.to_path_buf())
}

impl NatsCluster {
    /// Three nodes, started and formed: every node answers, and JetStream has a meta leader.
    pub async fn start() -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            let cluster = Self::lay_out()?;
            match cluster.start_all().await {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the cluster did not form")))
    }

    /// Three nodes configured, none started: for starting roles before the cluster forms.
    pub fn lay_out() -> anyhow::Result<Self> {
        let mut temp = tempfile::Builder::new();
        temp.prefix("xibaar-nats-cluster-");
        let temp = match memory_backed_dir() {
            Some(shm) => temp.tempdir_in(shm)?,
            None => temp.tempdir()?,
        };
        let ports = free_ports(9)?;
        let routes: Vec<String> = (0..3)
            .map(|i| format!("nats-route://127.0.0.1:{}", ports[6 + i]))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let name = format!("n{}", i + 1);
            let dir = temp.path().join(&name);
            std::fs::create_dir_all(&dir)?;
            let config = dir.join("nats-server.conf");
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\n\
                     logtime_utc: true\n\
                     listen: 127.0.0.1:{client}\n\
                     http: 127.0.0.1:{http}\n\
                     jetstream {{ store_dir: {store:?} }}\n\
                     cluster {{\n  name: xibaar-test\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n",
                    client = ports[i],
                    http = ports[3 + i],
                    store = dir.join("jetstream").display().to_string(),
                    route = ports[6 + i],
                    routes = routes.join(", "),
                ),
            )?;
            nodes.push(Node {
                name,
                client_port: ports[i],
                monitoring_port: ports[3 + i],
                config,
                log: dir.join("nats-server.log"),
                child: Mutex::new(None),
            });
        }
        Ok(Self { nodes, _temp: temp })
    }

    async fn start_all(&self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.start_node(i).await?;
        }
        self.wait_formed().await
    }

    /// Starts node `i` (0, 1 or 2) on its ports and store; returns once it accepts clients.
    pub async fn start_node(&self, i: usize) -> anyhow::Result<()> {
        let tools = Tools::get()?;
        let node = &self.nodes[i];
        if node.running() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut command = Command::new(&tools.nats_server);
        command
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = process::spawn_owned(&mut command)
            .with_context(|| format!("starting {}", node.name))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                bail!("{} exited with {status}; its log:\n{log}", node.name);
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", node.client_port))
                .await
                .is_ok()
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                process::kill_now(&mut child);
                bail!("{} did not accept clients", node.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        *node.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(())
    }

    /// Waits until JetStream answers through every running node (a meta leader is elected).
    pub async fn wait_formed(&self) -> anyhow::Result<()> {
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.running() {
                continue;
            }
            let client = async_nats::connect(self.node_url(i)).await?;
            let js = async_nats::jetstream::new(client);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while js.query_account().await.is_err() {
                if tokio::time::Instant::now() > deadline {
                    bail!("JetStream did not answer through {}", node.name);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Every node's URL, comma-separated, as `nats.url` names a cluster.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.node_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// The node's `server_name` (`n1`, `n2`, `n3`), as stream infos name their leader.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub fn monitoring_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].monitoring_port)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].running()
    }

    /// SIGKILL, as a crash or a lost server would.
    pub fn kill(&self, i: usize) {
        let child = self.nodes[i]
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(mut child) = child {
            process::kill_now(&mut child);
        }
    }

    /// The node that leads `group`, as JetStream reports it (`None` while it has no leader).
    pub async fn leader(
        js: &async_nats::jetstream::Context,
        group: Group<'_>,
    ) -> anyhow::Result<Option<String>> {
        let mut stream = js.get_stream(group.stream()).await?;
        let cluster = match group {
            Group::Stream(_) => stream.info().await?.cluster.clone(),
            Group::Consumer(_, consumer) => stream.consumer_info(consumer).await?.cluster.clone(),
        };
        Ok(cluster.and_then(|c| c.leader))
    }

    /// Moves `group`'s leadership to node `to`: asks the leader to step down in favour of it
    /// (JetStream's `placement.preferred`) until node `to` leads, as an operator moves
    /// leaders off a server before maintenance.
    pub async fn move_leader(
        &self,
        js: &async_nats::jetstream::Context,
        group: Group<'_>,
        to: usize,
    ) -> anyhow::Result<()> {
        let wanted = self.name(to).to_owned();
        let request = serde_json::json!({ "placement": { "preferred": wanted } });
        let subject = match group {
            Group::Stream(stream) => format!("STREAM.LEADER.STEPDOWN.{stream}"),
            Group::Consumer(stream, consumer) => {
                format!("CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}")
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if Self::leader(js, group).await.ok().flatten().as_deref() == Some(&wanted) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{group:?} would not move to {wanted}");
            }
            let answer: Result<serde_json::Value, _> = js.request(subject.clone(), &request).await;
            if let Ok(answer) = answer
                && answer.get("error").is_some()
            {
                tracing::debug!(?group, %answer, "step-down refused; trying again");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The node's log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Every stream and consumer leadership the nodes took, as their logs record it, oldest
    /// first.
    pub fn elections(&self) -> Vec<Election> {
        let mut elections: Vec<Election> = (0..self.nodes.len())
            .flat_map(|i| {
                self.log(i)
                    .lines()
                    .filter_map(|line| Election::parse(line, i))
                    .collect::<Vec<_>>()
            })
            .collect();
        elections.sort_by_key(|e| e.at);
        elections
    }
}

/// A node becoming the leader of a stream or consumer.
#[derive(Debug, Clone)]
pub struct Election {
    /// When the node logged it (the nodes log in UTC).
    pub at: chrono::DateTime<chrono::Utc>,
    pub node: usize,
    /// `stream` or `stream > consumer`.
    pub group: String,
}

impl Election {
    /// From a log line such as `[41] 2026/12/03 22:53:43.123456 [INF] JetStream cluster new
    /// consumer leader for '$G > STREAM > consumer'`.
    fn parse(line: &str, node: usize) -> Option<Self> {
        let (_, rest) = line.split_once("] ")?;
        let (stamp, rest) = rest.split_once(" [INF] JetStream cluster new ")?;
        let (_, group) = rest
            .strip_prefix("stream leader for '")
            .or_else(|| rest.strip_prefix("consumer leader for '"))?
            .strip_suffix('\'')?
            .split_once(" > ")?;
        let at = chrono::NaiveDateTime::parse_from_str(stamp, "%Y/%m/%d %H:%M:%S%.f").ok()?;
        Some(Self {
            at: at.and_utc(),
            node,
            group: group.to_owned(),
        })
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Election;

    #[test]
    fn an_election_is_read_from_the_line_its_winner_logs() {
        let consumer = Election::parse(
            "[41] 2026/12/03 22:53:43.123456 [INF] JetStream cluster new consumer leader for '$G > XIBAAR_DELIVERIES > sender-normal'",
            2,
        )
        .unwrap();
        assert_eq!(consumer.group, "XIBAAR_DELIVERIES > sender-normal");
        assert_eq!(consumer.node, 2);
        assert_eq!(consumer.at.to_rfc3339(), "2026-12-03T22:53:43.123456+00:00");
        let stream = Election::parse(
            "[41] 2026/12/03 22:53:44.000001 [INF] JetStream cluster new stream leader for '$G > KV_sent'",
            0,
        )
        .unwrap();
        assert_eq!(stream.group, "KV_sent");
        for other in [
            "[41] 2026/12/03 22:53:44.000001 [INF] JetStream cluster new metadata leader",
            "[41] 2026/12/03 22:53:44.000001 [WRN] JetStream cluster new stream leader for '$G > X'",
            "garbage",
        ] {
            assert!(Election::parse(other, 0).is_none(), "{other}");
        }
    }
}

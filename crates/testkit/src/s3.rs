//! An S3 server for tests, benchmarks and the local pipeline: `s3s-fs` (objects as files under
//! a throwaway directory) behind `s3s`'s signature checks, served on a loopback port by this
//! process. It can be stopped (every connection dropped, the port closed) and started again
//! on the same port with the same objects, to test an archive that goes away for a while.

use std::{net::SocketAddr, path::PathBuf, sync::Mutex};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder,
};
use tokio::{net::TcpListener, task::JoinSet};

pub const ACCESS_KEY: &str = "xibaar-test-access";
pub const SECRET_KEY: &str = "xibaar-test-secret-0123456789";
pub const BUCKET: &str = "xibaar-archive";

pub struct S3Server {
    addr: SocketAddr,
    root: PathBuf,
    _dir: Option<tempfile::TempDir>,
    /// The accept loop and every connection; dropped (aborted) to stop.
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server")
            .field("addr", &self.addr)
            .finish()
    }
}

impl S3Server {
    /// A server with bucket [`BUCKET`] in a fresh directory.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut server = Self::start_in(dir.path().to_owned()).await?;
        server._dir = Some(dir);
        Ok(server)
    }

    /// A server keeping its objects under `root` (a local pipeline keeps them across runs).
    pub async fn start_in(root: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root.join(BUCKET))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = Self {
            addr,
            root,
            _dir: None,
            tasks: Mutex::new(None),
        };
        server.serve(listener)?;
        Ok(server)
    }

    fn serve(&self, listener: TcpListener) -> anyhow::Result<()> {
        let service = {
            let fs = s3s_fs::FileSystem::new(&self.root)
                .map_err(|e| anyhow::anyhow!("s3s-fs at {}: {e:?}", self.root.display()))?;
            let mut builder = s3s::service::S3ServiceBuilder::new(fs);
            builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            builder.build()
        };
        let mut tasks = JoinSet::new();
        let connections = std::sync::Arc::new(Mutex::new(JoinSet::new()));
        tasks.spawn(async move {
            let http = Builder::new(TokioExecutor::new());
            // The connections' set is dropped with the accept loop: stopping drops them all.
            let _held = ConnectionsGuard(connections.clone());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let connection = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                connections.lock().expect("not poisoned").spawn(async move {
                    let _ = connection.await;
                });
            }
        });
        *self.tasks.lock().expect("not poisoned") = Some(tasks);
        Ok(())
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the objects are, as files (`<root>/<bucket>/<key>`).
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Closes the port and drops every connection.
    pub fn stop(&self) {
        self.tasks.lock().expect("not poisoned").take();
    }

    /// Serves again on the same port, with the same objects.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener)
    }

    /// The `[archive]` settings that reach this server, as TOML.
    pub fn archive_toml(&self) -> String {
        format!(
            "bucket = \"{BUCKET}\"\nendpoint = \"{}\"\npath_style = true\n\
             access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n",
            self.endpoint()
        )
    }
}

struct ConnectionsGuard(std::sync::Arc<Mutex<JoinSet<()>>>);

impl Drop for ConnectionsGuard {
    fn drop(&mut self) {
        if let Ok(mut set) = self.0.lock() {
            set.abort_all();
        }
    }
}

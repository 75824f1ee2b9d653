//! Where the pinned server binaries (and the OpenAPI fuzzer) are. `XIBAAR_NATS_SERVER`,
//! `XIBAAR_PG_BIN_DIR` and `XIBAAR_SCHEMATHESIS` point at other builds; otherwise
//! `scripts/install-tools` puts them under `.xibaar/tools` (and is run here when they are
//! missing, so `cargo test` works on a fresh clone).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use anyhow::{Context, bail};

#[derive(Debug, Clone)]
pub struct Tools {
    pub nats_server: PathBuf,
    pub pg_bin_dir: PathBuf,
    /// The OpenAPI fuzzer the api's property test runs.
    pub schemathesis: PathBuf,
    /// The tools venv's Python, with the official Firebase Admin SDK installed.
    pub python: PathBuf,
    /// `node_modules/.bin` of the pinned npm tools (redocly, openapi-typescript, tsc).
    pub npm_bin: PathBuf,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

impl Tools {
    /// Finds the binaries, installing the pinned versions on first use.
    pub fn get() -> anyhow::Result<&'static Tools> {
        static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
        TOOLS
            .get_or_init(|| Self::locate().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn locate() -> anyhow::Result<Tools> {
        let root = workspace_root();
        let venv = root.join(".xibaar/tools/venv");
        let from_env = |var| std::env::var_os(var).map(PathBuf::from);
        let nats_server = from_env("XIBAAR_NATS_SERVER");
        let pg_bin_dir = from_env("XIBAAR_PG_BIN_DIR");
        let schemathesis = from_env("XIBAAR_SCHEMATHESIS");
        if nats_server.is_none() || pg_bin_dir.is_none() || schemathesis.is_none() {
            let status = Command::new(root.join("scripts/install-tools"))
                .status()
                .context("running scripts/install-tools")?;
            if !status.success() {
                bail!("scripts/install-tools failed ({status})");
            }
        }
        let nats_server = nats_server.unwrap_or_else(|| venv.join("bin/nats-server"));
        let schemathesis = schemathesis.unwrap_or_else(|| venv.join("bin/schemathesis"));
        let pg_bin_dir = match pg_bin_dir {
            Some(dir) => dir,
            None => find_embedded_postgres(&venv)?,
        };
        for path in [
            &nats_server,
            &pg_bin_dir.join("postgres"),
            &pg_bin_dir.join("initdb"),
            &schemathesis,
        ] {
            if !path.exists() {
                bail!("{} does not exist", path.display());
            }
        }
        Ok(Tools {
            nats_server,
            pg_bin_dir,
            schemathesis,
            python: venv.join("bin/python"),
            npm_bin: root.join(".xibaar/tools/npm/node_modules/.bin"),
        })
    }
}

fn find_embedded_postgres(venv: &Path) -> anyhow::Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let dir = entry?
            .path()
            .join("site-packages/embedded_postgres/pginstall/bin");
        if dir.is_dir() {
            return Ok(dir);
        }
    }
    bail!(
        "embedded-postgres is not installed under {}",
        venv.display()
    )
}

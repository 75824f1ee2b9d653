//! `xibaar --version` names the commit it was built from: `XIBAAR_COMMIT` when the build sets it
//! (the container image's build argument), else `git rev-parse` of the checkout, else
//! `unknown` (a source archive).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=XIBAAR_COMMIT");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    // A new commit or checkout changes HEAD (or the branch it points to).
    for path in [".git/HEAD", ".git/refs/heads"] {
        let path = format!("{root}/{path}");
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("XIBAAR_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["-C", root, "rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=XIBAAR_COMMIT={commit}");
}

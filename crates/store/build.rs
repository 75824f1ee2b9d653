//! Embeds the migrations: `$OUT_DIR/migrations.rs` lists every `migrations/*.sql` file by name,
//! with its text through `include_str!`. (`sqlx::migrate!` would do the same, but its
//! proc-macro crate compiles sqlx's Postgres driver and its dependencies a second time, for the
//! host: about a minute of every clean build on two cores.)

use std::{env, fs, path::PathBuf};

fn main() {
    let dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("migrations");
    // A migration added to the folder reaches an incrementally built binary.
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("reading migrations/")
        .map(|entry| entry.expect("reading migrations/").path())
        .filter(|path| path.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let mut code = String::from("&[\n");
    for path in files {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 file name");
        code.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("]\n");
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("migrations.rs");
    fs::write(out, code).expect("writing migrations.rs");
}

//! The checked-in schemas under `schemas/` are what the code generates. Run with
//! `XIBAAR_UPDATE_SCHEMAS=1` to rewrite them after a deliberate change.

use std::path::PathBuf;

#[test]
fn checked_in_schemas_match_the_rust_types() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let update = std::env::var_os("XIBAAR_UPDATE_SCHEMAS").is_some();
    let mut drifted = Vec::new();
    for (path, schema) in xibaar_core::schema::catalog() {
        let file = root.join(&path);
        let generated = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        if update {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &generated).unwrap();
            continue;
        }
        match std::fs::read_to_string(&file) {
            Ok(existing) if existing == generated => {}
            Ok(_) => drifted.push(format!("{path} differs from the code")),
            Err(e) => drifted.push(format!("{path} cannot be read: {e}")),
        }
    }
    assert!(
        drifted.is_empty(),
        "schemas drifted (rerun with XIBAAR_UPDATE_SCHEMAS=1 if the change is intended):\n{}",
        drifted.join("\n")
    );
}

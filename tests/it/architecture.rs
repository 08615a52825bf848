//! The engine knows no wire protocol: nothing outside the milter adapter may
//! mention indymilter. If this fails, the boundary blurred; move the code.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_policy_engine_does_not_know_the_milter_protocol() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for part in ["engine", "config", "checks", "modifiers", "cli"] {
        rust_files(&root.join(part), &mut files);
    }
    for file in [
        "policy.rs",
        "address.rs",
        "edits.rs",
        "message.rs",
        "reply.rs",
        "stage.rs",
        "tables.rs",
    ] {
        files.push(root.join(file));
    }
    assert!(files.len() > 20, "found the sources");
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable");
        assert!(
            !text.to_lowercase().contains("indymilter"),
            "{} mentions indymilter; protocol code belongs in the milter adapter",
            f.display()
        );
    }
}

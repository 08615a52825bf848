//! The fuzz targets' inputs, replayed in the normal test suite: every seed
//! of `fuzz/corpus/TARGET/` and every input that once made a target fail,
//! kept in `fuzz/regressions/TARGET/`, goes through the same properties the
//! fuzz target asserts (`fuzz/src/lib.rs`, included here as it is). So a
//! crash the fuzzer finds becomes a test by saving its input there, and a
//! target's seeds cannot rot without `cargo test` noticing.

#[path = "../../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `fuzz/KIND/TARGET`, sorted; none if it does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = dir
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Run one target on all its seeds and regressions; fail naming every
/// input that fails.
fn replay(target: &str) {
    let (_, run) = harness::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a target of fuzz/src/lib.rs");
    let seeds = inputs("corpus", target);
    assert!(!seeds.is_empty(), "fuzz/corpus/{target}/ has no seed");
    let mut failed = Vec::new();
    for file in seeds.iter().chain(&inputs("regressions", target)) {
        let data = std::fs::read(file).expect("readable input");
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target} fails on {failed:#?}");
}

macro_rules! replay_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target));
            }
        )*

        /// Every fuzz target is replayed here, and every one replayed is a
        /// fuzz target.
        #[test]
        fn every_fuzz_target_is_replayed() {
            let replayed = [$(stringify!($target)),*];
            let harness: Vec<&str> = harness::TARGETS.iter().map(|(n, _)| *n).collect();
            assert_eq!(harness, replayed, "fuzz/src/lib.rs TARGETS and this file differ");
            let mut binaries: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
                .expect("fuzz/fuzz_targets")
                .map(|e| {
                    let path = e.expect("dir entry").path();
                    path.file_stem().expect("a file name").to_string_lossy().into_owned()
                })
                .collect();
            binaries.sort();
            assert_eq!(binaries, replayed, "fuzz/fuzz_targets/ and this file differ");
        }
    };
}

replay_tests!(
    address,
    auth_records,
    auth_results,
    config,
    dkim_key,
    engine,
    from_header,
    header_value,
    map_file,
    message,
    milter_wire,
);

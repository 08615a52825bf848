//! Golden tests for configuration error messages: every
//! `tests/config_errors/NAME.toml` must fail to load with exactly the text in
//! `tests/config_errors/NAME.expected` (the `Display` of `ConfigErrors`,
//! followed by one newline so the file ends like any text file).
//!
//! After a deliberate change to the messages, regenerate the expected files
//! with `UPDATE_GOLDEN=1 cargo test --test it config_errors` and review the diff:
//! each message must name file:line:col, read well, and say what to do.

use dispatch_milter::config;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// Relative to the package root, which is the working directory cargo gives
/// integration tests; the paths in messages are printed the same way.
const DIR: &str = "tests/config_errors";

/// The fixtures, sorted by name so failures are reported in a stable order.
fn fixtures() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(DIR)
        .unwrap_or_else(|e| panic!("cannot list {DIR}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// The error text for one fixture, or why there is none.
fn error_text(path: &Path) -> Result<String, String> {
    match config::load(path) {
        Ok(_) => Err("the configuration compiled without errors".to_string()),
        Err(errors) => Ok(errors.to_string()),
    }
}

/// What every message must look like whatever its wording: each error line
/// starts with `FILE:LINE:COL: ` and each other line is a hint.
fn shape_problems(path: &Path, text: &str) -> Vec<String> {
    let prefix = format!("{}:", path.display());
    let mut problems = Vec::new();
    for line in text.lines() {
        if line.starts_with("  hint: ") {
            continue;
        }
        let position = line.strip_prefix(&prefix).and_then(|rest| {
            let mut parts = rest.splitn(3, ':');
            let line_no = parts.next()?.parse::<usize>().ok()?;
            let col = parts.next()?.parse::<usize>().ok()?;
            let message = parts.next()?.strip_prefix(' ')?;
            (line_no > 0 && col > 0 && !message.is_empty()).then_some(())
        });
        if position.is_none() {
            problems.push(format!("line without {prefix}LINE:COL: prefix: {line:?}"));
        }
    }
    problems
}

#[test]
fn error_messages_match_the_golden_files() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let fixtures = fixtures();
    assert!(
        fixtures.len() >= 12,
        "expected at least 12 fixtures in {DIR}, found {}",
        fixtures.len()
    );

    let mut failures = String::new();
    let mut updated = Vec::new();
    for toml in &fixtures {
        let expected_path = toml.with_extension("expected");
        let actual = match error_text(toml) {
            Ok(text) => text,
            Err(why) => {
                let _ = writeln!(failures, "--- {}: {why}\n", toml.display());
                continue;
            }
        };
        for problem in shape_problems(toml, &actual) {
            let _ = writeln!(failures, "--- {}: {problem}\n", toml.display());
        }
        if update {
            let current = fs::read_to_string(&expected_path).ok();
            let wanted = format!("{actual}\n");
            if current.as_deref() != Some(wanted.as_str()) {
                fs::write(&expected_path, wanted)
                    .unwrap_or_else(|e| panic!("cannot write {}: {e}", expected_path.display()));
                updated.push(expected_path.display().to_string());
            }
            continue;
        }
        let expected = match fs::read_to_string(&expected_path) {
            Ok(text) => text,
            Err(e) => {
                let _ = writeln!(
                    failures,
                    "--- {}: cannot read {}: {e} (run with UPDATE_GOLDEN=1 to create it)\n",
                    toml.display(),
                    expected_path.display()
                );
                continue;
            }
        };
        let expected = expected.strip_suffix('\n').unwrap_or(&expected);
        if expected != actual {
            let _ = writeln!(
                failures,
                "--- {}\nexpected:\n{expected}\nactual:\n{actual}\n",
                toml.display()
            );
        }
    }

    // An expected file without its fixture is a test that silently stopped
    // running.
    for entry in fs::read_dir(DIR).expect("list fixtures") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "expected")
            && !path.with_extension("toml").exists()
        {
            let _ = writeln!(
                failures,
                "--- {}: no matching .toml fixture\n",
                path.display()
            );
        }
    }

    if !updated.is_empty() {
        eprintln!("updated:\n  {}", updated.join("\n  "));
    }
    assert!(
        failures.is_empty(),
        "configuration error messages differ from {DIR}/*.expected \
         (UPDATE_GOLDEN=1 rewrites them; review the diff):\n\n{failures}"
    );
}

/// The golden files only hold text; these pin down the properties that matter
/// most independently of wording.
#[test]
fn several_errors_are_reported_together_in_file_order() {
    let path = Path::new("tests/config_errors/several_errors.toml");
    let text = error_text(path).expect("several_errors.toml must not compile");
    let positions: Vec<(usize, usize)> = text
        .lines()
        .filter(|l| !l.starts_with("  hint: "))
        .map(|l| {
            let rest = l
                .strip_prefix("tests/config_errors/several_errors.toml:")
                .unwrap_or_else(|| panic!("no file prefix in {l:?}"));
            let mut parts = rest.splitn(3, ':');
            let line = parts.next().unwrap().parse().unwrap();
            let col = parts.next().unwrap().parse().unwrap();
            (line, col)
        })
        .collect();
    assert!(
        positions.len() >= 5,
        "expected every error of the file, got:\n{text}"
    );
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted, "errors not in file order:\n{text}");
}

#[test]
fn table_paths_resolve_against_the_config_directory() {
    let path = Path::new("tests/config_errors/missing_table_file.toml");
    let text = error_text(path).expect("missing_table_file.toml must not compile");
    assert!(
        text.contains("\"no-such-dir/mailboxes\" (relative to the configuration's directory)"),
        "the table path should say it is relative to the config's directory:\n{text}"
    );
    // And it really is: the same relative path next to the config loads.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("maps")).unwrap();
    std::fs::write(dir.path().join("maps/boxes"), "a@example.org\n").unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[tables.t]\ntype = \"file\"\npath = \"maps/boxes\"\n[pipelines.p]\n",
    )
    .unwrap();
    assert!(
        dispatch_milter::config::load(&cfg).is_ok(),
        "a table next to the config loads from any working directory"
    );
}

//! Tools a test needs that a machine may lack (Postfix, miltertest, Python
//! libraries). Such a test is marked `#[ignore = "needs TOOL: apt-get
//! install PACKAGE"]`, so `cargo test` lists it as ignored rather than
//! passing it silently, and `cargo test -- --include-ignored` runs it (as
//! .ci/run does after installing every tool). Run without the tool, it
//! fails at once and says what to install.

use std::process::{Command, Stdio};

/// Fails the test, saying what to install, unless `present`.
pub fn require(present: bool, what: &str) {
    assert!(present, "{what}");
}

/// Whether `program ARGS` runs and exits 0.
pub fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `name` as found in PATH or else in `dirs` (the sbin directories are not
/// in every user's PATH).
pub fn find(name: &str, dirs: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path.into_iter()
        .chain(dirs.iter().map(std::path::PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `name` from [`find`], or fail the test saying `install`.
pub fn require_program(name: &str, dirs: &[&str], install: &str) -> std::path::PathBuf {
    let found = find(name, dirs);
    require(found.is_some(), &format!("needs {name}: {install}"));
    found.unwrap_or_default()
}

/// The Python the cross-checks run: Debian's, where python3-spf and
/// python3-dkim install their modules.
pub const PYTHON: &str = "/usr/bin/python3";

/// Fails unless Debian's python3 can import `modules` (comma-separated).
pub fn require_python(modules: &str, package: &str) {
    require(
        runs(PYTHON, &["-c", &format!("import {modules}")]),
        &format!("needs {PYTHON} with {modules}: apt-get install {package}"),
    );
}

//! `dispatch-milter check -c FILE`: load and compile the configuration and
//! print a one-line summary, or every error with file, line and column.

use crate::config;
use crate::policy::Policy;
use std::path::Path;

/// A one-line description of a compiled policy.
pub fn summary(policy: &Policy) -> String {
    let pipelines: Vec<String> = policy
        .pipelines
        .iter()
        .map(|p| {
            let n = p.branches.len();
            format!("{} ({n} branch{})", p.name, if n == 1 { "" } else { "es" })
        })
        .collect();
    let dns = match &policy.resolver {
        None => String::new(),
        Some(s) => match &s.nameservers {
            None => ", DNS: the servers of /etc/resolv.conf".to_string(),
            Some(servers) => {
                let servers: Vec<String> = servers.iter().map(|a| a.to_string()).collect();
                format!(", DNS: {}", servers.join(" "))
            }
        },
    };
    format!(
        "{}: ok: {} checks, {} modifiers, {} tables, pipelines: {}{dns}",
        policy.file.display(),
        policy.checks.len(),
        policy.modifiers.len(),
        policy.tables.len(),
        pipelines.join(", ")
    )
}

/// Run `check` with the check and modifier kinds of `registry`; returns
/// the process exit status.
pub fn run(path: &Path, registry: &config::Registry) -> i32 {
    match config::load_with(path, registry) {
        Ok(policy) => {
            println!("{}", summary(&policy));
            0
        }
        Err(errors) => {
            eprintln!("{errors}");
            let n = errors.0.len();
            eprintln!(
                "{}: {n} error{} found; nothing was applied",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            super::EXIT_CONFIG
        }
    }
}

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
    for part in [
        "auth",
        "engine",
        "config",
        "checks",
        "modifiers",
        "cli",
        "tables",
        "message",
    ] {
        rust_files(&root.join(part), &mut files);
    }
    for file in [
        "policy.rs",
        "address.rs",
        "edits.rs",
        "reply.rs",
        "stage.rs",
        "esmtp.rs",
        "ip.rs",
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

/// The modules as the dependency rule sees them: top-level modules, with
/// the big ones split into their submodules (`checks::dkim`, `engine::runner`).
const SPLIT: [&str; 7] = [
    "auth",
    "checks",
    "modifiers",
    "daemon",
    "engine",
    "config",
    "cli",
];

fn module_of(relative: &Path) -> Option<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.as_slice() {
        [] => None,
        [one] if one == "lib" || one == "main" => None,
        // A private submodule (`mod eom;`) is its parent's code in a file
        // of its own: it counts as the parent.
        [first, second, ..] if SPLIT.contains(&first.as_str()) && is_public(first, second) => {
            Some(format!("{first}::{second}"))
        }
        [first, ..] => Some(first.clone()),
    }
}

/// Whether src/PARENT/mod.rs declares `pub mod CHILD;`.
fn is_public(parent: &str, child: &str) -> bool {
    let declaring = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(parent)
        .join("mod.rs");
    let text = std::fs::read_to_string(declaring).unwrap_or_default();
    text.lines()
        .any(|l| l.trim() == format!("pub mod {child};"))
}

/// Who uses whom among the modules of src/ (unit tests left out):
/// `crate::a::b` paths, a split module's bare `child::` paths and its
/// submodules' `super::x`.
fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    use std::collections::{BTreeMap, BTreeSet};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    // Per module: the code of each of its files, with the module path
    // `super` means in that file.
    let mut sources: BTreeMap<String, Vec<(Vec<String>, String)>> = BTreeMap::new();
    for f in &files {
        let relative = f.strip_prefix(&root).expect("under src");
        // Unit tests (a `tests.rs` beside the code) may use anything.
        if relative.ends_with("tests.rs") {
            continue;
        }
        if let Some(module) = module_of(relative) {
            let text = std::fs::read_to_string(f).expect("readable");
            // Comments name modules without using them.
            let code: String = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .flat_map(|l| [l, "\n"])
                .collect();
            let mut path: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if path.last().is_some_and(|p| p == "mod") {
                path.pop();
            }
            path.pop();
            sources.entry(module).or_default().push((path, code));
        }
    }
    let known: BTreeSet<String> = sources.keys().cloned().collect();
    let resolve = |first: &str, second: Option<&str>| -> Option<String> {
        if let Some(second) = second {
            let split = format!("{first}::{second}");
            if known.contains(&split) {
                return Some(split);
            }
        }
        known.contains(first).then(|| first.to_string())
    };
    let crate_path =
        regex::Regex::new(r"crate::([a-z_][a-z0-9_]*)(?:::([a-z_][a-z0-9_]*))?").expect("regex");
    let bare_path = regex::Regex::new(r"(?:^|[^:\w])([a-z_][a-z0-9_]*)::").expect("regex");
    let super_path_re = regex::Regex::new(r"super::([a-z_][a-z0-9_]*)").expect("regex");
    // `crate::checks::{arc, dkim, Status}` and `super::{spf, Status}`: the
    // lower-case names in the braces may be submodules.
    let crate_group = regex::Regex::new(r"crate::([a-z_][a-z0-9_]*)::\{([^}]*)\}").expect("regex");
    let super_group = regex::Regex::new(r"super::\{([^}]*)\}").expect("regex");
    let items = |group: &str| -> Vec<String> {
        group
            .split(',')
            .filter_map(|item| item.trim().split("::").next())
            .filter(|name| name.starts_with(|c: char| c.is_ascii_lowercase()))
            .map(str::to_string)
            .collect()
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, codes) in &sources {
        let uses = graph.entry(module.clone()).or_default();
        for (super_path, code) in codes {
            for c in crate_path.captures_iter(code) {
                let second = c.get(2).map(|m| m.as_str());
                uses.extend(resolve(&c[1], second));
            }
            for c in crate_group.captures_iter(code) {
                for item in items(&c[2]) {
                    uses.extend(resolve(&c[1], Some(&item)));
                }
            }
            if SPLIT.contains(&module.as_str()) {
                for c in bare_path.captures_iter(code) {
                    let child = format!("{module}::{}", &c[1]);
                    if known.contains(&child) {
                        uses.insert(child);
                    }
                }
            }
            // `super::x` from a file whose parent module is `super_path`.
            let via_super = |name: &str| -> Option<String> {
                let first = super_path.first()?;
                let second = super_path.get(1).map(String::as_str).unwrap_or(name);
                resolve(first, Some(second))
            };
            for c in super_path_re.captures_iter(code) {
                uses.extend(via_super(&c[1]));
            }
            // `use super::*`: everything of the module above.
            if code.contains("super::*") {
                let above = super_path.first().and_then(|first| {
                    let second = super_path.get(1).map(String::as_str);
                    resolve(first, second.filter(|s| is_public(first, s)))
                });
                uses.extend(above);
            }
            for c in super_group.captures_iter(code) {
                for item in items(&c[1]) {
                    uses.extend(via_super(&item));
                }
            }
        }
        uses.remove(module);
    }
    graph
}

/// Dependencies run one way (docs/architecture.md): no module reaches,
/// through others, back to itself.
#[test]
fn no_module_depends_on_itself_through_others() {
    let graph = module_graph();
    assert!(graph.len() > 40, "found the modules: {graph:?}");
    assert!(
        graph["config::registry"].contains("checks::dkim"),
        "the graph sees uses: {:?}",
        graph["config::registry"]
    );
    // Depth-first, colouring modules in progress; a module met again while
    // in progress closes a cycle, printed from where it starts.
    fn visit<'g>(
        node: &'g str,
        graph: &'g std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<&'g str>,
        done: &mut std::collections::BTreeSet<&'g str>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(start) = path.iter().position(|n| *n == node) {
            let cycle = path[start..].join(" -> ");
            panic!("import cycle: {cycle} -> {node}");
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(node);
    }
    let mut done = std::collections::BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
}

/// The layer table of docs/architecture.md, printed with
/// `cargo test --test it architecture::layers -- --nocapture`: a module's
/// layer is one more than the highest layer it uses. Also proves that the
/// graph layers completely (nothing is left over, which a cycle would do).
#[test]
fn layers() {
    let graph = module_graph();
    let mut layer: std::collections::BTreeMap<String, usize> = Default::default();
    while layer.len() < graph.len() {
        let before = layer.len();
        for (module, uses) in &graph {
            if layer.contains_key(module) {
                continue;
            }
            let known: Option<Vec<usize>> = uses.iter().map(|u| layer.get(u).copied()).collect();
            if let Some(below) = known {
                layer.insert(module.clone(), below.iter().max().map_or(0, |m| m + 1));
            }
        }
        assert!(layer.len() > before, "modules in a cycle: {graph:?}");
    }
    let top = layer.values().max().copied().unwrap_or(0);
    for n in 0..=top {
        let at: Vec<&str> = layer
            .iter()
            .filter(|(_, l)| **l == n)
            .map(|(m, _)| m.as_str())
            .collect();
        println!("| {n} | {} |", at.join(", "));
    }
}

/// The milter wire codec (src/milter) is a leaf: bytes in, bytes out. It
/// knows nothing of the engine, the checks, the policy or the daemon, so
/// the server layer built on it can be measured and replaced on its own.
#[test]
fn the_milter_codec_uses_no_other_module() {
    let graph = module_graph();
    let uses = graph.get("milter").expect("src/milter is a module");
    assert!(uses.is_empty(), "src/milter uses {uses:?}");
}

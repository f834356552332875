//! The house rules ARCHITECTURE.md states, checked on the source tree: no import cycle between
//! modules, and no file under `src/` with much more than 600 lines of non-test code.
//!
//! A module's dependencies are the `crate::…` and `super::…` paths in its non-test code. Two
//! modules are compared at the level where their paths part (`daemon/trigger` using
//! `server::hooks` is an edge `daemon → server`); a parent and its own children may use each
//! other. Any cycle of such edges is a failure that names the paths making it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most non-test lines a file under `src/` may have ("about 600").
const MAX_LINES: usize = 620;

type Module = Vec<String>;

/// Every module's non-test source: `src/a/b.rs` and `src/a/b/mod.rs` are `[a, b]`.
fn modules() -> BTreeMap<Module, (PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let file_stem = parts.last().cloned().unwrap_or_default();
            if parts == ["lib"] || parts == ["main"] || file_stem.ends_with("tests") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = match text.find("#[cfg(test)]") {
                Some(i) => text[..i].to_owned(),
                None => text,
            };
            out.insert(parts, (path, code));
        }
    }
    out
}

/// The module paths `code` (of module `at`) names, before resolution.
fn paths_named(at: &Module, code: &str) -> Vec<Module> {
    let mut out = Vec::new();
    let words = |s: &str| -> Module {
        s.split("::")
            .take_while(|w| !w.is_empty() && w.chars().all(|c| c.is_alphanumeric() || c == '_'))
            .map(str::to_owned)
            .collect()
    };
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        for (i, _) in line.match_indices("crate::") {
            if i > 0 && line[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            out.push(words(&line[i + "crate::".len()..]));
        }
        let mut rest = line;
        while let Some(i) = rest.find("super::") {
            if i > 0 && rest[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                rest = &rest[i + "super::".len()..];
                continue;
            }
            let mut tail = &rest[i..];
            let mut base = at.clone();
            while let Some(t) = tail.strip_prefix("super::") {
                base.pop();
                tail = t;
            }
            base.extend(words(tail));
            out.push(base);
            rest = &rest[i + "super::".len()..];
        }
    }
    out
}

/// The sibling-level edges between modules, each with the paths that make it.
fn edges(
    mods: &BTreeMap<Module, (PathBuf, String)>,
) -> BTreeMap<(Module, Module), BTreeSet<String>> {
    let mut out: BTreeMap<(Module, Module), BTreeSet<String>> = BTreeMap::new();
    for (at, (_, code)) in mods {
        for named in paths_named(at, code) {
            let Some(target) = (1..=named.len())
                .rev()
                .map(|k| named[..k].to_vec())
                .find(|m| mods.contains_key(m))
            else {
                continue;
            };
            let common = at.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == at.len() || common == target.len() {
                continue; // itself, an ancestor or a descendant
            }
            let (a, b) = (at[..=common].to_vec(), target[..=common].to_vec());
            out.entry((a, b)).or_default().insert(format!(
                "{} -> {}",
                at.join("/"),
                named.join("::")
            ));
        }
    }
    out
}

#[test]
fn no_module_cycles() {
    let mods = modules();
    assert!(mods.len() > 50, "the source tree was not found");
    let edges = edges(&mods);
    let mut graph: BTreeMap<&Module, BTreeSet<&Module>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        graph.entry(a).or_default().insert(b);
    }
    // A cycle through `a` exists when `a` is reachable from one of its successors.
    let mut cycles = Vec::new();
    for (a, succ) in &graph {
        let mut seen: BTreeSet<&Module> = BTreeSet::new();
        let mut stack: Vec<(&Module, Vec<&Module>)> =
            succ.iter().map(|s| (*s, vec![*a, *s])).collect();
        while let Some((m, path)) = stack.pop() {
            if m == *a {
                cycles.push(path);
                break;
            }
            if !seen.insert(m) {
                continue;
            }
            for n in graph.get(m).into_iter().flatten() {
                let mut p = path.clone();
                p.push(n);
                stack.push((n, p));
            }
        }
    }
    let report: Vec<String> = cycles
        .iter()
        .map(|c| {
            let names: Vec<String> = c.iter().map(|m| m.join("/")).collect();
            let why: Vec<String> = c
                .windows(2)
                .flat_map(|w| edges[&(w[0].clone(), w[1].clone())].iter().take(2).cloned())
                .collect();
            format!("{}\n    {}", names.join(" → "), why.join("\n    "))
        })
        .collect();
    assert!(report.is_empty(), "module cycles:\n{}", report.join("\n"));
}

#[test]
fn no_source_file_is_much_over_600_lines_of_code() {
    let mods = modules();
    assert!(mods.len() > 50, "the source tree was not found");
    let long: Vec<String> = mods
        .values()
        .map(|(path, code)| (path, code.lines().count()))
        .filter(|(_, n)| *n > MAX_LINES)
        .map(|(path, n)| format!("{}: {n} lines", path.display()))
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} non-test lines:\n{}",
        long.join("\n")
    );
}

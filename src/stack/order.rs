//! Stack order from `dependsOn`: dependencies first, ties by name, cycles refused with the cycle
//! spelled out. Works on names alone, so any list of stacks can be put in order.

use std::collections::{BTreeMap, BTreeSet};

use super::{Error, Result};

/// The positions of `stacks` (name, `dependsOn`) in an order where every stack comes after the
/// stacks it depends on. A dependency on a stack not in the list, or a cycle, is an error.
pub fn by_dependencies(stacks: &[(&str, &[String])]) -> Result<Vec<usize>> {
    let names: BTreeSet<&str> = stacks.iter().map(|(name, _)| *name).collect();
    for (name, depends_on) in stacks {
        if let Some(missing) = depends_on.iter().find(|d| !names.contains(d.as_str())) {
            return Err(Error::UnknownDependency {
                stack: (*name).to_owned(),
                missing: missing.clone(),
            });
        }
    }
    let deps: BTreeMap<String, Vec<String>> = stacks
        .iter()
        .map(|(name, depends_on)| ((*name).to_owned(), depends_on.to_vec()))
        .collect();
    let position: BTreeMap<&str, usize> = stacks
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (*name, i))
        .collect();
    Ok(topological(&deps)?
        .iter()
        .filter_map(|n| position.get(n.as_str()).copied())
        .collect())
}

/// Depth-first topological sort over `deps` (name → names it depends on), visiting names in
/// sorted order so the result is deterministic.
pub fn topological(deps: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        name: &str,
        deps: &BTreeMap<String, Vec<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> Result<()> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                let start = path.iter().position(|n| n == name).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].to_vec();
                cycle.push(name.to_owned());
                return Err(Error::DependencyCycle {
                    cycle: cycle.join(" → "),
                });
            }
            None => {}
        }
        marks.insert(name.to_owned(), Mark::Visiting);
        path.push(name.to_owned());
        let mut children: Vec<&String> = deps
            .get(name)
            .map(|d| d.iter().collect())
            .unwrap_or_default();
        children.sort();
        for child in children {
            visit(child, deps, marks, path, out)?;
        }
        path.pop();
        marks.insert(name.to_owned(), Mark::Done);
        out.push(name.to_owned());
        Ok(())
    }
    let mut marks = BTreeMap::new();
    let mut out = Vec::new();
    for name in deps.keys() {
        visit(name, deps, &mut marks, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn dependencies_come_first() {
        let g = graph(&[
            ("app", &["db", "base"]),
            ("db", &["base"]),
            ("base", &[]),
            ("aaa", &[]),
        ]);
        assert_eq!(topological(&g).unwrap(), vec!["aaa", "base", "db", "app"]);
    }

    #[test]
    fn cycles_are_spelled_out() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]);
        let err = topological(&g).unwrap_err().to_string();
        assert_eq!(err, "dependsOn cycle: a → b → c → a");
        let g = graph(&[("a", &["a"])]);
        assert_eq!(
            topological(&g).unwrap_err().to_string(),
            "dependsOn cycle: a → a"
        );
    }
}

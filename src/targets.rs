//! Targets: the clusters one host serves, each with its profile and the stacks it takes
//! (`targets:` in the host configuration; `cluster` + `profile` are the shorthand for one target
//! named `default`). **Pure**: the checks of the configuration, glob matching, which stacks a
//! target takes and which target a command acts on. The daemon runs each target with a host
//! configuration narrowed to it (`narrow`), so everything below it sees one cluster and one
//! profile.

use crate::config::{ClusterConfig, HostConfig};
pub use crate::config::{TargetConfig, check_targets as check};

/// The name of the target the `cluster` + `profile` shorthand makes.
pub const DEFAULT: &str = "default";

/// A target as the daemon and the commands use it.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub cluster: crate::cluster::Target,
    pub profile: Option<String>,
    /// Name patterns; `None`: every stack.
    pub stacks: Option<Vec<String>>,
}

impl Target {
    /// Whether the target takes the stack `name`.
    pub fn takes(&self, name: &str) -> bool {
        self.stacks
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| glob_match(p, name)))
    }

    /// How status and messages name its cluster: the kubeconfig context, else the kubeconfig
    /// file, else `default kubeconfig`.
    pub fn cluster_name(&self) -> String {
        match (&self.cluster.context, &self.cluster.kubeconfig) {
            (Some(c), _) => format!("context {c}"),
            (None, Some(k)) => format!("kubeconfig {}", k.display()),
            (None, None) => "default kubeconfig".to_owned(),
        }
    }

    /// The patterns of `stacks:` that match none of `names` (a warning: a stack may come later).
    pub fn unmatched<'a>(&'a self, names: &[&str]) -> Vec<&'a str> {
        self.stacks
            .iter()
            .flatten()
            .filter(|p| !names.iter().any(|n| glob_match(p, n)))
            .map(String::as_str)
            .collect()
    }
}

/// Whether `name` matches `pattern`: `*` any run of characters (also none), `?` one character,
/// anything else itself. Iterative (no backtracking blow-up on hostile patterns).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    // The last `*` seen and the name position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The targets of a checked configuration: `targets:`, else the shorthand's one.
pub fn of(config: &HostConfig) -> Vec<Target> {
    if config.targets.is_empty() {
        return vec![Target {
            name: DEFAULT.to_owned(),
            cluster: crate::cluster::Target {
                kubeconfig: config.cluster.kubeconfig.clone(),
                context: config.cluster.context.clone(),
            },
            profile: config.profile.clone(),
            stacks: None,
        }];
    }
    config
        .targets
        .iter()
        .map(|t| Target {
            name: t.name.clone(),
            cluster: crate::cluster::Target {
                kubeconfig: t.cluster.kubeconfig.clone(),
                context: t.cluster.context.clone(),
            },
            profile: t.profile.clone(),
            stacks: t.stacks.clone(),
        })
        .collect()
}

/// The target a command acts on: the one `--target` names, else the only one. Several targets
/// and no `--target` is an error listing them.
pub fn pick(targets: &[Target], wanted: Option<&str>) -> Result<Target, String> {
    let names = || {
        targets
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match wanted {
        Some(w) => targets
            .iter()
            .find(|t| t.name == w)
            .cloned()
            .ok_or_else(|| format!("--target {w:?}: no such target (configured: {})", names())),
        None if targets.len() == 1 => Ok(targets[0].clone()),
        None => Err(format!(
            "{} targets are configured ({}): pass --target NAME",
            targets.len(),
            names()
        )),
    }
}

/// The host configuration as one target sees it: its cluster and profile in the shorthand's
/// fields, no `targets:`. Everything that knows one cluster and one profile works on it.
pub fn narrow(config: &HostConfig, target: &Target) -> HostConfig {
    let mut c = config.clone();
    c.targets = Vec::new();
    c.cluster = ClusterConfig {
        kubeconfig: target.cluster.kubeconfig.clone(),
        context: target.cluster.context.clone(),
    };
    c.profile = target.profile.clone();
    c
}

/// The target whose Lease decides where a job of `stack` runs: the first that takes the stack.
pub fn stack_target<'a>(targets: &'a [Target], stack: &str) -> Option<&'a Target> {
    targets.iter().find(|t| t.takes(stack))
}

/// The target whose cluster a job uses: the one its `spec.target` names, else its stack's.
pub fn job_target<'a>(
    targets: &'a [Target],
    stack: &str,
    named: Option<&str>,
) -> Result<&'a Target, String> {
    match named {
        Some(n) => targets.iter().find(|t| t.name == n).ok_or_else(|| {
            format!(
                "spec.target {n:?} is not a target of this host (targets: {})",
                targets
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }),
        None => stack_target(targets, stack)
            .ok_or_else(|| format!("no target of this host takes stack {stack}")),
    }
}

/// What a command (`diff`, `sync`, `jobs`, `status`) acts on: the configuration narrowed to the
/// target `--target` names (or the only one), and that target.
pub fn for_command(
    config: &HostConfig,
    wanted: Option<&str>,
) -> Result<(HostConfig, Target), String> {
    let target = pick(&of(config), wanted)?;
    Ok((narrow(config, &target), target))
}

/// The stacks of a revision the target takes; a `--stack` it does not take is an error.
pub fn select_stacks(
    target: &Target,
    stacks: Vec<crate::stack::RenderedStack>,
    named: &[String],
) -> Result<Vec<crate::stack::RenderedStack>, String> {
    if let Some(n) = named.iter().find(|n| !target.takes(n)) {
        return Err(format!(
            "--stack {n}: target {} does not take it (targets[].stacks)",
            target.name
        ));
    }
    Ok(stacks
        .into_iter()
        .filter(|s| target.takes(&s.name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_shells_do() {
        for (p, n, want) in [
            ("web", "web", true),
            ("web", "web2", false),
            ("web-*", "web-a", true),
            ("web-*", "web-", true),
            ("web-*", "web", false),
            ("*", "anything", true),
            ("*-db", "orders-db", true),
            ("*-db", "orders-dbx", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b*", "xxbxxaxx", false),
            ("", "", true),
            ("", "a", false),
        ] {
            assert_eq!(glob_match(p, n), want, "{p:?} vs {n:?}");
        }
        // A hostile pattern stays linear-ish.
        let p = "*a".repeat(50);
        let n = "a".repeat(200) + "b";
        assert!(!glob_match(&p, &n));
    }

    fn config(yaml: &str) -> HostConfig {
        serde_saphyr::from_str(yaml).expect("yaml")
    }

    #[test]
    fn the_shorthand_is_one_target_named_default() {
        let c = config("profile: prod\ncluster: {context: ops}\n");
        check(&c).expect("valid");
        let t = of(&c);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, DEFAULT);
        assert_eq!(t[0].profile.as_deref(), Some("prod"));
        assert_eq!(t[0].cluster.context.as_deref(), Some("ops"));
        assert!(t[0].takes("anything"));
    }

    #[test]
    fn bad_target_configurations_name_the_field() {
        for (yaml, field) in [
            (
                "cluster: {context: x}\ntargets: [{name: a}]\n",
                "`cluster` and `targets`",
            ),
            (
                "profile: p\ntargets: [{name: a}]\n",
                "`profile` and `targets`",
            ),
            ("targets: [{name: A}]\n", "targets[0].name"),
            ("targets: [{name: a}, {name: a}]\n", "targets[1].name"),
            ("targets: [{name: a}, {name: b}]\n", "targets[1].cluster"),
            (
                "targets: [{name: a, cluster: {context: x}}, {name: b, cluster: {context: x}}]\n",
                "targets[1].cluster",
            ),
            (
                "targets: [{name: a, stacks: ['../x']}]\n",
                "targets[0].stacks[0]",
            ),
            ("targets: [{name: a, stacks: []}]\n", "targets[0].stacks"),
        ] {
            let e = check(&config(yaml)).expect_err(yaml);
            assert!(e.contains(field), "{yaml}: {e}");
        }
    }

    #[test]
    fn a_target_takes_the_stacks_its_patterns_name() {
        let c = config(
            "targets:\n- {name: a, profile: local, cluster: {context: a}}\n- {name: b, profile: prod, cluster: {context: b}, stacks: [web, 'db-*', nothing-*]}\n",
        );
        check(&c).expect("valid");
        let t = of(&c);
        assert!(t[0].takes("web") && t[0].takes("other"));
        assert!(t[1].takes("web") && t[1].takes("db-main") && !t[1].takes("other"));
        assert_eq!(
            t[1].unmatched(&["web", "db-main", "other"]),
            vec!["nothing-*"]
        );
        assert!(t[0].unmatched(&["web"]).is_empty());
    }

    #[test]
    fn pick_needs_a_name_when_several_targets_exist() {
        let c = config("targets:\n- {name: a}\n- {name: b, profile: prod}\n");
        let t = of(&c);
        assert_eq!(
            pick(&t, Some("b")).expect("b").profile.as_deref(),
            Some("prod")
        );
        let e = pick(&t, None).expect_err("two");
        assert!(e.contains("--target") && e.contains("a, b"), "{e}");
        let e = pick(&t, Some("c")).expect_err("none");
        assert!(e.contains("no such target"), "{e}");
        let one = of(&config("profile: x\n"));
        assert_eq!(pick(&one, None).expect("one").name, DEFAULT);
        let c3 = config(
            "targets:\n- {name: a, stacks: [web]}\n- {name: b, stacks: [web, db]}\n- {name: c}\n",
        );
        let t3 = of(&c3);
        assert_eq!(job_target(&t3, "web", None).expect("web").name, "a");
        assert_eq!(job_target(&t3, "db", None).expect("db").name, "b");
        assert_eq!(job_target(&t3, "other", None).expect("other").name, "c");
        assert_eq!(job_target(&t3, "web", Some("c")).expect("named").name, "c");
        let e = job_target(&t3, "web", Some("x")).expect_err("unknown");
        assert!(
            e.contains("spec.target \"x\"") && e.contains("a, b, c"),
            "{e}"
        );
        let t2 = of(&config("targets:\n- {name: a, stacks: [web]}\n"));
        assert!(job_target(&t2, "db", None).is_err());
        let narrowed = narrow(&c, &t[1]);
        assert!(narrowed.targets.is_empty());
        assert_eq!(narrowed.profile.as_deref(), Some("prod"));
    }
}

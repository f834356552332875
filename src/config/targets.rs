//! `targets:` as written and its checks (what `crate::targets` then does with it is pure logic
//! over a checked configuration).

use serde::Deserialize;

use super::{ClusterConfig, HostConfig};

/// Longest stack pattern of a target.
const MAX_PATTERN_LEN: usize = 253;

/// One entry of `targets:`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetConfig {
    /// A DNS label, unique among the targets: it names the target in status, metrics, jobs and
    /// the `--target` flag.
    pub name: String,
    /// The target's cluster (kubeconfig and context; unset: as for the shorthand).
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// The profile its stacks are rendered with.
    #[serde(default)]
    pub profile: Option<String>,
    /// Stack names or globs (`*`, `?`) it takes; absent: every stack.
    #[serde(default)]
    pub stacks: Option<Vec<String>>,
}

/// The checks of `targets:` (and of its clash with the shorthand); the message names the field.
pub fn check(config: &HostConfig) -> Result<(), String> {
    if config.targets.is_empty() {
        return Ok(());
    }
    if config.cluster.kubeconfig.is_some() || config.cluster.context.is_some() {
        return Err(
            "`cluster` and `targets` together: give each target its `cluster` (the top-level `cluster` + `profile` are the shorthand for one target)".to_owned(),
        );
    }
    if config.profile.is_some() {
        return Err(
            "`profile` and `targets` together: give each target its `profile` (the top-level `cluster` + `profile` are the shorthand for one target)".to_owned(),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, t) in config.targets.iter().enumerate() {
        if !crate::stack::load::is_dns_label(&t.name) {
            return Err(format!(
                "targets[{i}].name {:?} must be a DNS label (lowercase letters, digits, '-')",
                t.name
            ));
        }
        if !seen.insert(t.name.as_str()) {
            return Err(format!(
                "targets[{i}].name {:?}: two targets have this name",
                t.name
            ));
        }
        // Two targets on one cluster would write (and prune) each other's stacks there under
        // one Lease holder.
        if let Some(j) = config.targets[..i]
            .iter()
            .position(|o| o.cluster == t.cluster)
        {
            return Err(format!(
                "targets[{i}].cluster: the same kubeconfig and context as targets[{j}] ({}): a cluster is one target's",
                config.targets[j].name
            ));
        }
        for (j, p) in t.stacks.iter().flatten().enumerate() {
            let ok = !p.is_empty()
                && p.len() <= MAX_PATTERN_LEN
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-*?".contains(&b));
            if !ok {
                return Err(format!(
                    "targets[{i}].stacks[{j}] {p:?} must be a stack name or a glob of one (lowercase letters, digits, '-', '*', '?')"
                ));
            }
        }
        if t.stacks.as_ref().is_some_and(Vec::is_empty) {
            return Err(format!(
                "targets[{i}].stacks is empty: leave it out to take every stack"
            ));
        }
    }
    Ok(())
}

//! How a reconcile runs (`Options`), and the identity of the source a run reads.

use std::path::Path;

use crate::cluster::apply;
use crate::cluster::inventory;
use crate::config::SourceConfig;

/// How a reconcile runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Plan only (`diff`, `sync --dry-run`): no write of any kind.
    pub dry_run: bool,
    /// `--prune`: prune even stacks that set `prune: false`.
    pub force_prune: bool,
    /// `--allow-mass-prune`.
    pub allow_mass_prune: bool,
    /// Share of a stack's inventory a prune may remove without `--allow-mass-prune`.
    pub max_prune_share: f64,
    /// Wait for health after applying.
    pub wait: bool,
    /// Only these stacks (empty: all). Orphaned inventories are handled only when empty.
    pub only: Vec<String>,
    /// This driftless instance's name: it owns the inventories it writes, and treats only its
    /// own inventories of stacks that left the revision as orphans.
    pub instance: String,
    /// Stacks that are planned (their drift reported) but not applied: `selfHeal: false` stacks
    /// whose revision did not change.
    pub plan_only: Vec<String>,
    /// Key for hashing Secrets into the inventory (see `SecretHashKey`).
    pub secret_hash_key: Option<apply::SecretHashKey>,
    /// The revision's policies: a Deny finding blocks its stack (nothing of it is applied).
    pub policies: Option<std::sync::Arc<crate::policy::PolicySet>>,
    /// The revision's declared health checks (`health/`), used in the health wait.
    pub health_checks: Option<std::sync::Arc<crate::health_checks::HealthChecks>>,
    /// Trust the inventory for objects whose desired state did not change since driftless
    /// applied them: no read, dry-run, policy check or health wait for those. Only for the
    /// daemon, while its drift watches run and have seen nothing since the last full reconcile
    /// and the policies are the same (see `daemon`); a full reconcile checks everything.
    pub incremental: bool,
    /// The source this run read (see `source_id`): recorded in every inventory it writes. A
    /// stack recorded from another source is never removed by this run.
    pub source: Option<String>,
    /// Remove the stacks that left the revision: `--prune-removed-stacks`, or the daemon with a
    /// revision fetched from its configured source. Otherwise they are reported and kept.
    pub prune_removed_stacks: bool,
    /// Protected kinds (`plan::recreate::PROTECTED`) that `driftless.dev/recreate` may delete
    /// and create again: the host configuration's `prune.allowRecreate`.
    pub allow_recreate: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dry_run: true,
            force_prune: false,
            allow_mass_prune: false,
            max_prune_share: 0.5,
            wait: true,
            only: Vec::new(),
            instance: inventory::DEFAULT_INSTANCE.to_owned(),
            plan_only: Vec::new(),
            secret_hash_key: None,
            policies: None,
            health_checks: None,
            incremental: false,
            source: None,
            prune_removed_stacks: false,
            allow_recreate: Vec::new(),
        }
    }
}

impl Options {
    /// The owner of `stack` in this run: the stack of this instance.
    pub(super) fn owner<'a>(&'a self, stack: &'a str) -> crate::plan::Owner<'a> {
        crate::plan::Owner {
            stack,
            instance: &self.instance,
        }
    }
}

/// The identity of a source as inventories record it: `--path` (else the configured path) as a
/// canonical path, or the configured Git URL without any credentials in it. `None` when there is
/// no source.
pub fn source_id(path: Option<&Path>, config: Option<&SourceConfig>) -> Option<String> {
    let local = |p: &Path| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_owned())
            .display()
            .to_string()
    };
    match (path, config) {
        (Some(p), _) => Some(local(p)),
        (None, Some(c)) => match (&c.path, &c.git) {
            (Some(p), _) => Some(local(p)),
            (None, Some(git)) => Some(without_credentials(&git.url)),
            (None, None) => None,
        },
        (None, None) => None,
    }
}

/// A URL without its userinfo (`https://user:token@host/x` → `https://host/x`): the record is
/// readable by anyone who can read `driftless-system`.
fn without_credentials(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_sources_are_recorded_without_credentials() {
        let cases = [
            (
                "https://git.example/ops/stacks.git",
                "https://git.example/ops/stacks.git",
            ),
            (
                "https://ci:s3cret@git.example/ops/stacks.git",
                "https://git.example/ops/stacks.git",
            ),
            (
                "ssh://git@git.example:2222/ops/stacks.git",
                "ssh://git.example:2222/ops/stacks.git",
            ),
            (
                "git@git.example:ops/stacks.git",
                "git@git.example:ops/stacks.git",
            ),
            ("file:///srv/git/stacks.git", "file:///srv/git/stacks.git"),
            (
                "https://git.example/a@b/stacks.git",
                "https://git.example/a@b/stacks.git",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(without_credentials(url), want, "{url}");
        }
    }

    #[test]
    fn a_path_is_recorded_canonical() {
        let dir = std::env::temp_dir();
        let dotted = dir.join(".");
        let got = source_id(Some(&dotted), None).unwrap_or_default();
        let want = std::fs::canonicalize(&dir).unwrap().display().to_string();
        assert_eq!(got, want);
        assert_eq!(source_id(None, None), None);
    }
}

//! `driftless doctor`: checks an ops host's setup before the service starts, each with a one-line
//! verdict and what to do — the configuration, its credential files, the Git source, the
//! cluster and what the identity may do there, the renderers, the state directory and the
//! endpoint's address. Exit 0 when all is well, 1 with warnings, 2 with errors.
//!
//! The verdicts and what a revision needs of the cluster are decided here without I/O
//! (`required_access`, `credential_verdict`, `Report`); `probe` gathers the facts.

pub mod probe;

use std::collections::BTreeSet;

use serde::Serialize;

use crate::cluster::access::Access;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Error,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok   ",
            Verdict::Warn => "warn ",
            Verdict::Error => "error",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked (`configuration`, `credential git-token`, `cluster`, …).
    pub check: String,
    pub verdict: Verdict,
    /// What was found.
    pub message: String,
    /// What to do about it (empty when nothing is to be done).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

impl Check {
    pub fn ok(check: impl Into<String>, message: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            verdict: Verdict::Ok,
            message: message.into(),
            hint: String::new(),
        }
    }

    pub fn warn(
        check: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            check: check.into(),
            verdict: Verdict::Warn,
            message: message.into(),
            hint: hint.into(),
        }
    }

    pub fn error(
        check: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            check: check.into(),
            verdict: Verdict::Error,
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// Every check of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// The worst verdict (`Ok` for no checks).
    pub fn worst(&self) -> Verdict {
        self.checks
            .iter()
            .map(|c| c.verdict)
            .max()
            .unwrap_or(Verdict::Ok)
    }

    /// 0 all good, 1 warnings, 2 errors.
    pub fn exit_code(&self) -> u8 {
        match self.worst() {
            Verdict::Ok => 0,
            Verdict::Warn => 1,
            Verdict::Error => 2,
        }
    }

    /// One line per check (and its hint, indented), then a summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{} {}: {}\n",
                c.verdict.label(),
                c.check,
                c.message
            ));
            if !c.hint.is_empty() {
                out.push_str(&format!("      -> {}\n", c.hint));
            }
        }
        let count = |v: Verdict| self.checks.iter().filter(|c| c.verdict == v).count();
        out.push_str(&format!(
            "\n{} checks: {} ok, {} warnings, {} errors\n",
            self.checks.len(),
            count(Verdict::Ok),
            count(Verdict::Warn),
            count(Verdict::Error)
        ));
        out
    }
}

/// What is known of a credential file, for `credential_verdict`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileFacts {
    Missing,
    NotRegular,
    Unreadable(String),
    /// A regular file with these permission bits.
    Regular {
        mode: u32,
    },
}

/// The verdict on one credential file the host configuration names: it must exist, be a plain
/// file, and not be readable by everyone.
pub fn credential_verdict(field: &str, file: &str, facts: &FileFacts) -> Check {
    let check = format!("credential {file}");
    match facts {
        FileFacts::Missing => Check::error(
            check,
            format!("{field} names it, and it does not exist in the credentials directory"),
            "create it (mode 0640, owner root, group driftless), or add LoadCredential= for it to the unit",
        ),
        FileFacts::NotRegular => Check::error(
            check,
            format!("{field} names it, and it is not a regular file"),
            "replace it with a plain file holding the secret",
        ),
        FileFacts::Unreadable(e) => Check::error(
            check,
            format!("{field} names it, and it cannot be read: {e}"),
            "make it readable by the user driftless runs as",
        ),
        FileFacts::Regular { mode } if mode & 0o004 != 0 => Check::warn(
            check,
            format!(
                "{field}: readable by every user of the host (mode {:04o})",
                mode & 0o7777
            ),
            "chmod o-rwx on it (e.g. chmod 0640)",
        ),
        FileFacts::Regular { mode } => Check::ok(
            check,
            format!("{field}: a plain file, mode {:04o}", mode & 0o7777),
        ),
    }
}

/// A kind of object the revision declares, as the cluster serves it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServedKind {
    pub group: String,
    /// Plural resource name (`deployments`).
    pub resource: String,
    pub namespaced: bool,
}

/// The verbs driftless uses on every object it manages: read (get, list, watch), apply (patch)
/// and prune or recreate (delete).
pub const OBJECT_VERBS: [&str; 5] = ["get", "list", "watch", "patch", "delete"];

/// The namespace of driftless's own records: inventories (ConfigMaps) and Leases.
pub const SYSTEM_NAMESPACE: &str = "driftless-system";

/// What the identity must be allowed for a revision: every verb of `OBJECT_VERBS` on every kind
/// it declares (namespaced kinds in each namespace they are declared in), and its own records in
/// `driftless-system`.
pub fn required_access(objects: &[(ServedKind, Option<String>)]) -> Vec<Access> {
    let mut wanted: BTreeSet<(String, String, String, Option<String>)> = BTreeSet::new();
    for (kind, namespace) in objects {
        let ns = if kind.namespaced {
            namespace.clone()
        } else {
            None
        };
        for verb in OBJECT_VERBS {
            wanted.insert((
                verb.to_owned(),
                kind.group.clone(),
                kind.resource.clone(),
                ns.clone(),
            ));
        }
    }
    for verb in ["get", "list", "create", "update", "patch", "delete"] {
        wanted.insert((
            verb.to_owned(),
            String::new(),
            "configmaps".to_owned(),
            Some(SYSTEM_NAMESPACE.to_owned()),
        ));
    }
    // Leases: listed and renewed every renewal, taken with create or a conditional update.
    for verb in ["get", "list", "create", "update"] {
        wanted.insert((
            verb.to_owned(),
            "coordination.k8s.io".to_owned(),
            "leases".to_owned(),
            Some(SYSTEM_NAMESPACE.to_owned()),
        ));
    }
    wanted
        .into_iter()
        .map(|(verb, group, resource, namespace)| Access {
            verb,
            group,
            resource,
            namespace,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_files_verdicts() {
        let cases = [
            (FileFacts::Missing, Verdict::Error, "does not exist"),
            (FileFacts::NotRegular, Verdict::Error, "not a regular file"),
            (
                FileFacts::Unreadable("permission denied".into()),
                Verdict::Error,
                "permission denied",
            ),
            (FileFacts::Regular { mode: 0o100644 }, Verdict::Warn, "0644"),
            (FileFacts::Regular { mode: 0o100640 }, Verdict::Ok, "0640"),
            (FileFacts::Regular { mode: 0o100600 }, Verdict::Ok, "0600"),
        ];
        for (facts, want, text) in cases {
            let c = credential_verdict("source.git.auth.tokenFile", "git-token", &facts);
            assert_eq!(c.verdict, want, "{facts:?}");
            assert!(c.message.contains(text), "{facts:?}: {}", c.message);
            assert!(c.message.contains("source.git.auth.tokenFile"));
            assert_eq!(c.verdict == Verdict::Ok, c.hint.is_empty());
        }
    }

    #[test]
    fn access_needed_by_a_revision() {
        let deploy = ServedKind {
            group: "apps".into(),
            resource: "deployments".into(),
            namespaced: true,
        };
        let crd = ServedKind {
            group: "apiextensions.k8s.io".into(),
            resource: "customresourcedefinitions".into(),
            namespaced: false,
        };
        let need = required_access(&[
            (deploy.clone(), Some("a".into())),
            (deploy.clone(), Some("a".into())),
            (deploy, Some("b".into())),
            (crd, Some("ignored".into())),
        ]);
        let has = |verb: &str, resource: &str, ns: Option<&str>| {
            need.iter()
                .any(|a| a.verb == verb && a.resource == resource && a.namespace.as_deref() == ns)
        };
        for verb in OBJECT_VERBS {
            assert!(has(verb, "deployments", Some("a")), "{verb} a");
            assert!(has(verb, "deployments", Some("b")), "{verb} b");
            assert!(has(verb, "customresourcedefinitions", None), "{verb} crd");
        }
        assert!(!has("get", "customresourcedefinitions", Some("ignored")));
        assert!(has("update", "configmaps", Some(SYSTEM_NAMESPACE)));
        assert!(has("create", "leases", Some(SYSTEM_NAMESPACE)));
        assert!(has("list", "leases", Some(SYSTEM_NAMESPACE)));
        // Duplicates collapse: 5 verbs x 3 places + 6 configmap verbs + 4 lease verbs.
        assert_eq!(need.len(), 15 + 6 + 4);
    }

    #[test]
    fn exit_codes_follow_the_worst_verdict() {
        let mut r = Report::default();
        assert_eq!(r.exit_code(), 0);
        r.checks.push(Check::ok("a", "fine"));
        assert_eq!(r.exit_code(), 0);
        r.checks.push(Check::warn("b", "meh", "do x"));
        assert_eq!(r.exit_code(), 1);
        r.checks.push(Check::error("c", "bad", "do y"));
        assert_eq!(r.exit_code(), 2);
        let text = r.text();
        assert!(text.contains("error c: bad\n      -> do y"), "{text}");
        assert!(
            text.contains("3 checks: 1 ok, 1 warnings, 1 errors"),
            "{text}"
        );
    }
}

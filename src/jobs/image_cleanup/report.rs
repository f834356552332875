//! The report of one ImageCleanup run: per repository every digest's decision with its reasons
//! and facts, what each rule kept, warnings about rules that keep nothing, what enforcement did,
//! totals and figures; as text for people and JSON for machines.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::accessory::Subject;
use super::retention::{KeepReason, RetentionDecision, Rule, RuleOutcome, RuleWarning};
use super::spec::Mode;

/// What happened to one digest or tag when the plan was carried out.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    pub digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// `deleted`, `untagged`, `skipped`, `failed`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One repository's part of the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepoReport {
    pub repository: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub tags: usize,
    pub decisions: Vec<RetentionDecision>,
    /// What each rule covering the repository kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleOutcome>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<RuleWarning>,
    /// Per digest: age used for the rules (`null`: unknown), size, children, subjects.
    pub images: BTreeMap<String, ImageFacts>,
    /// Tag → digest as planned.
    #[serde(skip)]
    pub tag_map: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
}

/// Facts of one digest for the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageFacts {
    pub created: Option<DateTime<Utc>>,
    pub bytes: u64,
    /// An index's children.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<String>,
    /// For an accessory: the digests it refers to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
}

impl RepoReport {
    /// A repository whose scan failed: nothing decided, nothing deleted.
    pub fn failed(repository: String, error: String) -> RepoReport {
        RepoReport {
            repository,
            error: Some(error),
            tags: 0,
            decisions: Vec::new(),
            rules: Vec::new(),
            warnings: Vec::new(),
            images: BTreeMap::new(),
            tag_map: BTreeMap::new(),
            actions: Vec::new(),
        }
    }
}

/// What one rule kept over the whole registry.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleTotal {
    pub rule: usize,
    /// The rule as written: `ducklake/**: keepLast 10, keepTags '…'`.
    pub description: String,
    /// Repositories it covers.
    pub repositories: u64,
    /// Digests it keeps itself (children and accessories of those not counted).
    pub kept: u64,
}

/// Per rule of the spec, what it kept in `repositories`.
pub fn rule_totals(rules: &[Rule], repositories: &[RepoReport]) -> Vec<RuleTotal> {
    rules
        .iter()
        .enumerate()
        .map(|(n, rule)| {
            let outcomes = repositories
                .iter()
                .flat_map(|r| r.rules.iter())
                .filter(|o| o.rule == n);
            let (covered, kept) = outcomes.fold((0, 0), |(c, k), o| (c + 1, k + o.kept as u64));
            RuleTotal {
                rule: n,
                description: describe_rule(rule),
                repositories: covered,
                kept,
            }
        })
        .collect()
}

fn describe_rule(rule: &Rule) -> String {
    let mut keeps = Vec::new();
    if let Some(n) = rule.keep_last {
        keeps.push(format!("keepLast {n}"));
    }
    if let Some(p) = &rule.keep_tags {
        keeps.push(format!("keepTags '{}'", p.as_str()));
    }
    if let Some(d) = rule.keep_younger_than {
        let s = d.as_secs();
        keeps.push(match s {
            _ if s % 86_400 == 0 => format!("keepYoungerThan {}d", s / 86_400),
            _ if s % 3_600 == 0 => format!("keepYoungerThan {}h", s / 3_600),
            _ => format!("keepYoungerThan {s}s"),
        });
    }
    format!("{}: {}", rule.repositories, keeps.join(", "))
}

/// Totals of a run.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub repositories: u64,
    pub tags: u64,
    pub digests: u64,
    /// Digests the plan deletes, and tags it removes from kept digests.
    pub to_delete: u64,
    pub to_untag: u64,
    pub kept: u64,
    pub deleted: u64,
    pub untagged: u64,
    /// Deletes skipped because a tag moved or appeared since planning.
    pub skipped: u64,
    pub failed_repositories: u64,
    /// Blob bytes only deleted images referenced (freed by the registry's garbage collection).
    pub bytes_reclaimable: u64,
    pub requests: u64,
    /// Tags the registry confirmed still resolve to the digest of the last run (`304 Not
    /// Modified`): their manifests were not read again.
    pub tags_unchanged: u64,
}

/// The whole report of one run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub job: String,
    pub registry: String,
    pub mode: Mode,
    /// Whether this run deleted (enforce mode and not `--dry-run`).
    pub deletes: bool,
    /// Warnings fail the run (`driftless jobs run NAME --dry-run --strict`).
    pub strict: bool,
    pub totals: Totals,
    /// Per rule of the spec, what it kept.
    pub rules: Vec<RuleTotal>,
    /// Rules that keep nothing in a repository that loses digests (every repository's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<RuleWarning>,
    pub repositories: Vec<RepoReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub garbage_collect: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Report {
    /// Whether the run succeeded as a whole (with `strict`, warnings fail it too).
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
            && self.totals.failed_repositories == 0
            && (!self.strict || self.warnings.is_empty())
    }

    /// Figures for the run record and metrics.
    pub fn figures(&self) -> BTreeMap<String, u64> {
        let t = &self.totals;
        [
            ("repositories", t.repositories),
            ("tags", t.tags),
            ("digests", t.digests),
            ("toDelete", t.to_delete),
            ("toUntag", t.to_untag),
            ("kept", t.kept),
            ("deleted", t.deleted),
            ("untagged", t.untagged),
            ("skipped", t.skipped),
            ("failedRepositories", t.failed_repositories),
            ("bytesReclaimable", t.bytes_reclaimable),
            ("requests", t.requests),
            ("tagsUnchanged", t.tags_unchanged),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(
            self.rules
                .iter()
                .map(|r| (format!("keptByRule{}", r.rule), r.kept)),
        )
        .chain([("warnings".to_owned(), self.warnings.len() as u64)])
        .collect()
    }

    /// One line for logs and the run record.
    pub fn summary(&self) -> String {
        let t = &self.totals;
        let mut s = format!(
            "{} repositories, {} tags, {} digests: ",
            t.repositories, t.tags, t.digests
        );
        if self.deletes {
            s.push_str(&format!(
                "deleted {} digests, removed {} tags, skipped {}, kept {}",
                t.deleted, t.untagged, t.skipped, t.kept
            ));
        } else {
            s.push_str(&format!(
                "would delete {} digests and remove {} tags, keep {} (dry run)",
                t.to_delete, t.to_untag, t.kept
            ));
        }
        s.push_str(&format!(
            "; {} reclaimable",
            human_bytes(t.bytes_reclaimable)
        ));
        if t.failed_repositories > 0 {
            s.push_str(&format!("; {} repositories failed", t.failed_repositories));
        }
        if !self.warnings.is_empty() {
            s.push_str(&format!("; {}", self.warnings_line()));
        }
        s
    }

    /// The warnings in one line: per rule, the repositories where its keepTags matches nothing.
    fn warnings_line(&self) -> String {
        let mut by_rule: BTreeMap<usize, (&str, Vec<&str>)> = BTreeMap::new();
        for w in &self.warnings {
            by_rule
                .entry(w.rule)
                .or_insert((w.keep_tags.as_str(), Vec::new()))
                .1
                .push(w.repository.as_str());
        }
        let parts: Vec<String> = by_rule
            .iter()
            .map(|(rule, (pattern, repos))| {
                let shown: Vec<&str> = repos.iter().take(3).copied().collect();
                let more = repos.len().saturating_sub(shown.len());
                format!(
                    "rule {rule} keepTags '{pattern}' keeps nothing in {}{}",
                    shown.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        format!(
            "warning{}: {}{}",
            if self.warnings.len() == 1 { "" } else { "s" },
            parts.join("; "),
            if self.strict {
                " (--strict: the run fails)"
            } else {
                ""
            }
        )
    }

    /// The human report.
    pub fn text(&self) -> String {
        let mut out = format!(
            "ImageCleanup {} on {} ({})\n{}\n",
            self.job,
            self.registry,
            match (self.mode, self.deletes) {
                (_, true) => "enforce",
                (Mode::Enforce, false) => "dry run requested; mode is enforce",
                (Mode::DryRun, false) => "dry run; set spec.mode: enforce to delete",
            },
            self.summary()
        );
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {}\n", w.message()));
        }
        for r in &self.rules {
            out.push_str(&format!(
                "rule {} ({}): kept {} digests in {} repositories\n",
                r.rule, r.description, r.kept, r.repositories
            ));
        }
        for r in &self.repositories {
            out.push_str(&format!("\n{}\n", r.repository));
            if let Some(e) = &r.error {
                out.push_str(&format!("  error: {e}\n"));
                continue;
            }
            for d in &r.decisions {
                let facts = r.images.get(d.digest());
                let when = facts
                    .and_then(|f| f.created)
                    .map(|c| c.format("%Y-%m-%d").to_string())
                    .unwrap_or_else(|| "age unknown".to_owned());
                let size = human_bytes(facts.map_or(0, |f| f.bytes));
                match d {
                    RetentionDecision::Delete { digest, tags } => {
                        // An accessory says whose it is.
                        let of = facts
                            .and_then(|f| f.subjects.first())
                            .map(|s| {
                                let fate = if r.images.contains_key(&s.digest) {
                                    "deleted with it"
                                } else {
                                    "gone"
                                };
                                format!(": {} of {} ({fate})", s.kind.noun(), short(&s.digest))
                            })
                            .unwrap_or_default();
                        out.push_str(&format!(
                            "  delete {}  {}  {when}  {size}{of}\n",
                            short(digest),
                            tag_list(tags)
                        ))
                    }
                    RetentionDecision::Keep {
                        digest,
                        tags,
                        reasons,
                        untag,
                    } => {
                        out.push_str(&format!(
                            "  keep   {}  {}  {when}  {size}: {}\n",
                            short(digest),
                            tag_list(tags),
                            reasons
                                .iter()
                                .map(reason_text)
                                .collect::<Vec<_>>()
                                .join("; ")
                        ));
                        if !untag.is_empty() {
                            out.push_str(&format!(
                                "  untag  {}  {} (no rule keeps these tags)\n",
                                short(digest),
                                untag.join(", ")
                            ));
                        }
                    }
                }
            }
            for a in &r.actions {
                out.push_str(&format!(
                    "  {:<8} {}{}{}\n",
                    a.result,
                    short(&a.digest),
                    a.tag
                        .as_deref()
                        .map(|t| format!(" tag {t}"))
                        .unwrap_or_default(),
                    a.detail
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                ));
            }
        }
        if let Some(gc) = &self.garbage_collect {
            out.push_str(&format!("\ngarbage collection: {gc}\n"));
        }
        out
    }
}

pub(super) fn short(digest: &str) -> &str {
    let end = "sha256:".len() + 12;
    digest.get(..end).unwrap_or(digest)
}

fn tag_list(tags: &[String]) -> String {
    if tags.is_empty() {
        "(untagged)".to_owned()
    } else {
        tags.join(", ")
    }
}

fn reason_text(r: &KeepReason) -> String {
    match r {
        KeepReason::NoRuleMatches => "no rule matches the repository".into(),
        KeepReason::KeepLast { tag, n, rule } => {
            format!("among the {n} newest ({tag}; rule {rule})")
        }
        KeepReason::TagPattern { tag, rule } => format!("tag {tag} matches keepTags (rule {rule})"),
        KeepReason::Young { tag, rule } => {
            format!("younger than keepYoungerThan ({tag}; rule {rule})")
        }
        KeepReason::InUse { by } => format!("in use by {}", by.join(", ")),
        KeepReason::ChildOfKeptIndex { index } => format!("child of kept index {}", short(index)),
        KeepReason::UntaggedKept => "untagged, and the rules keep untagged images".into(),
        KeepReason::Accessory { kind, subject } => {
            format!("{} of kept {}", kind.noun(), short(subject))
        }
        KeepReason::OrphanedAccessoryKept { kind, subject } => format!(
            "{} of {}, which is gone; the rules keep untagged images",
            kind.noun(),
            short(subject)
        ),
    }
}

pub use crate::jobs::common::human_bytes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}

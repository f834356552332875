//! The report of one ImageCleanup run: per repository every digest's decision with its reasons
//! and facts, what enforcement did, totals and figures; as text for people and JSON for machines.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::retention::{KeepReason, RetentionDecision};
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
    /// Per digest: age used for the rules (`null`: unknown) and size.
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
    pub totals: Totals,
    pub repositories: Vec<RepoReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub garbage_collect: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Report {
    /// Whether the run succeeded as a whole.
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.totals.failed_repositories == 0
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
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
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
        s
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
                    RetentionDecision::Delete { digest, tags } => out.push_str(&format!(
                        "  delete {}  {}  {when}  {size}\n",
                        short(digest),
                        tag_list(tags)
                    )),
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
        KeepReason::KeepLast { tag, n } => format!("among the {n} newest ({tag})"),
        KeepReason::TagPattern { tag } => format!("tag {tag} matches keepTags"),
        KeepReason::Young { tag } => format!("younger than keepYoungerThan ({tag})"),
        KeepReason::InUse { by } => format!("in use by {}", by.join(", ")),
        KeepReason::ChildOfKeptIndex { index } => format!("child of kept index {}", short(index)),
        KeepReason::UntaggedKept => "untagged, and the rules keep untagged images".into(),
    }
}

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

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

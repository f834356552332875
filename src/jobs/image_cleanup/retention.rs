//! ImageCleanup retention decisions (pure): from one repository's images, the rules and what is in
//! use, which digests to delete and why every other one is kept.
//!
//! Combination semantics (as in Harbor): each rule whose repository pattern matches keeps some
//! *tags*; a digest is kept when any rule keeps any of its tags, because deleting a digest removes
//! every tag on it. On top of the rules, protection always wins: a digest in use (live workloads
//! or the desired state in Git) is kept, and so is every child of a kept index. A repository no
//! rule matches is left alone. Images whose age is unknown count as young (never deleted for age).
//!
//! Accessories (signatures, attestations, SBOMs, OCI 1.1 referrers: see `accessory`) follow their
//! subject: kept when it is kept, deleted with it, whatever the rules say about their own
//! accessory tags (which the rules do not see: a signature never takes a `keepLast` place). An
//! accessory whose subject is not in the repository follows the `untagged` setting. Links only
//! ever add reasons to keep: a digest kept by the rules for an ordinary tag, in use, or a child
//! of a kept index stays, whatever accessory tags it carries.
//!
//! Tags: a digest kept only because `keepTags` matches some of its tags has its other ordinary
//! tags listed as `untag` — removable one by one where the registry supports tag deletion,
//! without touching the digest. Every other reason keeps the digest with all its tags.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::accessory::{self, AccessoryKind, Subject};

/// What to do with digests that carry no tag and are no child of a kept index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Untagged {
    /// Keep them (default: they may be pulled by digest).
    #[default]
    Keep,
    Delete,
}

/// One retention rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Repository glob: `*` matches within a path segment, `**` across segments.
    pub repositories: String,
    /// Keep the tags of the N newest images.
    pub keep_last: Option<usize>,
    /// Keep tags matching this regex (anchored at both ends).
    pub keep_tags: Option<regex::Regex>,
    /// Keep tags of images younger than this.
    pub keep_younger_than: Option<Duration>,
    pub untagged: Untagged,
}

/// One digest of a repository as the registry lists it.
#[derive(Debug, Clone)]
pub struct Image {
    pub digest: String,
    pub tags: Vec<String>,
    /// From the config blob, or when driftless first saw the digest; `None` if unknown.
    pub created: Option<DateTime<Utc>>,
    /// For an index: the digests of its children.
    pub children: Vec<String>,
    /// The digests this one is an accessory of (from its tags and its content).
    pub subjects: Vec<Subject>,
}

impl Image {
    /// The tags the rules see: all but accessory tags (`sha256-<hex>.sig`, …).
    fn ordinary_tags(&self) -> impl Iterator<Item = &String> {
        self.tags
            .iter()
            .filter(|t| accessory::tag_subject(t).is_none())
    }
}

/// Why a digest is kept. `rule` is the index of the rule in `spec.rules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum KeepReason {
    NoRuleMatches,
    KeepLast {
        tag: String,
        n: usize,
        rule: usize,
    },
    TagPattern {
        tag: String,
        rule: usize,
    },
    Young {
        tag: String,
        rule: usize,
    },
    InUse {
        by: Vec<String>,
    },
    ChildOfKeptIndex {
        index: String,
    },
    UntaggedKept,
    /// An accessory of a kept digest.
    Accessory {
        kind: AccessoryKind,
        subject: String,
    },
    /// An accessory whose subject is gone, kept because the rules keep untagged images.
    OrphanedAccessoryKept {
        kind: AccessoryKind,
        subject: String,
    },
}

/// The decision for one digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum RetentionDecision {
    Keep {
        digest: String,
        tags: Vec<String>,
        reasons: Vec<KeepReason>,
        /// Tags no rule keeps on a digest that stays (see the module notes).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        untag: Vec<String>,
    },
    Delete {
        digest: String,
        tags: Vec<String>,
    },
}

impl RetentionDecision {
    /// The digest decided on.
    pub fn digest(&self) -> &str {
        match self {
            RetentionDecision::Keep { digest, .. } | RetentionDecision::Delete { digest, .. } => {
                digest
            }
        }
    }
}

/// What one rule did in one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleOutcome {
    /// Index of the rule in `spec.rules`.
    pub rule: usize,
    /// Digests the rule itself keeps (not counting children and accessories of those).
    pub kept: usize,
    /// For a rule with `keepTags`: whether the pattern matches any tag of the repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_tags_matched: Option<bool>,
}

/// A `keepTags` pattern that matches no tag of a repository losing digests: most often a prefix
/// pattern (`^v\d`) forgetting that `keepTags` is anchored at both ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleWarning {
    pub rule: usize,
    pub repository: String,
    pub keep_tags: String,
    /// Digests the repository loses.
    pub loses: usize,
    /// What would match, when a tag matches the pattern unanchored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl RuleWarning {
    /// One line for the report, the summary and the log.
    pub fn message(&self) -> String {
        let mut m = format!(
            "rule {} keepTags '{}' matches no tag of {}, which loses {} digests",
            self.rule, self.keep_tags, self.repository, self.loses
        );
        if let Some(h) = &self.hint {
            m.push_str(&format!(" ({h})"));
        }
        m
    }
}

/// Every decision of one repository, and what each rule did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub decisions: Vec<RetentionDecision>,
    /// One per rule that covers the repository.
    pub rules: Vec<RuleOutcome>,
    pub warnings: Vec<RuleWarning>,
}

/// Whether `repository` matches `pattern` (`*` within a segment, `**` across segments).
pub fn glob_matches(pattern: &str, repository: &str) -> bool {
    fn go(p: &[&str], r: &[&str]) -> bool {
        match (p.first(), r.first()) {
            (None, None) => true,
            (Some(&"**"), _) => go(&p[1..], r) || (!r.is_empty() && go(p, &r[1..])),
            (Some(seg), Some(name)) => segment_matches(seg, name) && go(&p[1..], &r[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let r: Vec<&str> = repository.split('/').collect();
    go(&p, &r)
}

/// Whether any rule covering `repository` decides by image age (`keepLast` ranks by age,
/// `keepYoungerThan` compares it): only then are the build dates of its images needed. Without
/// such a rule no decision depends on age (`keepTags`, `untagged`, protection and links do not).
pub fn uses_age(rules: &[Rule], repository: &str) -> bool {
    rules.iter().any(|r| {
        (r.keep_last.is_some() || r.keep_younger_than.is_some())
            && glob_matches(&r.repositories, repository)
    })
}

fn segment_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, rest)) => {
            let Some(after) = name.strip_prefix(prefix) else {
                return false;
            };
            (0..=after.len())
                .any(|i| after.is_char_boundary(i) && segment_matches(rest, &after[i..]))
        }
    }
}

/// Decides every digest of `repository`. `in_use` maps digests referenced by live workloads or
/// the desired state to who references them.
pub fn decide(
    repository: &str,
    images: &[Image],
    rules: &[Rule],
    in_use: &BTreeMap<String, Vec<String>>,
    now: DateTime<Utc>,
) -> Decided {
    let applicable: Vec<(usize, &Rule)> = rules
        .iter()
        .enumerate()
        .filter(|(_, r)| glob_matches(&r.repositories, repository))
        .collect();
    let mut reasons: BTreeMap<&str, Vec<KeepReason>> = BTreeMap::new();
    if applicable.is_empty() {
        for i in images {
            reasons
                .entry(&i.digest)
                .or_default()
                .push(KeepReason::NoRuleMatches);
        }
    }
    let outcomes: Vec<RuleOutcome> = applicable
        .iter()
        .map(|(n, rule)| keep_by_rule(*n, rule, images, now, &mut reasons))
        .collect();
    let keep_untagged =
        !applicable.is_empty() && applicable.iter().all(|(_, r)| r.untagged == Untagged::Keep);
    let present: BTreeSet<&str> = images.iter().map(|i| i.digest.as_str()).collect();
    for i in images {
        if let Some(by) = in_use.get(&i.digest) {
            reasons
                .entry(&i.digest)
                .or_default()
                .push(KeepReason::InUse { by: by.clone() });
        }
        if !keep_untagged || i.ordinary_tags().next().is_some() {
            continue;
        }
        // No ordinary tag: an accessory follows its subject (below); one whose subject is gone,
        // and any other untagged digest, follows the `untagged` setting. (A link to itself is
        // no link.)
        let subjects: Vec<&Subject> = i.subjects.iter().filter(|s| s.digest != i.digest).collect();
        match subjects.first() {
            None => reasons
                .entry(&i.digest)
                .or_default()
                .push(KeepReason::UntaggedKept),
            Some(s) if !subjects.iter().any(|s| present.contains(s.digest.as_str())) => reasons
                .entry(&i.digest)
                .or_default()
                .push(KeepReason::OrphanedAccessoryKept {
                    kind: s.kind,
                    subject: s.digest.clone(),
                }),
            Some(_) => {}
        }
    }
    // Children of kept indexes and accessories of kept digests are kept, transitively (an
    // index of indexes, the signature of a platform image of a kept index, …).
    loop {
        let mut added = false;
        let kept: BTreeSet<&str> = reasons
            .iter()
            .filter(|(_, r)| !r.is_empty())
            .map(|(d, _)| *d)
            .collect();
        for i in images {
            let mut found = Vec::new();
            if kept.contains(i.digest.as_str()) {
                for child in &i.children {
                    found.push((
                        child.as_str(),
                        KeepReason::ChildOfKeptIndex {
                            index: i.digest.clone(),
                        },
                    ));
                }
            }
            for s in i
                .subjects
                .iter()
                .filter(|s| kept.contains(s.digest.as_str()))
            {
                found.push((
                    i.digest.as_str(),
                    KeepReason::Accessory {
                        kind: s.kind,
                        subject: s.digest.clone(),
                    },
                ));
            }
            for (digest, reason) in found {
                let entry = reasons.entry(digest).or_default();
                if !entry.contains(&reason) {
                    entry.push(reason);
                    added = true;
                }
            }
        }
        if !added {
            break;
        }
    }
    let decisions: Vec<RetentionDecision> = images
        .iter()
        .map(|i| match reasons.remove(i.digest.as_str()) {
            Some(r) if !r.is_empty() => RetentionDecision::Keep {
                digest: i.digest.clone(),
                tags: i.tags.clone(),
                untag: untag(i, &r),
                reasons: r,
            },
            _ => RetentionDecision::Delete {
                digest: i.digest.clone(),
                tags: i.tags.clone(),
            },
        })
        .collect();
    let warnings = warnings(repository, images, &applicable, &outcomes, &decisions);
    Decided {
        decisions,
        rules: outcomes,
        warnings,
    }
}

/// The ordinary tags of a kept digest that nothing keeps: only when every reason is a tag
/// pattern. Accessory tags stay with their subject's fate.
fn untag(image: &Image, reasons: &[KeepReason]) -> Vec<String> {
    let mut kept = BTreeSet::new();
    for r in reasons {
        match r {
            KeepReason::TagPattern { tag, .. } => {
                kept.insert(tag.as_str());
            }
            _ => return Vec::new(),
        }
    }
    image
        .ordinary_tags()
        .filter(|t| !kept.contains(t.as_str()))
        .cloned()
        .collect()
}

fn keep_by_rule<'a>(
    n_rule: usize,
    rule: &Rule,
    images: &'a [Image],
    now: DateTime<Utc>,
    reasons: &mut BTreeMap<&'a str, Vec<KeepReason>>,
) -> RuleOutcome {
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    let mut keep = |digest: &'a str, reason: KeepReason| {
        let entry = reasons.entry(digest).or_default();
        if !entry.contains(&reason) {
            entry.push(reason);
        }
        kept.insert(digest);
    };
    // The images the rules see: those with an ordinary tag, and that tag for the report.
    let tagged: Vec<(&Image, &String)> = images
        .iter()
        .filter_map(|i| i.ordinary_tags().next().map(|t| (i, t)))
        .collect();
    if let Some(n) = rule.keep_last {
        // Newest first; unknown ages first of all (treated as newest: never deleted for age).
        let mut newest = tagged.clone();
        newest.sort_by(|(a, _), (b, _)| match (a.created, b.created) {
            (None, None) => a.digest.cmp(&b.digest),
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => y.cmp(&x).then_with(|| a.digest.cmp(&b.digest)),
        });
        for (i, tag) in newest.into_iter().take(n) {
            let reason = KeepReason::KeepLast {
                tag: tag.clone(),
                n,
                rule: n_rule,
            };
            keep(&i.digest, reason);
        }
    }
    let mut keep_tags_matched = None;
    if let Some(pattern) = &rule.keep_tags {
        let mut matched = false;
        for i in images {
            for tag in i.ordinary_tags().filter(|t| full_match(pattern, t)) {
                matched = true;
                let reason = KeepReason::TagPattern {
                    tag: tag.clone(),
                    rule: n_rule,
                };
                keep(&i.digest, reason);
            }
        }
        keep_tags_matched = Some(matched);
    }
    if let Some(age) = rule.keep_younger_than {
        let cutoff = chrono::Duration::from_std(age)
            .ok()
            .and_then(|d| now.checked_sub_signed(d));
        for (i, tag) in &tagged {
            let young = match (i.created, cutoff) {
                (Some(c), Some(cut)) => c > cut,
                _ => true,
            };
            if young {
                let reason = KeepReason::Young {
                    tag: (*tag).clone(),
                    rule: n_rule,
                };
                keep(&i.digest, reason);
            }
        }
    }
    RuleOutcome {
        rule: n_rule,
        kept: kept.len(),
        keep_tags_matched,
    }
}

/// `keepTags` is anchored at both ends (as GitLab's cleanup policies).
fn full_match(pattern: &regex::Regex, tag: &str) -> bool {
    pattern
        .find(tag)
        .is_some_and(|m| m.start() == 0 && m.end() == tag.len())
}

/// A warning per `keepTags` rule that matches no tag of a repository that loses digests.
fn warnings(
    repository: &str,
    images: &[Image],
    applicable: &[(usize, &Rule)],
    outcomes: &[RuleOutcome],
    decisions: &[RetentionDecision],
) -> Vec<RuleWarning> {
    let loses = decisions
        .iter()
        .filter(|d| matches!(d, RetentionDecision::Delete { .. }))
        .count();
    if loses == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for ((_, rule), outcome) in applicable.iter().zip(outcomes) {
        let Some(pattern) = rule.keep_tags.as_ref() else {
            continue;
        };
        if outcome.keep_tags_matched != Some(false) {
            continue;
        }
        // A tag the pattern matches in part shows what was probably meant.
        let hint = images
            .iter()
            .flat_map(Image::ordinary_tags)
            .find_map(|t| pattern.find(t).map(|m| (t, m.start() == 0)))
            .map(|(tag, at_start)| {
                let suggestion = if at_start {
                    format!("'{}.*'", pattern.as_str())
                } else {
                    format!("'.*{}.*'", pattern.as_str())
                };
                format!(
                    "keepTags is anchored at both ends: it matches part of {tag}; {suggestion} would match it"
                )
            });
        out.push(RuleWarning {
            rule: outcome.rule,
            repository: repository.to_owned(),
            keep_tags: pattern.as_str().to_owned(),
            loses,
            hint,
        });
    }
    out
}

/// One planned delete in the order enforcement carries them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDelete {
    pub digest: String,
    pub tags: Vec<String>,
    /// Planned deletes that must be gone first: the indexes listing this digest and the
    /// subjects it is an accessory of. If one of them stays (skipped, failed), so does this.
    pub after: Vec<String>,
}

/// The deletes of `decisions`, holders first: an index before its children, a subject before its
/// accessories. `links` are `(holder, dependent)` pairs (index → child, subject → accessory). An
/// interrupted run never leaves an index without children or a kept image without its
/// signature; a cycle of links (only a hostile registry makes one) is broken in digest order.
pub fn deletion_order(
    decisions: &[RetentionDecision],
    links: &[(String, String)],
) -> Vec<PlannedDelete> {
    let deletes: BTreeMap<&str, &Vec<String>> = decisions
        .iter()
        .filter_map(|d| match d {
            RetentionDecision::Delete { digest, tags } => Some((digest.as_str(), tags)),
            RetentionDecision::Keep { .. } => None,
        })
        .collect();
    let mut after: BTreeMap<&str, BTreeSet<&str>> =
        deletes.keys().map(|d| (*d, BTreeSet::new())).collect();
    for (holder, dependent) in links {
        if holder != dependent
            && deletes.contains_key(holder.as_str())
            && let Some(a) = after.get_mut(dependent.as_str())
        {
            a.insert(holder.as_str());
        }
    }
    let mut pending = after.clone();
    let mut order = Vec::new();
    while !pending.is_empty() {
        let ready: Vec<&str> = pending
            .iter()
            .filter(|(_, a)| a.is_empty())
            .map(|(d, _)| *d)
            .collect();
        // A cycle: break it at the first digest.
        let ready = if ready.is_empty() {
            pending.keys().take(1).copied().collect()
        } else {
            ready
        };
        for d in ready {
            pending.remove(d);
            for a in pending.values_mut() {
                a.remove(d);
            }
            order.push(PlannedDelete {
                digest: d.to_owned(),
                tags: deletes.get(d).map(|t| (*t).clone()).unwrap_or_default(),
                after: after
                    .get(d)
                    .map(|a| a.iter().map(|h| (*h).to_owned()).collect())
                    .unwrap_or_default(),
            });
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(d: u32) -> Option<DateTime<Utc>> {
        Some(Utc.with_ymd_and_hms(2026, 11, d, 0, 0, 0).unwrap())
    }

    fn image(digest: &str, tags: &[&str], created: Option<DateTime<Utc>>) -> Image {
        Image {
            digest: digest.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            created,
            children: Vec::new(),
            subjects: Vec::new(),
        }
    }

    fn rule(
        keep_last: Option<usize>,
        keep_tags: Option<&str>,
        younger_days: Option<u64>,
        untagged: Untagged,
    ) -> Rule {
        Rule {
            repositories: "ducklake/**".into(),
            keep_last,
            keep_tags: keep_tags.map(|p| regex::Regex::new(p).unwrap()),
            keep_younger_than: younger_days.map(|d| Duration::from_secs(d * 86400)),
            untagged,
        }
    }

    fn used(digests: &[&str]) -> BTreeMap<String, Vec<String>> {
        digests
            .iter()
            .map(|d| {
                (
                    d.to_string(),
                    vec!["Deployment ducklake/backend".to_owned()],
                )
            })
            .collect()
    }

    fn deleted(decisions: &[RetentionDecision]) -> Vec<&str> {
        decisions
            .iter()
            .filter(|d| matches!(d, RetentionDecision::Delete { .. }))
            .map(RetentionDecision::digest)
            .collect()
    }

    #[test]
    fn globs() {
        for (p, r, want) in [
            ("ducklake/*", "ducklake/backend", true),
            ("ducklake/*", "ducklake/a/b", false),
            ("ducklake/**", "ducklake/a/b", true),
            ("**", "x", true),
            ("*/backend", "ducklake/backend", true),
            ("duck*/back*", "ducklake/backend", true),
            ("ducklake/backend", "ducklake/backend-old", false),
        ] {
            assert_eq!(glob_matches(p, r), want, "{p} vs {r}");
        }
    }

    /// Planning reads build dates only where `uses_age` says a rule needs them: every other
    /// rule decides exactly the same without them.
    #[test]
    fn only_keep_last_and_keep_younger_than_need_ages() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap();
        let mut index = image("idx", &["multi"], day(1));
        index.children = vec!["child-a".into()];
        let sig = Image {
            subjects: vec![Subject {
                digest: "d2".into(),
                kind: AccessoryKind::Signature,
            }],
            ..image("sig", &["sha256-d2.sig"], day(9))
        };
        let images = vec![
            image("d1", &["1.0.0"], day(1)),
            image("d2", &["dev-1", "1.0.1"], day(2)),
            image("d3", &["dev-2"], day(19)),
            image("d4", &[], day(20)),
            index,
            image("child-a", &[], day(1)),
            sig,
        ];
        let undated: Vec<Image> = images
            .iter()
            .cloned()
            .map(|i| Image { created: None, ..i })
            .collect();
        let in_use = used(&["d3"]);
        let pattern = Some(r"\d+\.\d+\.\d+");
        for (rules, uses) in [
            (vec![rule(None, pattern, None, Untagged::Keep)], false),
            (vec![rule(None, pattern, None, Untagged::Delete)], false),
            (vec![rule(Some(2), None, None, Untagged::Keep)], true),
            (vec![rule(None, None, Some(7), Untagged::Keep)], true),
            (vec![], false),
            (
                vec![
                    rule(None, pattern, None, Untagged::Keep),
                    Rule {
                        repositories: "other/**".into(),
                        ..rule(Some(1), None, None, Untagged::Keep)
                    },
                ],
                false,
            ),
        ] {
            assert_eq!(uses_age(&rules, "ducklake/backend"), uses, "{rules:?}");
            if !uses {
                assert_eq!(
                    decide("ducklake/backend", &images, &rules, &in_use, now),
                    decide("ducklake/backend", &undated, &rules, &in_use, now),
                    "{rules:?}"
                );
            }
        }
    }

    #[test]
    fn rules_combine_and_protection_wins() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap();
        let mut index = image("idx", &["multi"], day(1));
        index.children = vec!["child-a".into(), "child-b".into()];
        let images = vec![
            image("d1", &["1.0.0"], day(1)), // release tag: kept by pattern
            image("d2", &["dev-1"], day(2)), // old dev build: deleted
            image("d3", &["dev-2", "latest"], day(19)), // kept: last 2
            image("d4", &["dev-3"], day(20)), // kept: last 2 and young
            image("d5", &["dev-0"], day(3)), // old, but in use: kept
            image("d6", &["dev-x"], None),   // age unknown: counts as newest
            image("d7", &[], day(1)),        // untagged
            index,                           // old index: deleted unless protected
            image("child-a", &[], day(1)),
            image("child-b", &[], day(1)),
        ];
        let in_use = used(&["d5"]);
        let keep_untagged = [rule(
            Some(2),
            Some(r"\d+\.\d+\.\d+"),
            Some(7),
            Untagged::Keep,
        )];
        let d = decide("ducklake/backend", &images, &keep_untagged, &in_use, now).decisions;
        // keep_last 2 counts d6 (unknown = newest) and d4; d3 is kept as young (19th).
        assert_eq!(deleted(&d), ["d2", "idx"]);
        let reasons = |digest: &str| match d.iter().find(|x| x.digest() == digest).unwrap() {
            RetentionDecision::Keep { reasons, .. } => reasons.clone(),
            other => panic!("{digest}: {other:?}"),
        };
        assert!(reasons("d1").contains(&KeepReason::TagPattern {
            tag: "1.0.0".into(),
            rule: 0
        }));
        assert!(reasons("d5").contains(&KeepReason::InUse {
            by: vec!["Deployment ducklake/backend".into()]
        }));
        assert!(reasons("d7").contains(&KeepReason::UntaggedKept));

        // Untagged deletion: the index's children go with it only when nothing keeps it.
        let delete_untagged = [rule(
            Some(2),
            Some(r"\d+\.\d+\.\d+"),
            Some(7),
            Untagged::Delete,
        )];
        let d = decide("ducklake/backend", &images, &delete_untagged, &in_use, now).decisions;
        assert_eq!(deleted(&d), ["d2", "d7", "idx", "child-a", "child-b"]);
        // The index in use keeps its children.
        let in_use = used(&["d5", "idx"]);
        let d = decide("ducklake/backend", &images, &delete_untagged, &in_use, now).decisions;
        assert_eq!(deleted(&d), ["d2", "d7"]);
        match d.iter().find(|x| x.digest() == "child-a").unwrap() {
            RetentionDecision::Keep { reasons, .. } => assert_eq!(
                reasons,
                &[KeepReason::ChildOfKeptIndex {
                    index: "idx".into()
                }]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_digest_is_deleted_only_when_every_tag_on_it_is_deletable() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap();
        // "v1" expires, but "stable" on the same digest is kept by the pattern: the digest stays.
        let images = vec![
            image("d1", &["v1", "stable"], day(1)),
            image("d2", &["v2"], day(2)),
        ];
        let rules = [rule(Some(0), Some("stable"), None, Untagged::Keep)];
        let d = decide("ducklake/app", &images, &rules, &BTreeMap::new(), now).decisions;
        assert_eq!(deleted(&d), ["d2"]);
        // "v1" alone may go, as a tag, where the registry deletes tags.
        match &d[0] {
            RetentionDecision::Keep { untag, .. } => assert_eq!(untag, &["v1"]),
            other => panic!("{other:?}"),
        }
        // Kept for another reason too (young): every tag stays.
        let rules = [rule(Some(0), Some("stable"), Some(30), Untagged::Keep)];
        let d = decide("ducklake/app", &images, &rules, &BTreeMap::new(), now).decisions;
        assert!(
            d.iter()
                .all(|x| matches!(x, RetentionDecision::Keep { untag, .. } if untag.is_empty()))
        );
    }

    #[test]
    fn repositories_no_rule_matches_are_left_alone() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap();
        let images = vec![image("d1", &["old"], day(1)), image("d2", &[], None)];
        let rules = [rule(Some(0), None, None, Untagged::Delete)];
        let d = decide("other/app", &images, &rules, &BTreeMap::new(), now).decisions;
        assert!(deleted(&d).is_empty());
        assert!(d.iter().all(|x| matches!(x, RetentionDecision::Keep { reasons, .. } if reasons == &[KeepReason::NoRuleMatches])));
    }

    /// A digest `sha256:<64 hex>` from a short name, so that tags can name it.
    fn dg(name: &str) -> String {
        let hex: String = name
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(32)
            .map(|b| format!("{:02x}", b))
            .collect();
        format!("sha256:{hex}")
    }

    fn sig_tag(of: &str, suffix: &str) -> String {
        format!("{}{suffix}", of.replace(':', "-"))
    }

    fn img(name: &str, tags: &[&str], created: Option<DateTime<Utc>>) -> Image {
        image(&dg(name), tags, created)
    }

    fn keep_reasons(d: &Decided, name: &str) -> Vec<KeepReason> {
        match d.decisions.iter().find(|x| x.digest() == dg(name)).unwrap() {
            RetentionDecision::Keep { reasons, .. } => reasons.clone(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn deleted_names(d: &Decided, names: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = names
            .iter()
            .filter(|n| {
                d.decisions
                    .iter()
                    .any(|x| x.digest() == dg(n) && matches!(x, RetentionDecision::Delete { .. }))
            })
            .map(|n| n.to_string())
            .collect();
        out.sort();
        out
    }

    /// The issue's scenario: a release index (keepTags), its two children (one also tagged
    /// tmp-1), five builds (one in use), a cosign signature of the index and one of an old build.
    fn scenario(keep_tags: &str) -> (Vec<Image>, Vec<Rule>, BTreeMap<String, Vec<String>>) {
        let mut index = img("idx", &["v1.0.0"], day(3));
        index.children = vec![dg("amd64"), dg("arm64")];
        let mut images = vec![
            index,
            img("amd64", &["tmp-1"], day(3)),
            img("arm64", &[], day(3)),
            img("b1", &["build-1"], day(10)),
            img("b2", &["build-2"], day(11)),
            img("b3", &["build-3"], day(12)),
            img("b4", &["build-4"], day(13)),
            img("b5", &["build-5"], day(14)),
            // cosign signatures: no build date (age unknown, so "newest" if the rules saw them).
            img("sig-idx", &[&sig_tag(&dg("idx"), ".sig")], None),
            img("sig-b1", &[&sig_tag(&dg("b1"), ".sig")], None),
        ];
        images[8].subjects = vec![Subject {
            digest: dg("idx"),
            kind: AccessoryKind::Signature,
        }];
        images[9].subjects = vec![Subject {
            digest: dg("b1"),
            kind: AccessoryKind::Signature,
        }];
        let rules = vec![Rule {
            repositories: "app/*".into(),
            keep_last: Some(2),
            keep_tags: Some(regex::Regex::new(keep_tags).unwrap()),
            keep_younger_than: None,
            untagged: Untagged::Delete,
        }];
        let in_use = [(dg("b2"), vec!["Deployment ns/web".to_owned()])].into();
        (images, rules, in_use)
    }

    const ALL: [&str; 10] = [
        "idx", "amd64", "arm64", "b1", "b2", "b3", "b4", "b5", "sig-idx", "sig-b1",
    ];

    #[test]
    fn signatures_follow_their_subject() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap();
        let (images, rules, in_use) = scenario(r"v\d.*");
        let d = decide("app/web", &images, &rules, &in_use, now);
        // The signature of the kept index stays; the one of the deleted build goes with it;
        // neither takes one of the two keepLast places (b4 and b5 have them).
        assert_eq!(deleted_names(&d, &ALL), ["b1", "b3", "sig-b1"]);
        assert_eq!(
            keep_reasons(&d, "sig-idx"),
            [KeepReason::Accessory {
                kind: AccessoryKind::Signature,
                subject: dg("idx")
            }]
        );
        assert!(keep_reasons(&d, "b5").contains(&KeepReason::KeepLast {
            tag: "build-5".into(),
            n: 2,
            rule: 0
        }));
        // The child tagged tmp-1 is kept with all its tags (no untag for a child).
        assert!(matches!(
            d.decisions.iter().find(|x| x.digest() == dg("amd64")),
            Some(RetentionDecision::Keep { untag, .. }) if untag.is_empty()
        ));
        // Per rule: idx (pattern), b4 and b5 (newest).
        assert_eq!(
            d.rules,
            [RuleOutcome {
                rule: 0,
                kept: 3,
                keep_tags_matched: Some(true)
            }]
        );
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn a_keep_tags_rule_that_keeps_nothing_is_a_warning_with_a_hint() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap();
        let (images, rules, in_use) = scenario(r"^v\d");
        let d = decide("app/web", &images, &rules, &in_use, now);
        // Anchored at both ends, '^v\d' matches no tag: the release goes, children and
        // signature with it.
        assert_eq!(
            deleted_names(&d, &ALL),
            ["amd64", "arm64", "b1", "b3", "idx", "sig-b1", "sig-idx"]
        );
        assert_eq!(d.rules[0].keep_tags_matched, Some(false));
        assert_eq!(d.warnings.len(), 1);
        let w = d.warnings[0].message();
        assert_eq!(
            w,
            r"rule 0 keepTags '^v\d' matches no tag of app/web, which loses 7 digests (keepTags is anchored at both ends: it matches part of v1.0.0; '^v\d.*' would match it)"
        );
        // Nothing lost, nothing to warn about: a pattern matching nothing in a repository
        // that keeps everything is fine.
        let d = decide(
            "app/web",
            &images[3..8],
            &[Rule {
                keep_last: Some(10),
                ..rules[0].clone()
            }],
            &in_use,
            now,
        );
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    }

    #[test]
    fn accessory_links_only_ever_keep_more() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap();
        let (mut images, rules, in_use) = scenario(r"v\d.*");
        // Hostile tags: "signature of the kept index" on an unrelated old build (b1): kept.
        images[3].tags.push(sig_tag(&dg("idx"), ".sig"));
        images[3].subjects.push(Subject {
            digest: dg("idx"),
            kind: AccessoryKind::Signature,
        });
        // "signature of a deleted build" (b3) on the release index, on the build in use, on a
        // child of the index and on a newest build: each stays for its own reason.
        for n in [0, 1, 4, 7] {
            images[n].tags.push(sig_tag(&dg("b3"), ".sig"));
            images[n].subjects.push(Subject {
                digest: dg("b3"),
                kind: AccessoryKind::Signature,
            });
        }
        let d = decide("app/web", &images, &rules, &in_use, now);
        // Only b3 goes (b1 is now kept, and its own signature with it).
        assert_eq!(deleted_names(&d, &ALL), ["b3"]);
        assert!(keep_reasons(&d, "b1").contains(&KeepReason::Accessory {
            kind: AccessoryKind::Signature,
            subject: dg("idx")
        }));
        // An accessory tag is never counted as the image's tag for the rules, nor untagged.
        for (name, tag) in [("idx", "v1.0.0"), ("b5", "build-5")] {
            let reasons = keep_reasons(&d, name);
            assert!(
                reasons
                    .iter()
                    .all(|r| !format!("{r:?}").contains("sha256-")),
                "{name}: {reasons:?} (kept for {tag})"
            );
        }
        assert!(matches!(
            d.decisions.iter().find(|x| x.digest() == dg("idx")),
            Some(RetentionDecision::Keep { untag, .. }) if untag.is_empty()
        ));
    }

    #[test]
    fn orphaned_accessories_follow_the_untagged_setting_and_referrers_follow_content() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap();
        let gone = dg("gone");
        let mut orphan = img("orphan", &[&sig_tag(&gone, ".att")], None);
        orphan.subjects = vec![Subject {
            digest: gone.clone(),
            kind: AccessoryKind::Attestation,
        }];
        // An untagged OCI referrer of an old build (deleted) and one of the newest (kept); a
        // signature of the kept referrer (an accessory of an accessory).
        let mut old_ref = img("old-ref", &[], None);
        old_ref.subjects = vec![Subject {
            digest: dg("old"),
            kind: AccessoryKind::Sbom,
        }];
        let mut new_ref = img("new-ref", &[], None);
        new_ref.subjects = vec![Subject {
            digest: dg("new"),
            kind: AccessoryKind::Sbom,
        }];
        let mut ref_sig = img("ref-sig", &[&sig_tag(&dg("new-ref"), ".sig")], None);
        ref_sig.subjects = vec![Subject {
            digest: dg("new-ref"),
            kind: AccessoryKind::Signature,
        }];
        let images = vec![
            img("old", &["1"], day(1)),
            img("new", &["2"], day(2)),
            orphan,
            old_ref,
            new_ref,
            ref_sig,
        ];
        let names = ["old", "new", "orphan", "old-ref", "new-ref", "ref-sig"];
        for (untagged, want) in [
            (Untagged::Delete, vec!["old", "old-ref", "orphan"]),
            // Untagged images kept: the orphan stays; the referrer of a deleted build still
            // goes with it.
            (Untagged::Keep, vec!["old", "old-ref"]),
        ] {
            let rules = [Rule {
                repositories: "**".into(),
                keep_last: Some(1),
                keep_tags: None,
                keep_younger_than: None,
                untagged,
            }];
            let d = decide("app", &images, &rules, &BTreeMap::new(), now);
            assert_eq!(deleted_names(&d, &names), want, "{untagged:?}");
            assert!(
                keep_reasons(&d, "ref-sig").contains(&KeepReason::Accessory {
                    kind: AccessoryKind::Signature,
                    subject: dg("new-ref")
                })
            );
            if untagged == Untagged::Keep {
                assert_eq!(
                    keep_reasons(&d, "orphan"),
                    [KeepReason::OrphanedAccessoryKept {
                        kind: AccessoryKind::Attestation,
                        subject: gone.clone()
                    }]
                );
            }
        }
    }

    #[test]
    fn holders_are_deleted_before_what_depends_on_them() {
        let del = |d: &str| RetentionDecision::Delete {
            digest: d.into(),
            tags: vec![],
        };
        let keep = |d: &str| RetentionDecision::Keep {
            digest: d.into(),
            tags: vec![],
            reasons: vec![KeepReason::UntaggedKept],
            untag: vec![],
        };
        let link = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        let decisions = [
            del("child"),
            del("sig-of-child"),
            del("index"),
            del("sig-of-index"),
            keep("kept"),
            del("sig-of-kept-twin"),
            del("loop-a"),
            del("loop-b"),
        ];
        let links = [
            link("index", "child"),
            link("child", "sig-of-child"),
            link("index", "sig-of-index"),
            link("kept", "sig-of-kept-twin"),
            link("loop-a", "loop-b"),
            link("loop-b", "loop-a"),
        ];
        let order = deletion_order(&decisions, &links);
        let pos = |d: &str| order.iter().position(|p| p.digest == d).unwrap();
        assert_eq!(order.len(), 7);
        assert!(pos("index") < pos("child") && pos("child") < pos("sig-of-child"));
        assert!(pos("index") < pos("sig-of-index"));
        // A kept holder is no constraint (it is not deleted at all).
        assert!(order[pos("sig-of-kept-twin")].after.is_empty());
        assert_eq!(order[pos("sig-of-child")].after, ["child"]);
        // A cycle is broken, every member still listed once.
        assert!(pos("loop-a") < pos("loop-b"));
    }
}

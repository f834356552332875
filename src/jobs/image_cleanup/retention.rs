//! ImageCleanup retention decisions (pure): from one repository's images, the rules and what is in
//! use, which digests to delete and why every other one is kept.
//!
//! Combination semantics (as in Harbor): each rule whose repository pattern matches keeps some
//! *tags*; a digest is kept when any rule keeps any of its tags, because deleting a digest removes
//! every tag on it. On top of the rules, protection always wins: a digest in use (live workloads
//! or the desired state in Git) is kept, and so is every child of a kept index. A repository no
//! rule matches is left alone. Images whose age is unknown count as young (never deleted for age).
//!
//! Tags: a digest kept only because `keepTags` matches some of its tags has its other tags
//! listed as `untag` — removable one by one where the registry supports tag deletion, without
//! touching the digest. Every other reason keeps the digest with all its tags.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

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
}

/// Why a digest is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum KeepReason {
    NoRuleMatches,
    KeepLast { tag: String, n: usize },
    TagPattern { tag: String },
    Young { tag: String },
    InUse { by: Vec<String> },
    ChildOfKeptIndex { index: String },
    UntaggedKept,
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
) -> Vec<RetentionDecision> {
    let applicable: Vec<&Rule> = rules
        .iter()
        .filter(|r| glob_matches(&r.repositories, repository))
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
    for rule in &applicable {
        keep_by_rule(rule, images, now, &mut reasons);
    }
    for i in images {
        if let Some(by) = in_use.get(&i.digest) {
            reasons
                .entry(&i.digest)
                .or_default()
                .push(KeepReason::InUse { by: by.clone() });
        }
        if i.tags.is_empty()
            && !applicable.is_empty()
            && applicable.iter().all(|r| r.untagged == Untagged::Keep)
        {
            reasons
                .entry(&i.digest)
                .or_default()
                .push(KeepReason::UntaggedKept);
        }
    }
    // Children of kept indexes are kept, transitively (an index of indexes).
    loop {
        let mut added = false;
        let kept: Vec<&Image> = images
            .iter()
            .filter(|i| reasons.contains_key(i.digest.as_str()))
            .collect();
        for i in kept {
            for child in &i.children {
                let entry = reasons.entry(child.as_str()).or_default();
                let reason = KeepReason::ChildOfKeptIndex {
                    index: i.digest.clone(),
                };
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
    images
        .iter()
        .map(|i| match reasons.remove(i.digest.as_str()) {
            Some(r) if !r.is_empty() => RetentionDecision::Keep {
                digest: i.digest.clone(),
                tags: i.tags.clone(),
                untag: untag(&i.tags, &r),
                reasons: r,
            },
            _ => RetentionDecision::Delete {
                digest: i.digest.clone(),
                tags: i.tags.clone(),
            },
        })
        .collect()
}

/// The tags of a kept digest that nothing keeps: only when every reason is a tag pattern.
fn untag(tags: &[String], reasons: &[KeepReason]) -> Vec<String> {
    let mut kept = BTreeSet::new();
    for r in reasons {
        match r {
            KeepReason::TagPattern { tag } => {
                kept.insert(tag.as_str());
            }
            _ => return Vec::new(),
        }
    }
    tags.iter()
        .filter(|t| !kept.contains(t.as_str()))
        .cloned()
        .collect()
}

fn keep_by_rule<'a>(
    rule: &Rule,
    images: &'a [Image],
    now: DateTime<Utc>,
    reasons: &mut BTreeMap<&'a str, Vec<KeepReason>>,
) {
    if let Some(n) = rule.keep_last {
        // Newest first; unknown ages first of all (treated as newest: never deleted for age).
        let mut tagged: Vec<&Image> = images.iter().filter(|i| !i.tags.is_empty()).collect();
        tagged.sort_by(|a, b| match (a.created, b.created) {
            (None, None) => a.digest.cmp(&b.digest),
            (None, Some(_)) => std::cmp::Ordering::Less,
            (Some(_), None) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => y.cmp(&x).then_with(|| a.digest.cmp(&b.digest)),
        });
        for i in tagged.into_iter().take(n) {
            reasons
                .entry(&i.digest)
                .or_default()
                .push(KeepReason::KeepLast {
                    tag: i.tags[0].clone(),
                    n,
                });
        }
    }
    if let Some(pattern) = &rule.keep_tags {
        for i in images {
            for tag in i.tags.iter().filter(|t| {
                pattern
                    .find(t)
                    .is_some_and(|m| m.start() == 0 && m.end() == t.len())
            }) {
                let entry = reasons.entry(&i.digest).or_default();
                let reason = KeepReason::TagPattern { tag: tag.clone() };
                if !entry.contains(&reason) {
                    entry.push(reason);
                }
            }
        }
    }
    if let Some(age) = rule.keep_younger_than {
        let cutoff = chrono::Duration::from_std(age)
            .ok()
            .and_then(|d| now.checked_sub_signed(d));
        for i in images.iter().filter(|i| !i.tags.is_empty()) {
            let young = match (i.created, cutoff) {
                (Some(c), Some(cut)) => c > cut,
                _ => true,
            };
            if young {
                reasons
                    .entry(&i.digest)
                    .or_default()
                    .push(KeepReason::Young {
                        tag: i.tags[0].clone(),
                    });
            }
        }
    }
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
        let d = decide("ducklake/backend", &images, &keep_untagged, &in_use, now);
        // keep_last 2 counts d6 (unknown = newest) and d4; d3 is kept as young (19th).
        assert_eq!(deleted(&d), ["d2", "idx"]);
        let reasons = |digest: &str| match d.iter().find(|x| x.digest() == digest).unwrap() {
            RetentionDecision::Keep { reasons, .. } => reasons.clone(),
            other => panic!("{digest}: {other:?}"),
        };
        assert!(reasons("d1").contains(&KeepReason::TagPattern {
            tag: "1.0.0".into()
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
        let d = decide("ducklake/backend", &images, &delete_untagged, &in_use, now);
        assert_eq!(deleted(&d), ["d2", "d7", "idx", "child-a", "child-b"]);
        // The index in use keeps its children.
        let in_use = used(&["d5", "idx"]);
        let d = decide("ducklake/backend", &images, &delete_untagged, &in_use, now);
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
        let d = decide("ducklake/app", &images, &rules, &BTreeMap::new(), now);
        assert_eq!(deleted(&d), ["d2"]);
        // "v1" alone may go, as a tag, where the registry deletes tags.
        match &d[0] {
            RetentionDecision::Keep { untag, .. } => assert_eq!(untag, &["v1"]),
            other => panic!("{other:?}"),
        }
        // Kept for another reason too (young): every tag stays.
        let rules = [rule(Some(0), Some("stable"), Some(30), Untagged::Keep)];
        let d = decide("ducklake/app", &images, &rules, &BTreeMap::new(), now);
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
        let d = decide("other/app", &images, &rules, &BTreeMap::new(), now);
        assert!(deleted(&d).is_empty());
        assert!(d.iter().all(|x| matches!(x, RetentionDecision::Keep { reasons, .. } if reasons == &[KeepReason::NoRuleMatches])));
    }
}

//! Pure: a manifest's immutable facts (`describe`) and the images of a repository as the
//! retention decision sees them (`images_of`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::accessory::{self, Subject};
use super::known::{FACTS, Known, KnownMap};
use super::retention::Image;
use crate::registry;

/// The images of one repository for the decision: tags from `tag_map`, facts from `seen`, links
/// to subjects from accessory tags and from the manifests' own `subject`.
pub(super) fn images_of(
    repo: &str,
    seen: &KnownMap,
    tag_map: &BTreeMap<String, String>,
) -> Vec<Image> {
    let prefix = format!("{repo}@");
    let mut tags_of: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (t, d) in tag_map {
        tags_of.entry(d.as_str()).or_default().push(t.clone());
    }
    let mut images: Vec<Image> = seen
        .iter()
        .map(|(key, k)| {
            let digest = key[prefix.len()..].to_owned();
            let tags = tags_of.remove(digest.as_str()).unwrap_or_default();
            let mut subjects: Vec<Subject> = tags
                .iter()
                .filter_map(|t| accessory::tag_subject(t))
                .chain(k.subject.clone())
                .collect();
            subjects.sort();
            subjects.dedup();
            Image {
                digest,
                tags,
                // Not read (no rule uses age here): unknown, not "first seen".
                created: match k.undated_config {
                    Some(_) => None,
                    None => k.created.or(Some(k.first_seen)),
                },
                children: k.children.clone(),
                subjects,
            }
        })
        .collect();
    images.sort_by(|a, b| a.digest.cmp(&b.digest));
    // An index has no config of its own: its age is its newest child's build date (children
    // without one, such as attestations, do not count).
    let created: BTreeMap<String, Option<DateTime<Utc>>> = seen
        .iter()
        .map(|(key, k)| (key[prefix.len()..].to_owned(), k.created))
        .collect();
    for i in images.iter_mut().filter(|i| !i.children.is_empty()) {
        if let Some(newest) = i
            .children
            .iter()
            .filter_map(|c| created.get(c).copied().flatten())
            .max()
        {
            i.created = Some(newest);
        }
    }
    images
}

/// A manifest's immutable facts (pure). Image age comes from the config's `created`, read
/// separately (`undated_config` names the config) and only where a rule uses age; a missing or
/// epoch date (reproducible builds) falls back to when driftless first saw the digest.
pub(super) fn describe(manifest: &Value, now: DateTime<Utc>) -> Known {
    let children = registry::index_children(manifest);
    // Only an image's config has a build date; an artifact's config (a signature bundle's, an
    // SBOM's empty one) need not even be JSON.
    let image_config = match manifest
        .pointer("/config/mediaType")
        .and_then(Value::as_str)
    {
        None => true,
        Some(t) => {
            t == "application/vnd.oci.image.config.v1+json"
                || t == "application/vnd.docker.container.image.v1+json"
        }
    };
    let undated_config = manifest
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .filter(|_| children.is_empty() && image_config)
        .map(str::to_owned);
    let mut blobs = Vec::new();
    let config = manifest.get("config").into_iter();
    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for b in config.chain(layers) {
        if let (Some(d), Some(s)) = (
            b.get("digest").and_then(Value::as_str),
            b.get("size").and_then(Value::as_u64),
        ) {
            blobs.push((d.to_owned(), s));
        }
    }
    Known {
        first_seen: now,
        created: None,
        children,
        blobs,
        subject: accessory::manifest_subject(manifest),
        facts: FACTS,
        undated_config,
        tags: Vec::new(),
    }
}

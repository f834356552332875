//! Planning: scans the registry (every repository, every tag resolved to its digest, each
//! digest's immutable facts read once and cached in the state directory) and decides every digest
//! with the pure `retention::decide`. Deletes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::Error;
use super::refs::{Reference, Uses};
use super::report::{ImageFacts, RepoReport, Report, Totals};
use super::retention::{self, Image, RetentionDecision};
use super::spec::Spec;
use crate::jobs::model::Job;
use crate::registry::{self, Client};

/// What driftless remembers of a digest (immutable facts, so valid forever) between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Known {
    first_seen: DateTime<Utc>,
    created: Option<DateTime<Utc>>,
    #[serde(default)]
    children: Vec<String>,
    /// The blobs (config and layers) with their sizes.
    #[serde(default)]
    blobs: Vec<(String, u64)>,
}

/// `<repository>@<digest>` → facts.
type KnownMap = BTreeMap<String, Known>;

fn known_path(state_dir: &Path, job: &str) -> std::path::PathBuf {
    state_dir.join("jobs").join(format!("{job}.digests.json"))
}

/// Scans the registry and decides every digest; deletes nothing.
pub async fn plan(
    job: &Job,
    spec: &Spec,
    client: &Arc<Client>,
    uses: &Uses,
    state_dir: &Path,
    now: DateTime<Utc>,
) -> Result<Report, Error> {
    let repositories = client
        .catalog(1000)
        .await
        .map_err(|source| Error::Registry {
            job: job.name.clone(),
            source,
        })?;
    let known_file = known_path(state_dir, &job.name);
    let known: KnownMap = match crate::state::read_json(&known_file) {
        crate::state::Loaded::Ok(k) => k,
        crate::state::Loaded::Missing => KnownMap::new(),
        crate::state::Loaded::Corrupt(problem) => {
            warn!("{problem}; image ages fall back to this run");
            KnownMap::new()
        }
    };
    let known = Arc::new(known);
    let permits = Arc::new(Semaphore::new(spec.concurrency));
    info!(job = %job.name, repositories = repositories.len(), "scanning registry");
    // The futures are collected first: a lazily mapped iterator inside the stream would make
    // the whole run's future not provably `Send`.
    let scans: Vec<_> = repositories
        .into_iter()
        .map(|repo| {
            let (client, known, permits) = (client.clone(), known.clone(), permits.clone());
            let in_repo = uses.get(&repo).cloned().unwrap_or_default();
            let rules = &spec.rules;
            async move {
                match scan_repository(&client, &repo, &known, &permits, now).await {
                    Ok((images, tag_map, seen)) => {
                        let in_use = in_use(&in_repo, &tag_map);
                        let decisions = retention::decide(&repo, &images, rules, &in_use, now);
                        let facts = images
                            .iter()
                            .map(|i| {
                                let bytes = seen
                                    .get(&format!("{repo}@{}", i.digest))
                                    .map_or(0, |k| k.blobs.iter().map(|(_, s)| s).sum());
                                let facts = ImageFacts {
                                    created: i.created,
                                    bytes,
                                    children: i.children.clone(),
                                };
                                (i.digest.clone(), facts)
                            })
                            .collect();
                        let report = RepoReport {
                            repository: repo,
                            error: None,
                            tags: tag_map.len(),
                            decisions,
                            images: facts,
                            tag_map,
                            actions: Vec::new(),
                        };
                        (report, seen)
                    }
                    Err(e) => {
                        warn!(repository = %repo, "{e}");
                        (
                            RepoReport {
                                repository: repo,
                                error: Some(e.to_string()),
                                tags: 0,
                                decisions: Vec::new(),
                                images: BTreeMap::new(),
                                tag_map: BTreeMap::new(),
                                actions: Vec::new(),
                            },
                            KnownMap::new(),
                        )
                    }
                }
            }
        })
        .collect();
    let scans: Vec<(RepoReport, KnownMap)> = futures::stream::iter(scans)
        .buffer_unordered(spec.concurrency)
        .collect()
        .await;
    let mut repositories = Vec::new();
    let mut seen_all = KnownMap::new();
    for (r, seen) in scans {
        // A failed repository keeps what was known of it.
        if r.error.is_some() {
            let prefix = format!("{}@", r.repository);
            seen_all.extend(
                known
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        seen_all.extend(seen);
        repositories.push(r);
    }
    repositories.sort_by(|a, b| a.repository.cmp(&b.repository));
    if let Err(e) = crate::state::write_json(&known_file, &seen_all) {
        warn!("{e}");
    }
    let mut report = Report {
        job: job.name.clone(),
        registry: spec.url.clone(),
        mode: spec.mode,
        deletes: false,
        totals: Totals::default(),
        repositories,
        garbage_collect: None,
        errors: Vec::new(),
    };
    tally(&mut report, &seen_all);
    Ok(report)
}

/// Digests in use in one repository, with who uses them; tags are mapped through the registry.
fn in_use(
    uses: &[(Reference, String)],
    tag_map: &BTreeMap<String, String>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (reference, who) in uses {
        let digest = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(t) => tag_map.get(t).cloned(),
        };
        if let Some(d) = digest {
            let by = out.entry(d).or_default();
            if !by.contains(who) {
                by.push(who.clone());
            }
        }
    }
    out
}

fn tally(report: &mut Report, known: &KnownMap) {
    let mut t = Totals::default();
    for r in &report.repositories {
        t.repositories += 1;
        if r.error.is_some() {
            t.failed_repositories += 1;
            continue;
        }
        t.tags += r.tags as u64;
        t.digests += r.decisions.len() as u64;
        let mut kept_blobs = BTreeSet::new();
        let mut deleted_blobs = BTreeMap::new();
        for d in &r.decisions {
            let blobs = known
                .get(&format!("{}@{}", r.repository, d.digest()))
                .map(|k| k.blobs.as_slice())
                .unwrap_or_default();
            match d {
                RetentionDecision::Delete { .. } => {
                    t.to_delete += 1;
                    deleted_blobs.extend(blobs.iter().cloned());
                }
                RetentionDecision::Keep { untag, .. } => {
                    t.kept += 1;
                    t.to_untag += untag.len() as u64;
                    kept_blobs.extend(blobs.iter().map(|(b, _)| b.clone()));
                }
            }
        }
        t.bytes_reclaimable += deleted_blobs
            .iter()
            .filter(|(b, _)| !kept_blobs.contains(*b))
            .map(|(_, s)| s)
            .sum::<u64>();
    }
    report.totals = t;
}

type Scan = (Vec<Image>, BTreeMap<String, String>, KnownMap);

/// One repository: its tags resolved, and every digest's facts (from `known` or the registry).
async fn scan_repository(
    client: &Client,
    repo: &str,
    known: &KnownMap,
    permits: &Semaphore,
    now: DateTime<Utc>,
) -> Result<Scan, registry::Error> {
    let tags = {
        let _p = permits.acquire().await;
        client.tags(repo, 1000).await?
    };
    let lookups: Vec<_> = tags
        .iter()
        .map(|tag| async move {
            let _p = permits.acquire().await;
            Ok::<_, registry::Error>(
                client
                    .resolve(repo, tag)
                    .await?
                    .map(|r| (tag.clone(), r.digest)),
            )
        })
        .collect();
    let resolved: Vec<Result<Option<(String, String)>, registry::Error>> =
        futures::stream::iter(lookups)
            .buffer_unordered(64)
            .collect()
            .await;
    let mut tag_map = BTreeMap::new();
    for r in resolved {
        // A tag deleted since the listing resolves to nothing: it is simply gone.
        if let Some((tag, digest)) = r? {
            tag_map.insert(tag, digest);
        }
    }
    let mut seen = KnownMap::new();
    let mut queue: Vec<String> = tag_map.values().cloned().collect();
    // Digests seen before that lost their tags: still there (untagged), or gone.
    let prefix = format!("{repo}@");
    for (k, _) in known
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
    {
        let digest = &k[prefix.len()..];
        if !tag_map.values().any(|d| d == digest) {
            let _p = permits.acquire().await;
            if client.resolve(repo, digest).await?.is_some() {
                queue.push(digest.to_owned());
            }
        }
    }
    while let Some(digest) = queue.pop() {
        let key = format!("{repo}@{digest}");
        if seen.contains_key(&key) {
            continue;
        }
        let facts = match known.get(&key) {
            Some(k) => k.clone(),
            None => {
                let _p = permits.acquire().await;
                describe(client, repo, &digest, now).await?
            }
        };
        queue.extend(facts.children.iter().cloned());
        seen.insert(key, facts);
    }
    let mut images: Vec<Image> = seen
        .iter()
        .map(|(key, k)| {
            let digest = key[prefix.len()..].to_owned();
            let mut tags: Vec<String> = tag_map
                .iter()
                .filter(|(_, d)| **d == digest)
                .map(|(t, _)| t.clone())
                .collect();
            tags.sort();
            Image {
                digest,
                tags,
                created: k.created.or(Some(k.first_seen)),
                children: k.children.clone(),
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
    Ok((images, tag_map, seen))
}

/// Reads a manifest's immutable facts. Image age comes from the config's `created`; a missing or
/// epoch date (reproducible builds) falls back to when driftless first saw the digest.
async fn describe(
    client: &Client,
    repo: &str,
    digest: &str,
    now: DateTime<Utc>,
) -> Result<Known, registry::Error> {
    let manifest = client.manifest(repo, digest).await?;
    let children = registry::index_children(&manifest);
    let created = if children.is_empty() {
        client
            .created(repo, &manifest)
            .await?
            .and_then(|c| DateTime::parse_from_rfc3339(&c).ok())
            .map(|c| c.with_timezone(&Utc))
            .filter(|c| c.timestamp() > 86_400)
    } else {
        None
    };
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
    Ok(Known {
        first_seen: now,
        created,
        children,
        blobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_use_maps_tags_through_the_registry() {
        let tag_map: BTreeMap<String, String> = [("v1".to_owned(), "sha256:a".to_owned())].into();
        let uses = vec![
            (Reference::Tag("v1".into()), "Pod ns/a".to_owned()),
            (Reference::Tag("v1".into()), "Deployment ns/a".to_owned()),
            (Reference::Tag("gone".into()), "Pod ns/b".to_owned()),
            (Reference::Digest("sha256:c".into()), "Pod ns/c".to_owned()),
        ];
        let m = in_use(&uses, &tag_map);
        assert_eq!(m["sha256:a"], ["Pod ns/a", "Deployment ns/a"]);
        assert_eq!(m["sha256:c"], ["Pod ns/c"]);
        assert_eq!(m.len(), 2);
    }
}

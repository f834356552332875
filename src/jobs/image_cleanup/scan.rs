//! Planning: scans the registry (every repository, every tag read with one `GET` of its
//! manifest, which gives both the digest and the content; each digest's immutable facts kept by
//! digest in the state directory; an image's config read for its build date only where a rule
//! of its repository uses age), decides every digest with the pure `retention::decide`, and asks
//! the referrers API (where the registry serves it) for the referrers of what the plan deletes,
//! so they go with their subject. Deletes nothing.
//!
//! Requests: one tag list per repository and one manifest `GET` per tag (conditional on the
//! digest the tag resolved to at the last run: a `304` confirms it without a body), plus, for digests not
//! seen before, the config of each image whose age a rule uses (read once per config digest in a
//! run: the same image in several repositories is read once) and the manifests of index children
//! not read yet. At most `spec.concurrency` requests are in flight, over all repositories
//! together, on kept-alive connections.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::Error;
use super::accessory;
use super::images::{describe, images_of};
use super::known::{self, FACTS, Known, KnownMap, known_path};
use super::refs::{Reference, Uses};
use super::report::{ImageFacts, RepoReport, Report, Totals};
use super::retention::{self, Decided, Image, RetentionDecision, Rule};
use super::spec::Spec;
use crate::jobs::model::Job;
use crate::registry::{self, Client, Fetched};

/// Digests one repository's referrer discovery may add: a bound against a registry that lists
/// referrers without end.
const MAX_DISCOVERED: usize = 10_000;

/// What every repository's planning shares.
struct Shared<'a> {
    client: &'a Client,
    known: &'a KnownMap,
    /// Requests in flight, over all repositories.
    permits: &'a Semaphore,
    concurrency: usize,
    rules: &'a [Rule],
    now: DateTime<Utc>,
    /// Set at the registry's first 404 to a referrers request: it does not serve the API, and
    /// referrers are found through the tag schema only.
    no_referrers_api: AtomicBool,
    /// Build dates read in this run, by config digest (checked against the blob's content, so
    /// the same config in another repository has the same date).
    dates: Mutex<BTreeMap<String, Option<DateTime<Utc>>>>,
    /// Tags the registry confirmed unchanged since the last run (`304`).
    unchanged: AtomicU64,
}

impl Shared<'_> {
    /// Runs one request once a permit is free.
    async fn limited<T>(&self, request: impl std::future::Future<Output = T>) -> T {
        // The semaphore is never closed: acquire cannot fail (a failure would only lift the
        // bound for this request).
        let _permit = self.permits.acquire().await;
        request.await
    }

    /// The build date in config `digest` (read once per run); a missing or epoch date
    /// (reproducible builds) is no date.
    async fn build_date(
        &self,
        repo: &str,
        digest: &str,
    ) -> Result<Option<DateTime<Utc>>, registry::Error> {
        if let Some(date) = self.dates.lock().ok().and_then(|d| d.get(digest).copied()) {
            return Ok(date);
        }
        let date = self
            .limited(self.client.config_created(repo, digest))
            .await?
            .and_then(|c| DateTime::parse_from_rfc3339(&c).ok())
            .map(|c| c.with_timezone(&Utc))
            .filter(|c| c.timestamp() > 86_400);
        if let Ok(mut dates) = self.dates.lock() {
            dates.insert(digest.to_owned(), date);
        }
        Ok(date)
    }
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
    let known = known::load(&known_file);
    let permits = Semaphore::new(spec.concurrency);
    let shared = Shared {
        client,
        known: &known,
        permits: &permits,
        concurrency: spec.concurrency,
        rules: &spec.rules,
        now,
        no_referrers_api: AtomicBool::new(false),
        dates: Mutex::new(BTreeMap::new()),
        unchanged: AtomicU64::new(0),
    };
    info!(job = %job.name, repositories = repositories.len(), "scanning registry");
    // The futures are collected first: a lazily mapped iterator inside the stream would make
    // the whole run's future not provably `Send`.
    let scans: Vec<_> = repositories
        .into_iter()
        .map(|repo| {
            let in_repo = uses.get(&repo).cloned().unwrap_or_default();
            let shared = &shared;
            async move {
                match plan_repository(shared, &repo, &in_repo).await {
                    Ok(planned) => planned,
                    Err(e) => {
                        warn!(repository = %repo, "{e}");
                        (RepoReport::failed(repo, e.to_string()), KnownMap::new())
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
    let warnings: Vec<_> = repositories
        .iter()
        .flat_map(|r| r.warnings.iter().cloned())
        .collect();
    for w in &warnings {
        warn!(job = %job.name, repository = %w.repository, "{}", w.message());
    }
    let mut report = Report {
        job: job.name.clone(),
        registry: spec.url.clone(),
        mode: spec.mode,
        deletes: false,
        strict: false,
        totals: Totals::default(),
        rules: super::report::rule_totals(&spec.rules, &repositories),
        warnings,
        repositories,
        garbage_collect: None,
        errors: Vec::new(),
    };
    tally(&mut report, &seen_all);
    report.totals.tags_unchanged = shared.unchanged.load(Ordering::Relaxed);
    Ok(report)
}

/// One repository: scanned, decided, and where the registry serves the referrers API, the
/// referrers of every digest to delete found and decided with it (until no new one appears).
async fn plan_repository(
    shared: &Shared<'_>,
    repo: &str,
    uses: &[(Reference, String)],
) -> Result<(RepoReport, KnownMap), registry::Error> {
    let dated = retention::uses_age(shared.rules, repo);
    let (tag_map, mut seen) = scan_repository(shared, repo, dated).await?;
    let in_use = in_use(uses, &tag_map);
    let decide = |seen: &KnownMap| {
        let images = images_of(repo, seen, &tag_map);
        let decided = retention::decide(repo, &images, shared.rules, &in_use, shared.now);
        (images, decided)
    };
    let (mut images, mut decided) = decide(&seen);
    let mut asked = BTreeSet::new();
    let mut discovered = 0;
    while !shared.no_referrers_api.load(Ordering::Relaxed) {
        let to_ask: Vec<String> = decided
            .decisions
            .iter()
            .filter(|d| matches!(d, RetentionDecision::Delete { .. }))
            .map(|d| d.digest().to_owned())
            .filter(|d| !asked.contains(d))
            .collect();
        let before = seen.len();
        for subject in to_ask {
            asked.insert(subject.clone());
            if discovered >= MAX_DISCOVERED {
                break;
            }
            let listed = shared
                .limited(shared.client.referrers(repo, &subject))
                .await?;
            let Some(listed) = listed else {
                info!(
                    "the registry does not serve the referrers API: referrers are found through the referrers tag schema"
                );
                shared.no_referrers_api.store(true, Ordering::Relaxed);
                break;
            };
            if listed.truncated {
                warn!(repository = %repo, subject = %subject, "more than {} referrers listed: the rest are left alone", registry::REFERRERS_MAX);
            }
            for r in listed.referrers {
                let key = format!("{repo}@{}", r.digest);
                if seen.contains_key(&key) {
                    continue;
                }
                // A listed digest that cannot be read is left alone (never seen, never deleted)
                // rather than failing the repository.
                let facts = match facts_of(shared, repo, &r.digest, None, dated).await {
                    Ok(Some(f)) => f,
                    Ok(None) => continue,
                    Err(e) => {
                        warn!(repository = %repo, subject = %subject, referrer = %r.digest, "a listed referrer cannot be read, left alone: {e}");
                        continue;
                    }
                };
                // Only the referrer's own content links it to the subject: a listing that names
                // an unrelated digest adds nothing (it could otherwise make that digest follow a
                // deleted subject).
                if facts.subject.as_ref().map(|s| s.digest.as_str()) != Some(subject.as_str()) {
                    warn!(repository = %repo, subject = %subject, referrer = %r.digest, "a listed referrer does not name the subject; ignored");
                    continue;
                }
                let children = facts.children.clone();
                seen.insert(key, facts);
                describe_all(shared, repo, children, BTreeMap::new(), dated, &mut seen).await?;
                discovered += 1;
            }
        }
        if seen.len() == before {
            break;
        }
        (images, decided) = decide(&seen);
    }
    Ok((report_of(repo, images, decided, tag_map, &seen), seen))
}

fn report_of(
    repo: &str,
    images: Vec<Image>,
    decided: Decided,
    tag_map: BTreeMap<String, String>,
    seen: &KnownMap,
) -> RepoReport {
    let facts = images
        .into_iter()
        .map(|i| {
            let bytes = seen
                .get(&format!("{repo}@{}", i.digest))
                .map_or(0, |k| k.blobs.iter().map(|(_, s)| s).sum());
            let facts = ImageFacts {
                created: i.created,
                bytes,
                children: i.children,
                subjects: i.subjects,
            };
            (i.digest, facts)
        })
        .collect();
    RepoReport {
        repository: repo.to_owned(),
        error: None,
        tags: tag_map.len(),
        decisions: decided.decisions,
        rules: decided.rules,
        warnings: decided.warnings,
        images: facts,
        tag_map,
        actions: Vec::new(),
    }
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

/// A tag, the digest it resolved to at the last run, and what the registry answered now.
type TagRead<'a> = (String, Option<&'a str>, Fetched);

/// One repository: its tags resolved (one manifest `GET` each), and every digest's facts (from
/// `known` or the manifests just read; configs only when `dated`).
async fn scan_repository(
    shared: &Shared<'_>,
    repo: &str,
    dated: bool,
) -> Result<(BTreeMap<String, String>, KnownMap), registry::Error> {
    let client = shared.client;
    // A repository deleted since the catalog listed it has nothing left to decide.
    let tags = match shared.limited(client.tags(repo, 1000)).await {
        Err(e) if e.is_not_found() => Vec::new(),
        tags => tags?,
    };
    // What each tag resolved to at the last run: asked as `If-None-Match`, so a tag that still
    // resolves there costs the registry a `304` instead of a manifest read.
    let prefix = format!("{repo}@");
    let last: BTreeMap<&str, &str> = shared
        .known
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .flat_map(|(k, v)| {
            let digest = &k[prefix.len()..];
            v.tags.iter().map(move |t| (t.as_str(), digest))
        })
        .collect();
    let reads: Vec<_> = tags
        .iter()
        .map(|tag| {
            let unless = last.get(tag.as_str()).copied();
            async move {
                let fetched = shared
                    .limited(client.fetch_manifest_unless(repo, tag, unless))
                    .await?;
                Ok::<_, registry::Error>((tag.clone(), unless, fetched))
            }
        })
        .collect();
    let read: Vec<Result<TagRead<'_>, registry::Error>> = futures::stream::iter(reads)
        .buffer_unordered(shared.concurrency)
        .collect()
        .await;
    let mut tag_map = BTreeMap::new();
    // The manifests of digests whose facts are not known yet, for `describe_all`.
    let mut bodies = BTreeMap::new();
    for r in read {
        match r? {
            (tag, Some(digest), Fetched::Unchanged) => {
                shared.unchanged.fetch_add(1, Ordering::Relaxed);
                tag_map.insert(tag, digest.to_owned());
            }
            (tag, _, Fetched::Manifest(manifest)) => {
                tag_map.insert(tag, manifest.digest.clone());
                if !shared.complete(repo, &manifest.digest, dated) {
                    bodies.insert(manifest.digest.clone(), manifest);
                }
            }
            // A tag deleted since the listing reads as nothing: it is simply gone.
            _ => {}
        }
    }
    let tagged: BTreeSet<&str> = tag_map.values().map(String::as_str).collect();
    let mut queue: Vec<String> = tagged.iter().map(|d| (*d).to_owned()).collect();
    // Digests seen before that lost their tags: still there (untagged), or gone.
    let untagged: Vec<_> = shared
        .known
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| &k[prefix.len()..])
        .filter(|d| !tagged.contains(d))
        .map(|digest| async move {
            let found = shared.limited(client.resolve(repo, digest)).await?;
            Ok::<_, registry::Error>(found.map(|_| digest.to_owned()))
        })
        .collect();
    let untagged: Vec<Result<Option<String>, registry::Error>> = futures::stream::iter(untagged)
        .buffer_unordered(shared.concurrency)
        .collect()
        .await;
    for d in untagged {
        queue.extend(d?);
    }
    let mut seen = KnownMap::new();
    describe_all(shared, repo, queue, bodies, dated, &mut seen).await?;
    // The tags as of this run, for the next run's `If-None-Match`.
    for facts in seen.values_mut() {
        facts.tags.clear();
    }
    for (tag, digest) in &tag_map {
        if let Some(facts) = seen.get_mut(&format!("{repo}@{digest}")) {
            facts.tags.push(tag.clone());
        }
    }
    Ok((tag_map, seen))
}

/// Adds the facts of `queue`'s digests and of their children, transitively, to `seen`, reading
/// each level in parallel; `bodies` are manifests already read. A digest deleted since it was
/// listed (its manifest or config answers 404) is left out: not decided, so never deleted by
/// this run.
async fn describe_all(
    shared: &Shared<'_>,
    repo: &str,
    mut queue: Vec<String>,
    mut bodies: BTreeMap<String, registry::Manifest>,
    dated: bool,
    seen: &mut KnownMap,
) -> Result<(), registry::Error> {
    loop {
        queue.sort();
        queue.dedup();
        queue.retain(|d| !seen.contains_key(&format!("{repo}@{d}")));
        if queue.is_empty() {
            return Ok(());
        }
        let level: Vec<_> = queue
            .drain(..)
            .map(|digest| {
                let body = bodies.remove(&digest);
                async move {
                    let facts = facts_of(shared, repo, &digest, body, dated).await;
                    (digest, facts)
                }
            })
            .collect();
        let described: Vec<(String, Result<Option<Known>, registry::Error>)> =
            futures::stream::iter(level)
                .buffer_unordered(shared.concurrency)
                .collect()
                .await;
        for (digest, facts) in described {
            let facts = match facts {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            queue.extend(facts.children.iter().cloned());
            seen.insert(format!("{repo}@{digest}"), facts);
        }
    }
}

impl Shared<'_> {
    /// Whether `known` holds every fact this run needs of `digest` (no read needed).
    fn complete(&self, repo: &str, digest: &str, dated: bool) -> bool {
        self.known
            .get(&format!("{repo}@{digest}"))
            .is_some_and(|k| k.facts >= FACTS && (!dated || k.undated_config.is_none()))
    }
}

/// A digest's facts: remembered, completed (an entry of an older driftless: its manifest; an
/// entry without a build date where a rule now uses age: its config), or read from `body` (the
/// manifest as its tag was read) or the registry. `None`: the manifest is gone.
async fn facts_of(
    shared: &Shared<'_>,
    repo: &str,
    digest: &str,
    body: Option<registry::Manifest>,
    dated: bool,
) -> Result<Option<Known>, registry::Error> {
    let known = shared.known.get(&format!("{repo}@{digest}"));
    let mut facts = match known {
        Some(k) if k.facts >= FACTS => k.clone(),
        _ => {
            let manifest = match body {
                Some(m) => m,
                None => match shared
                    .limited(shared.client.fetch_manifest(repo, digest))
                    .await?
                {
                    Some(m) => m,
                    None => return Ok(None),
                },
            };
            let manifest = manifest.json()?;
            match known {
                Some(old) => Known {
                    subject: accessory::manifest_subject(&manifest),
                    facts: FACTS,
                    ..old.clone()
                },
                None => describe(&manifest, shared.now),
            }
        }
    };
    if dated && let Some(config) = facts.undated_config.take() {
        facts.created = shared.build_date(repo, &config).await?;
    }
    Ok(Some(facts))
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

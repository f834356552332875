//! The `ImageCleanup` job: retention for a Docker registry that never deletes what is in use.
//!
//! A run (1) reads what protects images: the images of live workloads in the cluster and of the
//! revision's desired state; (2) scans the registry: every repository, every tag resolved to its
//! digest (all manifest types accepted, so an index is never mistaken for a child), each digest's
//! age, size and index children (immutable, so cached in the state directory across runs); (3)
//! decides with the pure `jobs::retention::decide`; (4) in `enforce` mode deletes — re-resolving
//! every tag of a digest just before its DELETE and skipping it if anything moved — and removes
//! expired tags of kept digests where the registry deletes tags; (5) optionally runs the
//! registry's offline garbage collection. One repository's errors never stop the others.

pub mod refs;
pub mod spec;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::jobs::model::Job;
use crate::jobs::retention::{self, Image, KeepReason, RetentionDecision};
use crate::registry::{self, Client, TagDeletion};
use crate::stack::RenderedStack;
use refs::{Reference, Uses};
use spec::{Mode, Spec};

/// Errors that stop a run before it decides anything.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] spec::Error),
    #[error("ImageCleanup {job}: {source}")]
    Credentials {
        job: String,
        #[source]
        source: crate::credentials::Error,
    },
    #[error("ImageCleanup {job}: {source}")]
    Registry {
        job: String,
        #[source]
        source: registry::Error,
    },
    #[error(
        "ImageCleanup {job}: cannot read the images live workloads use, so nothing is deleted: {message} (set spec.protect.cluster: false only for a registry no cluster pulls from)"
    )]
    Cluster { job: String, message: String },
}

/// What a run may read.
pub struct Inputs<'a> {
    /// The cluster whose workloads protect images (`None`: no connection).
    pub cluster: Option<&'a kube::Client>,
    /// The revision's desired state.
    pub desired: &'a [RenderedStack],
    /// The host's credentials, read as the repository's (`credentials`).
    pub credentials: &'a crate::credentials::Credentials,
    pub state_dir: &'a Path,
}

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

fn short(digest: &str) -> &str {
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

/// Runs the job: plans, and deletes when `spec.mode` is `enforce` and `dry_run` is false.
pub async fn run(
    job: &Job,
    spec: &Spec,
    inputs: &Inputs<'_>,
    dry_run: bool,
) -> Result<Report, Error> {
    let client = Arc::new(client_for(job, spec, inputs.credentials)?);
    let uses = protections(job, spec, inputs).await?;
    let mut report = plan(job, spec, &client, &uses, inputs.state_dir, Utc::now()).await?;
    if spec.mode == Mode::Enforce && !dry_run {
        report.deletes = true;
        execute(spec, &client, &mut report).await;
        if let Some(gc) = &spec.garbage_collect
            && (report.totals.deleted > 0 || report.totals.untagged > 0)
        {
            match garbage_collect(gc).await {
                Ok(text) => report.garbage_collect = Some(text),
                Err(text) => {
                    report.errors.push(format!("garbage collection: {text}"));
                    report.garbage_collect = Some(text);
                }
            }
        }
    }
    report.totals.requests = client.requests();
    Ok(report)
}

/// A registry client with the spec's credentials, read from the credentials directory.
pub fn client_for(
    job: &Job,
    spec: &Spec,
    credentials: &crate::credentials::Credentials,
) -> Result<Client, Error> {
    let read = |field: &'static str, file: &str| -> Result<secrecy::SecretString, Error> {
        credentials
            .repository_text(field, file)
            .map_err(|source| Error::Credentials {
                job: job.name.clone(),
                source,
            })
    };
    let credentials = match (&spec.username_file, &spec.password_file) {
        (Some(u), Some(p)) => registry::Credentials {
            username: Some(
                secrecy::ExposeSecret::expose_secret(&read("spec.registry.usernameFile", u)?)
                    .to_owned(),
            ),
            password: Some(read("spec.registry.passwordFile", p)?),
        },
        _ => registry::Credentials::default(),
    };
    Client::new(&spec.url, credentials).map_err(|source| Error::Registry {
        job: job.name.clone(),
        source,
    })
}

/// The kinds whose objects name images that must stay.
const WORKLOAD_KINDS: [(&str, &str, &str); 7] = [
    ("", "v1", "Pod"),
    ("apps", "v1", "Deployment"),
    ("apps", "v1", "StatefulSet"),
    ("apps", "v1", "DaemonSet"),
    ("apps", "v1", "ReplicaSet"),
    ("batch", "v1", "Job"),
    ("batch", "v1", "CronJob"),
];

/// The images in use: the revision's desired workloads and the cluster's live ones.
pub async fn protections(job: &Job, spec: &Spec, inputs: &Inputs<'_>) -> Result<Uses, Error> {
    let mut uses = Uses::new();
    if spec.protect.desired {
        for stack in inputs.desired {
            for o in &stack.objects {
                let who = format!("{} (stack {}, desired)", o.key, stack.name);
                refs::collect(&o.object, &who, &spec.hosts, &mut uses);
            }
        }
    }
    if spec.protect.cluster {
        let cluster = |message: String| Error::Cluster {
            job: job.name.clone(),
            message,
        };
        let client = inputs
            .cluster
            .ok_or_else(|| cluster("no cluster connection".to_owned()))?;
        for (group, version, kind) in WORKLOAD_KINDS {
            let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
            let api: kube::Api<DynamicObject> = kube::Api::all_with(client.clone(), &ar);
            let mut params = ListParams::default().limit(500);
            loop {
                let list = api
                    .list(&params)
                    .await
                    .map_err(|e| cluster(format!("listing {kind}s: {e}")))?;
                for o in &list.items {
                    let who = format!(
                        "{kind} {}/{}",
                        o.metadata.namespace.as_deref().unwrap_or(""),
                        o.metadata.name.as_deref().unwrap_or("")
                    );
                    let value = serde_json::to_value(o).unwrap_or(Value::Null);
                    refs::collect(&value, &who, &spec.hosts, &mut uses);
                }
                match list.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(c) => params = params.continue_token(&c),
                    None => break,
                }
            }
        }
    }
    Ok(uses)
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

/// Carries out the plan, re-checking each digest's tags first.
pub async fn execute(spec: &Spec, client: &Client, report: &mut Report) {
    let mut tag_deletion = spec.tag_deletion;
    for repo in report.repositories.iter_mut().filter(|r| r.error.is_none()) {
        if let Err(e) = execute_repository(client, repo, &mut tag_deletion).await {
            warn!(repository = %repo.repository, "{e}");
            repo.error = Some(e.to_string());
        }
    }
    let t = &mut report.totals;
    for r in &report.repositories {
        if r.error.is_some() && r.actions.iter().any(|a| a.result == "failed") {
            t.failed_repositories += 1;
        }
        for a in &r.actions {
            match a.result {
                "deleted" => t.deleted += 1,
                "untagged" => t.untagged += 1,
                "skipped" => t.skipped += 1,
                _ => {}
            }
        }
    }
}

async fn execute_repository(
    client: &Client,
    repo: &mut RepoReport,
    tag_deletion: &mut bool,
) -> Result<(), registry::Error> {
    let name = repo.repository.clone();
    // Tags pushed since planning: any of them on a digest to delete makes that digest stay.
    let now_tags: BTreeSet<String> = client.tags(&name, 1000).await?.into_iter().collect();
    let mut new_tags = BTreeMap::new();
    for tag in now_tags.iter().filter(|t| !repo.tag_map.contains_key(*t)) {
        if let Some(r) = client.resolve(&name, tag).await? {
            new_tags.insert(tag.clone(), r.digest);
        }
    }
    // Indexes before their children: an interrupted run never leaves an index without them.
    let mut deletes: Vec<(&String, &Vec<String>)> = repo
        .decisions
        .iter()
        .filter_map(|d| match d {
            RetentionDecision::Delete { digest, tags } => Some((digest, tags)),
            RetentionDecision::Keep { .. } => None,
        })
        .collect();
    deletes.sort_by_key(|(d, _)| {
        std::cmp::Reverse(repo.images.get(*d).is_some_and(|f| !f.children.is_empty()))
    });
    let mut actions = Vec::new();
    for (digest, tags) in deletes {
        let mut moved = None;
        for tag in tags {
            match client.resolve(&name, tag).await? {
                Some(r) if &r.digest == digest => {}
                Some(r) => {
                    moved = Some(format!(
                        "tag {tag} moved to {} since planning",
                        short(&r.digest)
                    ))
                }
                None => {}
            }
        }
        if let Some((tag, _)) = new_tags.iter().find(|(_, d)| *d == digest) {
            moved = Some(format!("tag {tag} was pushed onto it since planning"));
        }
        if let Some(detail) = moved {
            info!(repository = %name, digest = %digest, "skipped: {detail}");
            actions.push(Action {
                digest: digest.clone(),
                tag: None,
                result: "skipped",
                detail: Some(detail),
            });
            continue;
        }
        let deleted = client.delete(&name, digest).await;
        actions.push(match deleted {
            Ok(true) => {
                info!(repository = %name, digest = %digest, tags = ?tags, "deleted");
                Action {
                    digest: digest.clone(),
                    tag: None,
                    result: "deleted",
                    detail: None,
                }
            }
            Ok(false) => Action {
                digest: digest.clone(),
                tag: None,
                result: "skipped",
                detail: Some("already gone".to_owned()),
            },
            Err(e) => Action {
                digest: digest.clone(),
                tag: None,
                result: "failed",
                detail: Some(e.to_string()),
            },
        });
    }
    for d in &repo.decisions {
        let RetentionDecision::Keep { digest, untag, .. } = d else {
            continue;
        };
        for tag in untag {
            if !*tag_deletion {
                break;
            }
            match client.resolve(&name, tag).await? {
                Some(r) if &r.digest == digest => {}
                _ => {
                    actions.push(Action {
                        digest: digest.clone(),
                        tag: Some(tag.clone()),
                        result: "skipped",
                        detail: Some("tag moved since planning".to_owned()),
                    });
                    continue;
                }
            }
            match client.delete_tag(&name, tag).await {
                Ok(TagDeletion::Deleted) => actions.push(Action {
                    digest: digest.clone(),
                    tag: Some(tag.clone()),
                    result: "untagged",
                    detail: None,
                }),
                Ok(TagDeletion::Gone) => {}
                Ok(TagDeletion::Unsupported) => {
                    warn!("the registry does not delete tags; expired tags on kept digests stay");
                    *tag_deletion = false;
                }
                Err(e) => actions.push(Action {
                    digest: digest.clone(),
                    tag: Some(tag.clone()),
                    result: "failed",
                    detail: Some(e.to_string()),
                }),
            }
        }
    }
    let failed = actions.iter().filter(|a| a.result == "failed").count();
    repo.actions = actions;
    if failed > 0 {
        repo.error = Some(format!("{failed} deletes failed"));
    }
    Ok(())
}

/// Runs the configured garbage-collection command; its output's last lines are the result.
async fn garbage_collect(gc: &spec::GarbageCollect) -> Result<String, String> {
    let Some((program, args)) = gc.command.split_first() else {
        return Err("empty command".to_owned());
    };
    let run = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(gc.timeout, run)
        .await
        .map_err(|_| format!("{program}: no result within {:?}", gc.timeout))?
        .map_err(|e| format!("{program}: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
    if output.status.success() {
        Ok(format!("{program} succeeded: {tail}"))
    } else {
        Err(format!("{program} failed ({}): {tail}", output.status))
    }
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

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}

//! Enforcement: carries out a plan's deletes, indexes before their children and subjects before
//! their accessories, re-resolving every tag of a digest just before its DELETE (and skipping it
//! when anything moved since planning, or when its index or subject was not deleted), then
//! removes expired tags of kept digests where the registry deletes tags.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{info, warn};

use super::report::{Action, RepoReport, Report, short};
use super::retention::{self, RetentionDecision};
use super::spec::Spec;
use crate::registry::{self, Client, TagDeletion};

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
    // Holders first (an index before its children, a subject before its accessories): an
    // interrupted run never leaves an index without children or a kept image unsigned, and what
    // depends on a delete that did not happen stays too.
    let mut links = Vec::new();
    for (digest, facts) in &repo.images {
        links.extend(facts.children.iter().map(|c| (digest.clone(), c.clone())));
        links.extend(
            facts
                .subjects
                .iter()
                .map(|s| (s.digest.clone(), digest.clone())),
        );
    }
    let order = retention::deletion_order(&repo.decisions, &links);
    let mut stayed: BTreeSet<String> = BTreeSet::new();
    let mut actions = Vec::new();
    for planned in &order {
        let (digest, tags) = (&planned.digest, &planned.tags);
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
        if let Some(holder) = planned.after.iter().find(|h| stayed.contains(*h)) {
            let what = if repo
                .images
                .get(holder)
                .is_some_and(|f| f.children.contains(digest))
            {
                "its index"
            } else {
                "its subject"
            };
            moved = Some(format!("{what} {} was not deleted", short(holder)));
        }
        if let Some(detail) = moved {
            info!(repository = %name, digest = %digest, "skipped: {detail}");
            stayed.insert(digest.clone());
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
            Err(e) => {
                stayed.insert(digest.clone());
                Action {
                    digest: digest.clone(),
                    tag: None,
                    result: "failed",
                    detail: Some(e.to_string()),
                }
            }
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

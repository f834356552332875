//! The daemon's revisions: the newest one fetched and loaded through `crate::revision` on
//! blocking threads, and the last good one — what is reconciled while newer ones fail to fetch,
//! load, render or compile their policies.

use std::sync::Arc;

use tracing::{info, warn};

use super::Shared;
use super::backoff::Backoffs;
use super::jobs::JobsState;
use super::status::UnverifiedRevision;
use crate::config::HostConfig;
use crate::credentials::Credentials;
use crate::policy::PolicySet;
use crate::source::Revision;
use crate::stack::{RenderedStack, StoredRevision};

/// The last revision that loaded: what is reconciled while newer ones fail.
pub struct LastGood {
    /// The Git commit (`None` for a local directory).
    pub revision: Option<Revision>,
    /// Its stacks, stored compactly, per profile of the targets (the first target's profile
    /// first); shared with the scheduler's view and each reconcile.
    pub stored: Vec<(Option<String>, Arc<StoredRevision>)>,
    pub policies: Arc<PolicySet>,
    /// Its declared health checks of custom resources.
    pub health_checks: Arc<crate::health_checks::HealthChecks>,
    pub policy_digest: String,
}

impl LastGood {
    /// The commit's sha, if it is one.
    pub fn sha(&self) -> Option<&str> {
        self.revision.as_ref().map(|r| r.sha.as_str())
    }
}

/// The desired state of one run, per profile: a revision rendered just now, or the stored last
/// good one.
pub enum Desired {
    Fresh(Vec<(Option<String>, Arc<Vec<RenderedStack>>)>),
    Stored(Vec<(Option<String>, Arc<StoredRevision>)>),
}

impl Desired {
    /// The stacks of `profile` with their objects (a stored revision is expanded for this run
    /// only).
    pub fn expand(
        &self,
        profile: &Option<String>,
    ) -> Result<Arc<Vec<RenderedStack>>, crate::stack::stored::ExpandError> {
        match self {
            Desired::Fresh(by) => Ok(by
                .iter()
                .find(|(p, _)| p == profile)
                .map(|(_, s)| Arc::clone(s))
                .unwrap_or_default()),
            Desired::Stored(by) => match by.iter().find(|(p, _)| p == profile) {
                Some((_, stored)) => stored.expand().map(Arc::new),
                None => Ok(Arc::default()),
            },
        }
    }

    /// Whether the revision was rendered just now (not the stored last good one).
    pub fn is_fresh(&self) -> bool {
        matches!(self, Desired::Fresh(_))
    }
}

/// What one look at the source found.
pub struct Next {
    /// What to reconcile: the new revision, or the last good one; `None` before any loaded.
    pub desired: Option<Desired>,
    /// Why the newest revision is not the desired state (source, load), for the status.
    pub errors: Vec<String>,
}

/// The followed ref, when the error says the remote no longer has it.
fn missing_ref(e: &crate::revision::Error) -> Option<String> {
    match e {
        crate::revision::Error::Source(crate::source::Error::RefNotFound { reference, .. }) => {
            Some(reference.clone())
        }
        _ => None,
    }
}

/// The revision `source.git.verify` refused, when that is what the error says. Another error
/// leaves the last refusal reported (until a revision verifies).
fn unverified(e: &crate::revision::Error) -> Option<UnverifiedRevision> {
    match e {
        crate::revision::Error::Source(crate::source::Error::Unverified {
            sha,
            object,
            signer,
            reason,
            ..
        }) => Some(UnverifiedRevision {
            sha: sha.clone(),
            object: object.clone(),
            signer: signer.clone(),
            reason: reason.clone(),
        }),
        _ => None,
    }
}

/// Reports a revision refused by `source.git.verify` in the status and the
/// `source_unverified_revision` metric (`Some`), or clears both (`None`).
async fn record_unverified(shared: &Shared, refused: Option<UnverifiedRevision>) {
    let m = &shared.metrics.source_unverified;
    m.clear();
    if let Some(r) = &refused {
        m.get_or_create(&super::metrics::labels(&[
            ("commit", &r.sha),
            ("signer", r.signer.as_deref().unwrap_or("")),
            ("reason", &r.reason),
        ]))
        .set(1);
    }
    shared.status.write().await.unverified = refused;
}

/// The instance and Secret key every target applies with (`Revisions::hashing`).
#[derive(Clone)]
pub struct Hashing {
    pub by: Arc<crate::stack::object::HashedBy>,
    pub key: Option<crate::cluster::apply::SecretHashKey>,
}

/// The revisions the loop knows.
#[derive(Default)]
pub struct Revisions {
    pub last_good: Option<LastGood>,
    /// Parsed manifests by text, reused by the next revision's render.
    parse_cache: Arc<crate::yaml::ParseCache>,
    /// The instance and Secret key every target applies with: each stored revision carries its
    /// objects' `applied_hash` for them.
    pub hashing: Option<Hashing>,
}

impl Revisions {
    fn last_good_desired(&self) -> Option<Desired> {
        self.last_good
            .as_ref()
            .map(|g| Desired::Stored(g.stored.clone()))
    }

    /// Fetches the source and, when it moved, loads the new revision once per profile of
    /// `profiles` (the targets'); `mark` is called after the fetch (the end of the `fetch`
    /// phase). A new revision that loads becomes the last good one (and the scheduler's); one
    /// that does not is reported and the last good one stays.
    pub async fn next(
        &mut self,
        config: &HostConfig,
        profiles: &[Option<String>],
        shared: &Shared,
        backoffs: &mut Backoffs,
        credentials: &Credentials,
        mark: impl FnOnce(),
    ) -> Next {
        let mut errors = Vec::new();
        let previous = self
            .last_good
            .as_ref()
            .and_then(|g| g.sha().map(str::to_owned));
        let (source, creds, state_dir) = (
            config.source.clone(),
            credentials.clone(),
            config.state_dir(),
        );
        let fetched = tokio::task::spawn_blocking(move || {
            crate::revision::checkout(
                source.as_ref(),
                None,
                &creds,
                &state_dir,
                previous.as_deref(),
            )
            .map_err(|e| (e.to_string(), missing_ref(&e), unverified(&e)))
        })
        .await
        .unwrap_or_else(|e| Err((format!("fetch task failed: {e}"), None, None)));
        mark();
        let checkout = match fetched {
            Ok(c) => c,
            Err((e, missing, refused)) => {
                if refused.is_some() {
                    record_unverified(shared, refused).await;
                }
                backoffs.source_failures += 1;
                errors.push(format!("source: {e}; keeping the last good revision"));
                // A vanished branch or tag is not an empty revision: the last good one stays.
                shared
                    .metrics
                    .source_ref_missing
                    .set(i64::from(missing.is_some()));
                shared.status.write().await.missing_ref = missing;
                return Next {
                    desired: self.last_good_desired(),
                    errors,
                };
            }
        };
        backoffs.source_failures = 0;
        shared.metrics.source_ref_missing.set(0);
        record_unverified(shared, None).await;
        {
            let mut st = shared.status.write().await;
            st.revision = checkout.revision.clone();
            st.missing_ref = None;
        }
        let unchanged = matches!(
            (self.last_good.as_ref().and_then(LastGood::sha), &checkout.revision),
            (Some(old), Some(new)) if old == new.sha
        );
        if unchanged {
            return Next {
                desired: self.last_good_desired(),
                errors,
            };
        }
        let (profiles, creds, renderers, cache, root) = (
            profiles.to_vec(),
            credentials.clone(),
            config.renderers.renderers(),
            Arc::clone(&self.parse_cache),
            checkout.root.clone(),
        );
        let hashing = self.hashing.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            // One render per profile; the first one's policies, health checks and jobs serve
            // all (they do not depend on the profile's variables).
            let mut first = None;
            let mut by_profile = Vec::new();
            for profile in profiles {
                let loaded = crate::revision::load(
                    &root,
                    &crate::revision::LoadOptions {
                        profile: profile.as_deref(),
                        credentials: &creds,
                        renderers: &renderers,
                        placeholders: false,
                        cache: Some(&cache),
                    },
                )?;
                let mut loaded = loaded;
                let mut lap = crate::logging::Lap::start("revision");
                let stored = Arc::new(match &hashing {
                    Some(h) => {
                        let hash = |o: &crate::stack::DesiredObject, json: &[u8]| {
                            crate::cluster::apply::applied_hash_of_text(
                                o,
                                json,
                                h.key.as_ref(),
                                &h.by.instance,
                            )
                        };
                        let with = crate::stack::stored::Hashing {
                            by: Arc::clone(&h.by),
                            hash: &hash,
                        };
                        StoredRevision::store_hashed(&loaded.stacks, Some(&with))
                    }
                    None => StoredRevision::store(&loaded.stacks),
                });
                lap.log("stored the revision");
                let stacks = Arc::new(std::mem::take(&mut loaded.stacks));
                by_profile.push((profile, stacks, stored));
                first.get_or_insert(loaded);
            }
            let loaded = first.ok_or(crate::revision::Error::NoSource)?;
            Ok::<_, crate::revision::Error>((loaded, by_profile))
        })
        .await;
        let (loaded, by_profile) = match loaded {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                let rev = checkout
                    .revision
                    .as_ref()
                    .map(|r| r.sha.as_str())
                    .unwrap_or("working tree");
                errors.push(format!(
                    "revision {rev} does not load; keeping the last good revision: {e}"
                ));
                return Next {
                    desired: self.last_good_desired(),
                    errors,
                };
            }
            Err(e) => {
                errors.push(format!("render task failed: {e}"));
                return Next {
                    desired: self.last_good_desired(),
                    errors,
                };
            }
        };
        if let Some(r) = &checkout.revision {
            info!(sha = %r.sha, subject = %r.subject, "new revision loaded");
        }
        backoffs.retry_all_now();
        let stored: Vec<_> = by_profile
            .iter()
            .map(|(p, _, s)| (p.clone(), Arc::clone(s)))
            .collect();
        // At least one profile was loaded (`first` above), so `stored` is not empty.
        let Some((_, first_stored)) = stored.first() else {
            errors.push("no target to render the revision for".to_owned());
            return Next {
                desired: self.last_good_desired(),
                errors,
            };
        };
        let first_stored = Arc::clone(first_stored);
        let fresh: Vec<_> = by_profile
            .into_iter()
            .map(|(p, stacks, _)| (p, stacks))
            .collect();
        *shared.jobs.write().await = Some(JobsState {
            jobs: loaded.jobs,
            desired: first_stored,
            revision: checkout.revision.as_ref().map(|r| r.sha.clone()),
            state_dir: config.state_dir(),
            credentials: credentials.clone(),
            commands: config.jobs.commands.clone(),
            host: crate::jobs::host::HostSettings::from_config(config),
        });
        shared.jobs_changed.notify_one();
        self.last_good = Some(LastGood {
            revision: checkout.revision.clone(),
            stored,
            policies: Arc::new(loaded.policies),
            health_checks: Arc::new(loaded.health_checks),
            policy_digest: loaded.policy_digest,
        });
        shared.status.write().await.applied_revision = checkout.revision;
        Next {
            desired: Some(Desired::Fresh(fresh)),
            errors,
        }
    }
}

/// Removes the Git checkouts no longer needed, keeping the revision just reconciled (the one the
/// daemon falls back to) and the few newest. A failure is logged: it costs disk, not safety.
pub(super) async fn remove_old_checkouts(
    config: &HostConfig,
    credentials: &crate::credentials::Credentials,
    applied: Option<String>,
) {
    let (source, creds, state_dir) = (
        config.source.clone(),
        credentials.clone(),
        config.state_dir(),
    );
    let removed = tokio::task::spawn_blocking(move || {
        crate::revision::remove_old_checkouts(
            source.as_ref(),
            &creds,
            &state_dir,
            applied.as_deref(),
        )
    })
    .await;
    match removed {
        Ok(Ok(names)) if !names.is_empty() => info!(removed = ?names, "removed old checkouts"),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!("removing old checkouts: {e}"),
        Err(e) => warn!("removing old checkouts: task failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_ref_gone_from_the_remote_is_a_missing_ref() {
        let gone = crate::revision::Error::Source(crate::source::Error::RefNotFound {
            url: "https://git.example/ops/stacks.git".to_owned(),
            reference: "branch main".to_owned(),
        });
        assert_eq!(missing_ref(&gone).as_deref(), Some("branch main"));
        let unreachable = crate::revision::Error::Source(crate::source::Error::Git {
            url: "https://git.example/ops/stacks.git".to_owned(),
            action: "fetch",
            message: "connection refused".to_owned(),
        });
        assert_eq!(missing_ref(&unreachable), None);
        assert_eq!(missing_ref(&crate::revision::Error::NoSource), None);
    }
}

//! The daemon's revisions: the newest one fetched and loaded through `crate::revision` on
//! blocking threads, and the last good one — what is reconciled while newer ones fail to fetch,
//! load, render or compile their policies.

use std::sync::Arc;

use tracing::info;

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
    /// Its stacks, stored compactly; shared with the scheduler's view and each reconcile.
    pub stored: Arc<StoredRevision>,
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

/// The desired state of one run: a revision rendered just now, or the stored last good one.
pub enum Desired {
    Fresh(Arc<Vec<RenderedStack>>),
    Stored(Arc<StoredRevision>),
}

impl Desired {
    /// The stacks with their objects (a stored revision is expanded for this run only).
    pub fn expand(self) -> Result<Arc<Vec<RenderedStack>>, crate::stack::stored::ExpandError> {
        match self {
            Desired::Fresh(stacks) => Ok(stacks),
            Desired::Stored(stored) => stored.expand().map(Arc::new),
        }
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

/// The revisions the loop knows.
#[derive(Default)]
pub struct Revisions {
    pub last_good: Option<LastGood>,
    /// Parsed manifests by text, reused by the next revision's render.
    parse_cache: Arc<crate::yaml::ParseCache>,
}

impl Revisions {
    fn last_good_desired(&self) -> Option<Desired> {
        self.last_good
            .as_ref()
            .map(|g| Desired::Stored(Arc::clone(&g.stored)))
    }

    /// Fetches the source and, when it moved, loads the new revision; `mark` is called after
    /// the fetch (the end of the `fetch` phase). A new revision that loads becomes the last good
    /// one (and the scheduler's); one that does not is reported and the last good one stays.
    pub async fn next(
        &mut self,
        config: &HostConfig,
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
        let (profile, creds, renderers, cache, root) = (
            config.profile.clone(),
            credentials.clone(),
            config.renderers.renderers(),
            Arc::clone(&self.parse_cache),
            checkout.root.clone(),
        );
        let loaded = tokio::task::spawn_blocking(move || {
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
            let mut lap = crate::logging::Lap::start("revision");
            let stored = StoredRevision::store(&loaded.stacks);
            lap.log("stored the revision");
            Ok::<_, crate::revision::Error>((loaded, stored))
        })
        .await;
        let (loaded, stored) = match loaded {
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
        let stored = Arc::new(stored);
        *shared.jobs.write().await = Some(JobsState {
            jobs: loaded.jobs,
            desired: Arc::clone(&stored),
            revision: checkout.revision.as_ref().map(|r| r.sha.clone()),
            state_dir: config.state_dir(),
            credentials: credentials.clone(),
            target: super::target(config),
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
            desired: Some(Desired::Fresh(Arc::new(loaded.stacks))),
            errors,
        }
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

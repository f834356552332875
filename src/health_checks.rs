//! Declared health checks: CEL expressions per `apiVersion`/`kind` that decide when a custom
//! resource is healthy, for operators whose status driftless cannot know (Strimzi's `Kafka`,
//! Spark's `SparkApplication`, Crossplane's claims, …). Pure: files in, compiled checks out;
//! a live object in, a `HealthStatus` out.
//!
//! ```yaml
//! apiVersion: driftless.dev/v1alpha1
//! kind: HealthChecks
//! checks:
//!   - apiVersion: kafka.strimzi.io/v1beta2      # or kafka.strimzi.io/* for every version
//!     kind: Kafka
//!     failed: object.?status.?conditions.orValue([]).exists(c, c.type == 'NotReady' && c.status == 'True' && c.reason == 'Failed')
//!     current: object.?status.?conditions.orValue([]).exists(c, c.type == 'Ready' && c.status == 'True')
//!     inProgress: 'true'                           # optional
//!     message: object.?status.?conditions.orValue([]).map(c, c.?message.orValue('')).join('; ')  # optional
//! ```
//!
//! Expressions see one variable, `object` (the live object), and are compiled in the policies'
//! CEL environment. They are evaluated in the order `failed` → `current` → `inProgress`: the first
//! that is true decides; when none is, the object is in progress. An expression that cannot be
//! evaluated (a missing field without `has()` or `.?`) counts as false, and its error is part of
//! the in-progress message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cel::{Env, IdedExpr};
use serde::Deserialize;
use serde_json::Value;

/// The health of one object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "message", rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Progressing(String),
    Failed(String),
}

/// `apiVersion` of a health-checks file.
pub const API_VERSION: &str = "driftless.dev/v1alpha1";
/// `kind` of a health-checks file.
pub const KIND: &str = "HealthChecks";
/// The directory of health-check files, at the repository root (every stack) and beside a
/// stack's `stack.yaml` (that stack only; its checks win over the root's for the same kind).
pub const DIR: &str = "health";

/// Errors loading health checks; each names the file and the check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: {source}")]
    Parse {
        file: PathBuf,
        #[source]
        source: crate::yaml::Error,
    },
    #[error(
        "{file}: expected apiVersion {API_VERSION} and kind {KIND}, found {api_version} {kind}"
    )]
    WrongKind {
        file: PathBuf,
        api_version: String,
        kind: String,
    },
    #[error("{file}: checks[{index}] ({kind}): {field}: {message}")]
    Invalid {
        file: PathBuf,
        index: usize,
        kind: String,
        field: &'static str,
        message: String,
    },
    #[error(
        "{file}: checks[{index}]: a check for {api_version} {kind} is also declared in {other}"
    )]
    Duplicate {
        file: PathBuf,
        index: usize,
        api_version: String,
        kind: String,
        other: PathBuf,
    },
    #[error("cannot build the CEL environment: {0}")]
    Environment(String),
}

/// A health-checks file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    api_version: String,
    kind: String,
    #[serde(default)]
    checks: Vec<RawCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCheck {
    api_version: String,
    kind: String,
    current: String,
    #[serde(default)]
    failed: Option<String>,
    #[serde(default)]
    in_progress: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// One compiled expression and its text (for messages and `validate`).
#[derive(Debug, Clone)]
struct Expression {
    text: String,
    program: Arc<IdedExpr>,
}

/// One compiled check.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// The file that declares it, relative to the repository root.
    pub file: PathBuf,
    /// `group/version`, or `group/*` for every version (`v1`, `*` for the core group).
    pub api_version: String,
    pub kind: String,
    current: Expression,
    failed: Option<Expression>,
    in_progress: Option<Expression>,
    message: Option<Expression>,
}

/// A check as `validate` lists it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The stack it applies to (`None`: every stack).
    pub stack: Option<String>,
    pub api_version: String,
    pub kind: String,
    pub file: PathBuf,
    pub current: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<String>,
}

/// A health-checks file to compile: its path relative to the repository root, its text, and the
/// stack it belongs to (`None` for the repository root's).
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
    pub stack: Option<String>,
}

/// Every declared check of a revision, compiled.
#[derive(Clone)]
pub struct HealthChecks {
    env: Arc<Env>,
    shared: Vec<HealthCheck>,
    per_stack: BTreeMap<String, Vec<HealthCheck>>,
}

impl std::fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecks")
            .field("shared", &self.shared.len())
            .field("per_stack", &self.per_stack.len())
            .finish()
    }
}

impl HealthChecks {
    /// No declared checks.
    pub fn none() -> Result<HealthChecks, Error> {
        HealthChecks::compile(&[])
    }

    /// Parses and compiles `sources`. A broken file, a check without `current`, an expression
    /// that does not compile or refers to anything but `object`, and two checks for one kind at
    /// the same level are errors naming the file.
    pub fn compile(sources: &[Source]) -> Result<HealthChecks, Error> {
        let env =
            crate::expression::environment().map_err(|e| Error::Environment(e.to_string()))?;
        let mut shared: Vec<HealthCheck> = Vec::new();
        let mut per_stack: BTreeMap<String, Vec<HealthCheck>> = BTreeMap::new();
        for source in sources {
            let file: File =
                crate::yaml::parse_one(&source.path, &source.text).map_err(|e| Error::Parse {
                    file: source.path.clone(),
                    source: e,
                })?;
            if file.api_version != API_VERSION || file.kind != KIND {
                return Err(Error::WrongKind {
                    file: source.path.clone(),
                    api_version: file.api_version,
                    kind: file.kind,
                });
            }
            let level = match &source.stack {
                Some(stack) => per_stack.entry(stack.clone()).or_default(),
                None => &mut shared,
            };
            for (index, raw) in file.checks.into_iter().enumerate() {
                let check = compile_check(&env, &source.path, index, raw)?;
                if let Some(other) = level
                    .iter()
                    .find(|c| c.kind == check.kind && c.api_version == check.api_version)
                {
                    return Err(Error::Duplicate {
                        file: source.path.clone(),
                        index,
                        api_version: check.api_version,
                        kind: check.kind,
                        other: other.file.clone(),
                    });
                }
                level.push(check);
            }
        }
        Ok(HealthChecks {
            env: Arc::new(env),
            shared,
            per_stack,
        })
    }

    /// Whether any check is declared.
    pub fn is_empty(&self) -> bool {
        self.shared.is_empty() && self.per_stack.values().all(Vec::is_empty)
    }

    /// The check that applies to an object of `stack` with this `apiVersion` and `kind`: the
    /// stack's own first, then the repository's; an exact version before a `group/*` one.
    pub fn find(&self, stack: &str, api_version: &str, kind: &str) -> Option<&HealthCheck> {
        let own = self
            .per_stack
            .get(stack)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for level in [own, self.shared.as_slice()] {
            let exact = level
                .iter()
                .find(|c| c.kind == kind && c.api_version == api_version);
            let any = || {
                level.iter().find(|c| {
                    c.kind == kind && version_wildcard_matches(&c.api_version, api_version)
                })
            };
            if let Some(c) = exact.or_else(any) {
                return Some(c);
            }
        }
        None
    }

    /// The health of `live` by `check`.
    pub fn evaluate(&self, check: &HealthCheck, live: &Value) -> HealthStatus {
        let object = crate::expression::to_val(live);
        let context = crate::expression::request_context(&self.env, vec![("object", object)]);
        let mut errors = Vec::new();
        let mut holds = |name: &str, e: &Expression| -> bool {
            match crate::expression::execute(&e.program, &context) {
                Ok(cel::Value::Bool(b)) => b,
                Ok(other) => {
                    errors.push(format!("{name}: not a bool but {:?}", other.type_of()));
                    false
                }
                Err(message) => {
                    errors.push(format!("{name}: {message}"));
                    false
                }
            }
        };
        let message = |default: String| -> String {
            check
                .message
                .as_ref()
                .and_then(|m| match crate::expression::execute(&m.program, &context) {
                    Ok(cel::Value::String(s)) if !s.is_empty() => Some(s.to_string()),
                    _ => None,
                })
                .unwrap_or(default)
        };
        if let Some(f) = &check.failed
            && holds("failed", f)
        {
            return HealthStatus::Failed(message(format!(
                "health check of {} ({}): failed: {}",
                check.kind,
                check.file.display(),
                f.text
            )));
        }
        if holds("current", &check.current) {
            return HealthStatus::Healthy;
        }
        if let Some(p) = &check.in_progress
            && holds("inProgress", p)
        {
            return HealthStatus::Progressing(message(format!(
                "in progress by the health check of {} ({})",
                check.kind,
                check.file.display()
            )));
        }
        let mut default = format!(
            "waiting for the health check of {} ({}): current: {}",
            check.kind,
            check.file.display(),
            check.current.text
        );
        if !errors.is_empty() {
            default.push_str(&format!(" ({})", errors.join("; ")));
        }
        HealthStatus::Progressing(message(default))
    }

    /// Every check, for `validate`'s listing.
    pub fn summaries(&self) -> Vec<Summary> {
        let shared = self.shared.iter().map(|c| (None, c));
        let own = self
            .per_stack
            .iter()
            .flat_map(|(s, checks)| checks.iter().map(move |c| (Some(s.clone()), c)));
        shared
            .chain(own)
            .map(|(stack, c)| Summary {
                stack,
                api_version: c.api_version.clone(),
                kind: c.kind.clone(),
                file: c.file.clone(),
                current: c.current.text.clone(),
                failed: c.failed.as_ref().map(|e| e.text.clone()),
                in_progress: c.in_progress.as_ref().map(|e| e.text.clone()),
            })
            .collect()
    }
}

/// `group/*` matches every version of the group; `*` every version of the core group.
fn version_wildcard_matches(pattern: &str, api_version: &str) -> bool {
    let group_of = |v: &str| {
        v.rsplit_once('/')
            .map(|(g, _)| g.to_owned())
            .unwrap_or_default()
    };
    match pattern.strip_suffix("/*") {
        Some(group) => group == group_of(api_version),
        None => pattern == "*" && !api_version.contains('/'),
    }
}

fn compile_check(
    env: &Env,
    file: &Path,
    index: usize,
    raw: RawCheck,
) -> Result<HealthCheck, Error> {
    let invalid = |field: &'static str, message: String| Error::Invalid {
        file: file.to_owned(),
        index,
        kind: raw.kind.clone(),
        field,
        message,
    };
    if raw.kind.is_empty() {
        return Err(invalid("kind", "must not be empty".to_owned()));
    }
    let valid_version = raw.api_version == "*"
        || raw
            .api_version
            .split_once('/')
            .is_some_and(|(g, v)| !g.is_empty() && !v.is_empty() && !v.contains('/'))
        || (!raw.api_version.is_empty() && !raw.api_version.contains('/'));
    if !valid_version {
        return Err(invalid(
            "apiVersion",
            format!(
                "{:?} is not group/version, group/* or a core version",
                raw.api_version
            ),
        ));
    }
    let compile = |field: &'static str, text: &str| -> Result<Expression, Error> {
        let program = crate::expression::compile(env, text).map_err(|m| invalid(field, m))?;
        let unknown: Vec<String> = root_identifiers(program.expression())
            .into_iter()
            .filter(|n| n != "object")
            .collect();
        if !unknown.is_empty() {
            return Err(invalid(
                field,
                format!(
                    "refers to {}: a health check sees only `object`",
                    unknown.join(", ")
                ),
            ));
        }
        Ok(Expression {
            text: text.to_owned(),
            program: Arc::new(crate::expression::optimize(&program)),
        })
    };
    let current = compile("current", &raw.current)?;
    let failed = raw
        .failed
        .as_deref()
        .map(|t| compile("failed", t))
        .transpose()?;
    let in_progress = raw
        .in_progress
        .as_deref()
        .map(|t| compile("inProgress", t))
        .transpose()?;
    let message = raw
        .message
        .as_deref()
        .map(|t| compile("message", t))
        .transpose()?;
    Ok(HealthCheck {
        file: file.to_owned(),
        api_version: raw.api_version,
        kind: raw.kind,
        current,
        failed,
        in_progress,
        message,
    })
}

/// Free identifiers of an expression (comprehension variables excluded).
fn root_identifiers(expr: &IdedExpr) -> Vec<String> {
    use cel::common::ast::{EntryExpr, Expr};
    fn walk(e: &IdedExpr, bound: &mut Vec<String>, out: &mut Vec<String>) {
        match &e.expr {
            Expr::Ident(name) => {
                if !bound.contains(name) && !out.contains(name) {
                    out.push(name.clone());
                }
            }
            Expr::Select(s) => walk(&s.operand, bound, out),
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    walk(t, bound, out);
                }
                c.args.iter().for_each(|a| walk(a, bound, out));
            }
            Expr::Comprehension(c) => {
                walk(&c.iter_range, bound, out);
                walk(&c.accu_init, bound, out);
                let depth = bound.len();
                bound.push(c.iter_var.clone());
                bound.extend(c.iter_var2.clone());
                bound.push(c.accu_var.clone());
                for x in [&c.loop_cond, &c.loop_step, &c.result] {
                    walk(x, bound, out);
                }
                bound.truncate(depth);
            }
            Expr::List(l) => l.elements.iter().for_each(|x| walk(x, bound, out)),
            Expr::Map(cel::common::ast::MapExpr { entries })
            | Expr::Struct(cel::common::ast::StructExpr { entries, .. }) => {
                for entry in entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(m) => {
                            walk(&m.key, bound, out);
                            walk(&m.value, bound, out);
                        }
                        EntryExpr::StructField(f) => walk(&f.value, bound, out),
                    }
                }
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
    let mut out = Vec::new();
    walk(expr, &mut Vec::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KAFKA: &str = "apiVersion: driftless.dev/v1alpha1\nkind: HealthChecks\nchecks:\n- apiVersion: kafka.strimzi.io/v1beta2\n  kind: Kafka\n  failed: \"object.?status.?conditions.orValue([]).exists(c, c.type == 'NotReady' && c.status == 'True' && c.?reason.orValue('') == 'Failed')\"\n  current: \"object.?status.?conditions.orValue([]).exists(c, c.type == 'Ready' && c.status == 'True') && object.?status.?observedGeneration.orValue(0) == object.metadata.generation\"\n  message: \"object.?status.?conditions.orValue([]).map(c, c.?message.orValue('')).filter(m, m != '').join('; ')\"\n- apiVersion: sparkoperator.k8s.io/*\n  kind: SparkApplication\n  failed: \"object.?status.?applicationState.?state.orValue('') in ['FAILED', 'SUBMISSION_FAILED']\"\n  current: \"object.?status.?applicationState.?state.orValue('') in ['RUNNING', 'COMPLETED']\"\n  inProgress: \"true\"\n";

    fn checks(files: &[(&str, &str, Option<&str>)]) -> Result<HealthChecks, Error> {
        let sources: Vec<Source> = files
            .iter()
            .map(|(p, t, s)| Source {
                path: PathBuf::from(p),
                text: (*t).to_owned(),
                stack: s.map(str::to_owned),
            })
            .collect();
        HealthChecks::compile(&sources)
    }

    #[test]
    fn declared_checks_decide_in_order_failed_current_in_progress() {
        let hc = checks(&[("health/operators.yaml", KAFKA, None)]).expect("compiles");
        let kafka = hc
            .find("lambda-kafka", "kafka.strimzi.io/v1beta2", "Kafka")
            .expect("found");
        let ready = |cond: serde_json::Value, observed: i64| json!({"metadata": {"generation": 2}, "status": {"observedGeneration": observed, "conditions": [cond]}});
        let cases = [
            (json!({"metadata": {"generation": 1}}), "progressing"),
            (
                ready(json!({"type": "Ready", "status": "True"}), 2),
                "healthy",
            ),
            (
                ready(json!({"type": "Ready", "status": "True"}), 1),
                "progressing",
            ),
            (
                ready(
                    json!({"type": "NotReady", "status": "True", "reason": "Failed", "message": "broker crashed"}),
                    2,
                ),
                "failed",
            ),
        ];
        for (live, want) in cases {
            let got = hc.evaluate(kafka, &live);
            let state = match &got {
                HealthStatus::Healthy => "healthy",
                HealthStatus::Progressing(_) => "progressing",
                HealthStatus::Failed(_) => "failed",
            };
            assert_eq!(state, want, "{live}: {got:?}");
        }
        let failed = hc.evaluate(
            kafka,
            &ready(
                json!({"type": "NotReady", "status": "True", "reason": "Failed", "message": "broker crashed"}),
                2,
            ),
        );
        assert_eq!(failed, HealthStatus::Failed("broker crashed".to_owned()));

        let spark = hc
            .find(
                "lambda-spark",
                "sparkoperator.k8s.io/v1beta2",
                "SparkApplication",
            )
            .expect("wildcard version");
        assert_eq!(
            hc.evaluate(
                spark,
                &json!({"status": {"applicationState": {"state": "RUNNING"}}})
            ),
            HealthStatus::Healthy
        );
        assert!(matches!(
            hc.evaluate(
                spark,
                &json!({"status": {"applicationState": {"state": "FAILED"}}})
            ),
            HealthStatus::Failed(_)
        ));
        assert!(matches!(
            hc.evaluate(spark, &json!({})),
            HealthStatus::Progressing(_)
        ));
        assert!(hc.find("x", "kafka.strimzi.io/v1", "Kafka").is_none());
        assert_eq!(hc.summaries().len(), 2);
    }

    #[test]
    fn a_stacks_own_check_wins() {
        let own = "apiVersion: driftless.dev/v1alpha1\nkind: HealthChecks\nchecks:\n- {apiVersion: kafka.strimzi.io/*, kind: Kafka, current: 'true'}\n";
        let hc = checks(&[
            ("health/operators.yaml", KAFKA, None),
            ("stack/k/health/own.yaml", own, Some("k")),
        ])
        .expect("compiles");
        let c = hc
            .find("k", "kafka.strimzi.io/v1beta2", "Kafka")
            .expect("found");
        assert_eq!(c.file, Path::new("stack/k/health/own.yaml"));
        let c = hc
            .find("other", "kafka.strimzi.io/v1beta2", "Kafka")
            .expect("found");
        assert_eq!(c.file, Path::new("health/operators.yaml"));
    }

    #[test]
    fn unevaluable_expressions_count_as_false_and_say_why() {
        let text = "apiVersion: driftless.dev/v1alpha1\nkind: HealthChecks\nchecks:\n- {apiVersion: example.com/v1, kind: Widget, current: \"object.status.phase == 'Ready'\"}\n";
        let hc = checks(&[("health/w.yaml", text, None)]).expect("compiles");
        let c = hc.find("s", "example.com/v1", "Widget").expect("found");
        match hc.evaluate(c, &json!({"metadata": {"name": "w"}})) {
            HealthStatus::Progressing(m) => {
                assert!(m.contains("health/w.yaml"), "{m}");
                assert!(m.contains("current"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn broken_files_are_load_errors_naming_the_file() {
        let head = "apiVersion: driftless.dev/v1alpha1\nkind: HealthChecks\nchecks:\n";
        let cases = [
            (
                format!("{head}- {{apiVersion: a/v1, kind: K, current: 'object.'}}\n"),
                "checks[0] (K): current:",
            ),
            (
                format!("{head}- {{apiVersion: a/v1, kind: K, current: 'params.x'}}\n"),
                "refers to params",
            ),
            (
                format!("{head}- {{apiVersion: a/v1, kind: K}}\n"),
                "current",
            ),
            (
                format!("{head}- {{apiVersion: a/v1/x, kind: K, current: 'true'}}\n"),
                "apiVersion",
            ),
            (
                format!(
                    "{head}- {{apiVersion: a/v1, kind: K, current: 'true', failed: 'object.x ==' }}\n"
                ),
                "failed:",
            ),
            (
                format!(
                    "{head}- {{apiVersion: a/v1, kind: K, current: 'true'}}\n- {{apiVersion: a/v1, kind: K, current: 'false'}}\n"
                ),
                "also declared",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\n".to_owned(),
                "expected apiVersion",
            ),
            (
                format!("{head}- {{apiVersion: a/v1, kind: K, current: 'true', extra: 1}}\n"),
                "extra",
            ),
        ];
        for (text, want) in cases {
            let err = checks(&[("health/bad.yaml", &text, None)])
                .expect_err(&text)
                .to_string();
            assert!(err.contains("health/bad.yaml"), "{err}");
            assert!(err.contains(want), "{text}: {err}");
        }
        // Comprehension variables are not free identifiers.
        let ok = format!(
            "{head}- {{apiVersion: a/v1, kind: K, current: \"object.?status.?c.orValue([]).all(x, x.ok)\"}}\n"
        );
        assert!(checks(&[("health/ok.yaml", &ok, None)]).is_ok());
    }
}

//! `driftless policy test`: fixtures that each policy must admit or deny, in the spirit of
//! kaptest and `kyverno test`. Files under `policies/tests/`, one document per policy:
//!
//! ```yaml
//! apiVersion: driftless.dev/v1alpha1
//! kind: PolicyTest
//! policy: driftless-no-privilege-escalation
//! cases:
//!   - name: every container forbids escalation
//!     expect: admit
//!     object: {apiVersion: v1, kind: Pod, ...}
//!   - name: escalation not forbidden
//!     expect: deny
//!     validation: 1                 # the 1-based validation that must fail (optional)
//!     message: allowPrivilegeEscalation   # must appear in the message (optional)
//!     object: {...}
//!     oldObject: {...}              # optional: the request is an UPDATE
//! ```
//!
//! A case is evaluated against the bindings of its policy only. Every policy must have at least
//! one `admit` case and, for each validation, one `deny` case naming it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Error, Finding, PolicySet, Result, RevisionIndex, Subject};
use crate::stack::ObjectKey;

/// The API version and kind of a fixture document.
pub const API_VERSION: &str = "driftless.dev/v1alpha1";
pub const KIND: &str = "PolicyTest";

/// The namespace given to namespaced fixture objects that name none.
pub const DEFAULT_NAMESPACE: &str = "fixtures";

/// What a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Admit,
    Deny,
}

/// One fixture.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub expect: Expect,
    pub validation: Option<usize>,
    pub message: Option<String>,
    pub object: Value,
    pub old_object: Option<Value>,
}

/// A `PolicyTest` document.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyTest {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub policy: String,
    pub cases: Vec<Case>,
    #[serde(skip)]
    pub file: PathBuf,
}

/// The outcome of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub policy: String,
    pub case: String,
    pub file: PathBuf,
    pub expect: Expect,
    pub passed: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    pub findings: Vec<Finding>,
}

/// Every result, plus coverage problems (a policy without fixtures for each validation).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub results: Vec<CaseResult>,
    pub coverage: Vec<String>,
}

impl Report {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    /// Cases that failed plus coverage gaps.
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| !r.passed).count() + self.coverage.len()
    }

    /// The report for people: one line per case, problems indented, a closing count.
    pub fn human(&self) -> String {
        let mut t = String::new();
        for r in &self.results {
            let status = if r.passed { "ok  " } else { "FAIL" };
            t.push_str(&format!(
                "{status} {} — {} (expect {})\n",
                r.policy,
                r.case,
                match r.expect {
                    Expect::Admit => "admit",
                    Expect::Deny => "deny",
                }
            ));
            if let Some(p) = &r.problem {
                t.push_str(&format!("     {p}\n"));
            }
        }
        for c in &self.coverage {
            t.push_str(&format!("FAIL coverage: {c}\n"));
        }
        t.push_str(&format!(
            "{} passed, {} failed\n",
            self.passed(),
            self.failed()
        ));
        t
    }
}

/// Reads the `PolicyTest` documents below `dir`.
pub fn load_tests(root: &Path, dir: &Path) -> Result<Vec<PolicyTest>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut tests = Vec::new();
    for doc in super::load_dir(root, dir, &[])? {
        let mut test: PolicyTest =
            serde_json::from_value(doc.value).map_err(|e| Error::Fixture {
                file: doc.file.clone(),
                message: format!("document {}: not a PolicyTest: {e}", doc.document),
            })?;
        if test.api_version != API_VERSION || test.kind != KIND {
            return Err(Error::Fixture {
                file: doc.file,
                message: format!("document {}: expected {API_VERSION} {KIND}", doc.document),
            });
        }
        test.file = doc.file;
        tests.push(test);
    }
    Ok(tests)
}

/// Everything `driftless policy test` runs for the repository at `root`: its policies (the
/// repository's and every stack's own) and the fixtures of `policies/tests/` and of each
/// stack's `policies/tests/`. Stacks are found without being rendered.
pub fn load_suite(root: &Path) -> Result<(PolicySet, Vec<PolicyTest>)> {
    let stacks = crate::stack::load::stack_files(root).map_err(|e| Error::Fixture {
        file: root.join("stack"),
        message: format!("cannot find the stacks: {e}"),
    })?;
    let set = super::load_with_stacks(
        root,
        stacks
            .iter()
            .map(|(name, file)| (name.as_str(), file.as_path())),
    )?;
    let mut tests = load_tests(root, &root.join(super::POLICY_DIR).join("tests"))?;
    for (_, file) in &stacks {
        tests.extend(load_tests(
            root,
            &super::stack_policy_dir(root, file).join("tests"),
        )?);
    }
    Ok((set, tests))
}

/// Runs `tests` against `set`.
pub fn run(set: &PolicySet, tests: &[PolicyTest]) -> Report {
    let mut results = Vec::new();
    // policy → (has an admit case, validations with a deny case)
    let mut covered: BTreeMap<&str, (bool, Vec<usize>)> = BTreeMap::new();
    for test in tests {
        for case in &test.cases {
            let (findings, problem) = match evaluate_case(set, &test.policy, case) {
                Ok(findings) => {
                    let problem = judge(case, &findings);
                    (findings, problem)
                }
                Err(e) => (Vec::new(), Some(e)),
            };
            if problem.is_none() {
                let entry = covered.entry(test.policy.as_str()).or_default();
                match case.expect {
                    Expect::Admit => entry.0 = true,
                    Expect::Deny => entry.1.extend(
                        findings
                            .iter()
                            .filter(|f| f.denies())
                            .filter_map(|f| f.validation),
                    ),
                }
            }
            results.push(CaseResult {
                policy: test.policy.clone(),
                case: case.name.clone(),
                file: test.file.clone(),
                expect: case.expect,
                passed: problem.is_none(),
                problem,
                findings,
            });
        }
    }
    let mut coverage = Vec::new();
    for policy in set.policy_names() {
        let (admits, denied) = covered.get(policy).cloned().unwrap_or_default();
        if !admits {
            coverage.push(format!("policy {policy} has no passing admit case"));
        }
        for v in 1..=set.validation_count(policy) {
            if !denied.contains(&v) {
                coverage.push(format!(
                    "policy {policy} validation {v} has no passing deny case"
                ));
            }
        }
    }
    Report { results, coverage }
}

/// Why `findings` do not meet `case`'s expectation, if they do not.
fn judge(case: &Case, findings: &[Finding]) -> Option<String> {
    let denials: Vec<&Finding> = findings.iter().filter(|f| f.denies()).collect();
    match case.expect {
        Expect::Admit if denials.is_empty() => None,
        Expect::Admit => Some(format!(
            "expected admit, got: {}",
            denials
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )),
        Expect::Deny => {
            let hit = denials.iter().any(|f| {
                case.validation.is_none_or(|v| f.validation == Some(v))
                    && case
                        .message
                        .as_deref()
                        .is_none_or(|m| f.message.contains(m))
            });
            if hit {
                None
            } else if denials.is_empty() {
                Some("expected deny, but the object was admitted".to_owned())
            } else {
                Some(format!(
                    "expected a denial{}{}, got: {}",
                    case.validation
                        .map(|v| format!(" by validation {v}"))
                        .unwrap_or_default(),
                    case.message
                        .as_deref()
                        .map(|m| format!(" with a message containing {m:?}"))
                        .unwrap_or_default(),
                    denials
                        .iter()
                        .map(|f| f.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ))
            }
        }
    }
}

/// Evaluates one case against the bindings of `policy` only. Secret values are removed first, as
/// rendering removes them from every desired object.
pub fn evaluate_case(
    set: &PolicySet,
    policy: &str,
    case: &Case,
) -> std::result::Result<Vec<Finding>, String> {
    let object = fixture_object(&case.object)?;
    let old = case.old_object.as_ref().map(fixture_object).transpose()?;
    let key = key_of(&object)?;
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let file = PathBuf::from(format!("fixture {:?}", case.name));
    let subject = Subject {
        key: &key,
        api_version: &api_version,
        object: &object,
        file: &file,
        live: old.as_ref(),
    };
    let index = RevisionIndex::new([&object]);
    // A stack-local policy is judged as an object of its stack would be.
    Ok(set
        .check_in(set.policy_stack(policy), &[subject], &index)
        .into_iter()
        .filter(|f| f.policy == policy)
        .collect())
}

/// The object a fixture describes, as rendering would give it: namespace defaulted, Secret
/// values removed.
pub fn fixture_object(object: &Value) -> std::result::Result<Value, String> {
    let mut object = object.clone();
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Err("the fixture object has no metadata".to_owned());
    };
    let (group, _) = super::resources::group_version(&api_version);
    if crate::stack::render::is_namespaced(group, &kind, &BTreeMap::new()) {
        meta.entry("namespace")
            .or_insert_with(|| DEFAULT_NAMESPACE.into());
    } else {
        meta.remove("namespace");
    }
    if kind == "Secret"
        && api_version == "v1"
        && let Some(map) = object.as_object_mut()
    {
        map.remove("data");
        map.remove("stringData");
    }
    Ok(object)
}

fn key_of(object: &Value) -> std::result::Result<ObjectKey, String> {
    let text = |p: &str| object.pointer(p).and_then(Value::as_str);
    let (Some(api_version), Some(kind), Some(name)) =
        (text("/apiVersion"), text("/kind"), text("/metadata/name"))
    else {
        return Err("the fixture object needs apiVersion, kind and metadata.name".to_owned());
    };
    Ok(ObjectKey {
        group: super::resources::group_version(api_version).0.to_owned(),
        kind: kind.to_owned(),
        namespace: text("/metadata/namespace").map(str::to_owned),
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Document;

    const POLICY: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: p}
spec:
  matchConstraints:
    resourceRules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}]
  validations:
    - {expression: "!has(object.data) || !('a' in object.data)", message: "key a is forbidden"}
    - {expression: "!has(object.data) || !('b' in object.data)", message: "key b is forbidden"}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: p}
spec: {policyName: p, validationActions: [Deny]}
"#;

    fn set() -> PolicySet {
        let file = PathBuf::from("policies/p.yaml");
        let docs = crate::yaml::parse_documents(&file, POLICY)
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(i, value)| Document {
                file: file.clone(),
                document: i + 1,
                value,
            })
            .collect();
        PolicySet::from_documents(docs).unwrap()
    }

    fn test(cases: &str) -> PolicyTest {
        let text = format!(
            "apiVersion: driftless.dev/v1alpha1\nkind: PolicyTest\npolicy: p\ncases:\n{cases}"
        );
        crate::yaml::parse_one(Path::new("policies/tests/p.yaml"), &text).unwrap()
    }

    const CM: &str = "apiVersion: v1, kind: ConfigMap, metadata: {name: c}";

    #[test]
    fn cases_pass_fail_and_coverage_is_required() {
        let t = test(&format!(
            "- {{name: clean, expect: admit, object: {{{CM}}}}}\n\
             - {{name: a, expect: deny, validation: 1, message: key a, object: {{{CM}, data: {{a: x}}}}}}\n\
             - {{name: wrong validation, expect: deny, validation: 2, object: {{{CM}, data: {{a: x}}}}}}\n\
             - {{name: wrongly admitted, expect: admit, object: {{{CM}, data: {{a: x}}}}}}\n\
             - {{name: not denied, expect: deny, object: {{{CM}}}}}\n"
        ));
        let report = run(&set(), &[t]);
        let verdicts: Vec<(&str, bool)> = report
            .results
            .iter()
            .map(|r| (r.case.as_str(), r.passed))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("clean", true),
                ("a", true),
                ("wrong validation", false),
                ("wrongly admitted", false),
                ("not denied", false)
            ]
        );
        assert!(
            report.results[2]
                .problem
                .as_deref()
                .is_some_and(|p| p.starts_with(
                    "expected a denial by validation 2, got: denied by policy p validation 1"
                )),
            "{:?}",
            report.results[2].problem
        );
        assert_eq!(
            report.coverage,
            ["policy p validation 2 has no passing deny case"]
        );
        assert_eq!((report.passed(), report.failed()), (2, 4));
        assert!(report.human().ends_with("2 passed, 4 failed\n"));
    }

    #[test]
    fn fixture_secrets_lose_their_values_and_objects_get_a_namespace() {
        let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"k": "czNudGluZWw="}, "stringData": {"k": "s3ntinel"}});
        let o = fixture_object(&secret).unwrap();
        assert_eq!(o["metadata"]["namespace"], DEFAULT_NAMESPACE);
        assert!(o.get("data").is_none() && o.get("stringData").is_none());
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n", "namespace": "x"}});
        assert!(
            fixture_object(&ns).unwrap()["metadata"]
                .get("namespace")
                .is_none()
        );
    }
}

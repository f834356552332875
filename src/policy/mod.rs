//! Policies: Kubernetes ValidatingAdmissionPolicies and their bindings, evaluated client-side
//! (CEL) against the desired objects of a revision before anything is applied.
//!
//! `load` reads `policies/` (the only I/O of the module); `model` is the admissionregistration
//! format (CEL itself is `crate::expression`); `matching` the API server's
//! matchConstraints rules; `eval` the evaluation (match conditions, variables, validations,
//! params, pod-template autogen); `fixtures` the `driftless policy test` format. Evaluation is
//! pure: a `PolicySet` and snapshots in, `Finding`s out.

mod eval;
pub mod fixtures;
mod load;
mod matching;
pub mod model;
mod request;
pub mod resources;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

pub use eval::Subject;
pub use load::{
    POLICY_DIR, PolicyFile, load_dir, load_policies, load_with_stacks, policy_files,
    revision_policy_files, stack_policy_dir,
};
use model::{BindingSpec, ValidationAction};
pub use request::RevisionIndex;

/// Everything that can be wrong with `policies/`, each naming the file and object to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Io {
        path: PathBuf,
        message: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Yaml(#[from] crate::yaml::Error),
    /// A walk or read of the repository refused (loop, depth, count, size, boundary, name).
    #[error(transparent)]
    Walk(#[from] crate::repo_walk::Error),
    #[error("cannot find the stacks and their policies: {0}")]
    Stacks(#[from] Box<crate::stack::Error>),
    #[error("{file} (document {document}): {message}")]
    Invalid {
        file: PathBuf,
        document: usize,
        message: String,
    },
    #[error("{file}: {kind} {name}: {field}: {message}")]
    Expression {
        file: PathBuf,
        kind: &'static str,
        name: String,
        field: String,
        message: String,
    },
    #[error(
        "{file}: {kind} {name} is also defined in {other} (names are unique across policies/ and every stack's policies/)"
    )]
    Duplicate {
        file: PathBuf,
        kind: &'static str,
        name: String,
        other: PathBuf,
    },
    #[error(
        "{file}: binding {binding} names policy {policy:?}, which is not defined (have: {known})"
    )]
    UnknownPolicy {
        file: PathBuf,
        binding: String,
        policy: String,
        known: String,
    },
    #[error("the CEL environment cannot be built: {0}")]
    Environment(String),
    #[error("{file}: {message}")]
    Fixture { file: PathBuf, message: String },
}

/// A convenient result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a policy document came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub file: PathBuf,
    /// 1-based index of the document in its file.
    pub document: usize,
    pub value: Value,
}

/// A compiled expression and its source text.
struct Compiled {
    source: String,
    program: ::cel::Program,
    /// The program's expression as evaluated (`crate::expression::optimize`).
    tree: ::cel::IdedExpr,
    /// For a variable whose value depends only on the request (not on `params` or other
    /// variables): its slot among the set's request-only expressions. Its value is computed once
    /// per request and shared by every policy declaring the same expression (the baseline's
    /// `containers`).
    shared: Option<usize>,
}

/// A compiled `spec.variables` entry.
struct CompiledVariable {
    name: String,
    /// `variables.<name>`, the name it is bound as.
    key: String,
    expression: Compiled,
}

struct CompiledValidation {
    expression: Compiled,
    message: Option<String>,
    message_expression: Option<Compiled>,
    reason: String,
}

struct CompiledPolicy {
    name: String,
    file: PathBuf,
    /// The stack whose `policies/` defines it; `None` for the repository's `policies/`.
    stack: Option<String>,
    spec: model::PolicySpec,
    failure_policy: model::FailurePolicy,
    match_conditions: Vec<(String, Compiled)>,
    /// Whether a match condition uses `variables` (then they are bound before the conditions).
    conditions_use_variables: bool,
    variables: Vec<CompiledVariable>,
    validations: Vec<CompiledValidation>,
}

struct Binding {
    name: String,
    spec: BindingSpec,
    /// The one stack whose objects it applies to (a stack-local binding, or a binding of a
    /// stack-local policy); `None`: every stack's.
    stack: Option<String>,
    /// Index into `PolicySet::policies`.
    policy: usize,
}

/// A param object (any object in `policies/` other than policies and bindings).
struct Param {
    /// Visible to the bindings of this stack only; `None`: to every binding.
    stack: Option<String>,
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    labels: BTreeMap<String, String>,
    value: Box<dyn ::cel::common::value::Val>,
}

/// Policies, bindings and params, compiled once and shared by every evaluation.
pub struct PolicySet {
    env: Arc<::cel::Env>,
    policies: Vec<CompiledPolicy>,
    bindings: Vec<Binding>,
    params: Vec<Param>,
    /// How many distinct request-only variable expressions there are (`Compiled::shared`).
    shared_variables: usize,
}

impl fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySet")
            .field(
                "policies",
                &self.policies.iter().map(|p| &p.name).collect::<Vec<_>>(),
            )
            .field(
                "bindings",
                &self.bindings.iter().map(|b| &b.name).collect::<Vec<_>>(),
            )
            .field("params", &self.params.len())
            .finish()
    }
}

/// One validation that did not admit an object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub policy: String,
    /// The file that defines the policy (`policies/…`, or a stack's own `policies/…`).
    pub policy_file: PathBuf,
    pub binding: String,
    /// 1-based index into the policy's `spec.validations`; absent when a match condition or the
    /// binding's params failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    /// The object, as `Kind/namespace/name`.
    pub object: String,
    /// The file the object came from.
    pub file: PathBuf,
    /// Set when a Pod policy was evaluated against a workload's pod template: the template's path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<String>,
    /// The binding's validationActions: `Deny` blocks the stack's apply.
    pub actions: Vec<ValidationAction>,
    pub reason: String,
    pub message: String,
}

impl Finding {
    /// Whether this finding blocks the apply (its binding's actions include `Deny`).
    pub fn denies(&self) -> bool {
        self.actions.contains(&ValidationAction::Deny)
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.denies() {
            "denied"
        } else if self.actions.contains(&ValidationAction::Warn) {
            "warning"
        } else {
            "audit"
        };
        write!(f, "{verdict} by policy {}", self.policy)?;
        if let Some(n) = self.validation {
            write!(f, " validation {n}")?;
        }
        write!(
            f,
            " ({}, binding {}): {}",
            self.policy_file.display(),
            self.binding,
            self.object
        )?;
        if let Some(t) = &self.pod_template {
            write!(f, " pod template {t}")?;
        }
        write!(f, " ({}): {}", self.file.display(), self.message)
    }
}

impl PolicySet {
    /// An empty set: admits everything.
    pub fn empty() -> Result<PolicySet> {
        PolicySet::from_documents(Vec::new())
    }

    /// Builds a set from parsed documents: policies and bindings of admissionregistration.k8s.io/v1,
    /// every other object a param. Every expression is compiled here.
    pub fn from_documents(documents: Vec<Document>) -> Result<PolicySet> {
        PolicySet::from_scoped(documents, Vec::new())
    }

    /// Builds a set from the repository's documents and, per stack, the documents of that
    /// stack's own `policies/`: those policies, bindings and params apply to that stack's objects
    /// only. Policy and binding names are unique across the whole set.
    pub fn from_scoped(
        global: Vec<Document>,
        stacks: Vec<(String, Vec<Document>)>,
    ) -> Result<PolicySet> {
        let env =
            crate::expression::environment().map_err(|e| Error::Environment(e.to_string()))?;
        let mut set = PolicySet {
            env: Arc::new(env),
            policies: Vec::new(),
            bindings: Vec::new(),
            params: Vec::new(),
            shared_variables: 0,
        };
        let mut shared: BTreeMap<String, usize> = BTreeMap::new();
        let mut bindings = Vec::new();
        let documents = global.into_iter().map(|d| (None, d)).chain(
            stacks
                .into_iter()
                .flat_map(|(stack, docs)| docs.into_iter().map(move |d| (Some(stack.clone()), d))),
        );
        for (stack, doc) in documents {
            let api_version = doc.value.get("apiVersion").and_then(Value::as_str);
            let kind = doc.value.get("kind").and_then(Value::as_str);
            match (api_version, kind) {
                (Some(model::API_VERSION), Some("ValidatingAdmissionPolicy")) => {
                    let mut policy = set.compile_policy(&doc, stack)?;
                    for v in &mut policy.variables {
                        if let Some(slot) = &mut v.expression.shared {
                            let next = shared.len();
                            *slot = *shared.entry(v.expression.source.clone()).or_insert(next);
                        }
                    }
                    set.shared_variables = shared.len();
                    if let Some(other) = set.policies.iter().find(|p| p.name == policy.name) {
                        return Err(Error::Duplicate {
                            file: doc.file,
                            kind: "ValidatingAdmissionPolicy",
                            name: policy.name,
                            other: other.file.clone(),
                        });
                    }
                    set.policies.push(policy);
                }
                (Some(model::API_VERSION), Some("ValidatingAdmissionPolicyBinding")) => {
                    bindings.push((stack, doc));
                }
                _ => set.params.push(param(&doc, stack)?),
            }
        }
        let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (stack, doc) in bindings {
            let binding: model::ValidatingAdmissionPolicyBinding =
                serde_json::from_value(doc.value.clone()).map_err(|e| invalid(&doc, e))?;
            let name = binding.metadata.name.clone();
            if let Some(other) = seen.insert(name.clone(), doc.file.clone()) {
                return Err(Error::Duplicate {
                    file: doc.file,
                    kind: "ValidatingAdmissionPolicyBinding",
                    name,
                    other,
                });
            }
            if binding.spec.validation_actions.is_empty() {
                return Err(invalid(
                    &doc,
                    format!("binding {name}: spec.validationActions must name Deny, Warn or Audit"),
                ));
            }
            if let Some(op) = binding
                .spec
                .match_resources
                .as_ref()
                .and_then(selector_problem)
            {
                return Err(invalid(
                    &doc,
                    format!("binding {name}: unknown selector operator {op:?}"),
                ));
            }
            let Some(policy) = set
                .policies
                .iter()
                .position(|p| p.name == binding.spec.policy_name)
            else {
                return Err(Error::UnknownPolicy {
                    file: doc.file,
                    binding: name,
                    policy: binding.spec.policy_name,
                    known: set
                        .policies
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            let policy_stack = &set.policies[policy].stack;
            let stack = match (stack, policy_stack) {
                (Some(own), Some(other)) if &own != other => {
                    return Err(invalid(
                        &doc,
                        format!(
                            "binding {name} of stack {own} names policy {:?} of stack {other} ({}): a stack's binding may name a repository-wide policy or one of its own stack",
                            binding.spec.policy_name,
                            set.policies[policy].file.display()
                        ),
                    ));
                }
                (own, other) => own.or_else(|| other.clone()),
            };
            set.bindings.push(Binding {
                name,
                spec: binding.spec,
                policy,
                stack,
            });
        }
        Ok(set)
    }

    /// Names of the policies, in load order.
    pub fn policy_names(&self) -> Vec<&str> {
        self.policies.iter().map(|p| p.name.as_str()).collect()
    }

    /// Number of validations of `policy` (0 when there is no such policy).
    pub fn validation_count(&self, policy: &str) -> usize {
        self.policies
            .iter()
            .find(|p| p.name == policy)
            .map_or(0, |p| p.validations.len())
    }

    /// The stack a policy is local to (`None`: repository-wide, or no such policy).
    pub fn policy_stack(&self, policy: &str) -> Option<&str> {
        self.policies
            .iter()
            .find(|p| p.name == policy)
            .and_then(|p| p.stack.as_deref())
    }

    /// Whether the set has no bindings (nothing would be evaluated).
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    fn compile_policy(&self, doc: &Document, stack: Option<String>) -> Result<CompiledPolicy> {
        let policy: model::ValidatingAdmissionPolicy =
            serde_json::from_value(doc.value.clone()).map_err(|e| invalid(doc, e))?;
        let name = policy.metadata.name.clone();
        let Some(constraints) = &policy.spec.match_constraints else {
            return Err(invalid(
                doc,
                format!("policy {name}: spec.matchConstraints is required"),
            ));
        };
        if constraints.resource_rules.is_empty() {
            return Err(invalid(
                doc,
                format!("policy {name}: spec.matchConstraints.resourceRules is required"),
            ));
        }
        if let Some(op) = selector_problem(constraints) {
            return Err(invalid(
                doc,
                format!("policy {name}: unknown selector operator {op:?}"),
            ));
        }
        if policy.spec.validations.is_empty() {
            return Err(invalid(
                doc,
                format!(
                    "policy {name}: spec.validations is empty (driftless evaluates validations only)"
                ),
            ));
        }
        // The API server type-checks `variables.<name>` against the variables declared before
        // the expression (all of them for conditions, validations and messages).
        let declared: Vec<&str> = policy
            .spec
            .variables
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        let compile = |field: String, source: &str, visible: &[&str]| -> Result<Compiled> {
            let expression_error = |message: String| Error::Expression {
                file: doc.file.clone(),
                kind: "ValidatingAdmissionPolicy",
                name: name.clone(),
                field: field.clone(),
                message,
            };
            let program =
                crate::expression::compile(&self.env, source).map_err(expression_error)?;
            if let Some(unknown) = crate::expression::variable_references(&program)
                .into_iter()
                .find(|v| !visible.contains(&v.as_str()))
            {
                let message = if declared.contains(&unknown.as_str()) {
                    format!(
                        "variables.{unknown} is declared after this variable (a variable can use only those before it)"
                    )
                } else {
                    format!(
                        "variables.{unknown} is not defined in spec.variables (have: {})",
                        if declared.is_empty() {
                            "none".to_owned()
                        } else {
                            declared.join(", ")
                        }
                    )
                };
                return Err(expression_error(message));
            }
            Ok(program).map(|program| {
                let refs = program.references();
                let request_only = !refs.has_variable("params") && !refs.has_variable("variables");
                Compiled {
                    source: source.to_owned(),
                    tree: crate::expression::optimize(&program),
                    program,
                    // The slot is assigned by `from_scoped`.
                    shared: request_only.then_some(0),
                }
            })
        };
        let mut match_conditions = Vec::new();
        for (i, c) in policy.spec.match_conditions.iter().enumerate() {
            match_conditions.push((
                c.name.clone(),
                compile(
                    format!("spec.matchConditions[{i}].expression"),
                    &c.expression,
                    &declared,
                )?,
            ));
        }
        let mut variables = Vec::new();
        for (i, v) in policy.spec.variables.iter().enumerate() {
            variables.push(CompiledVariable {
                name: v.name.clone(),
                key: format!("variables.{}", v.name),
                expression: compile(
                    format!("spec.variables[{i}].expression"),
                    &v.expression,
                    &declared[..i],
                )?,
            });
        }
        let mut validations = Vec::new();
        for (i, v) in policy.spec.validations.iter().enumerate() {
            validations.push(CompiledValidation {
                expression: compile(
                    format!("spec.validations[{i}].expression"),
                    &v.expression,
                    &declared,
                )?,
                message: v.message.clone(),
                message_expression: v
                    .message_expression
                    .as_deref()
                    .map(|m| {
                        compile(
                            format!("spec.validations[{i}].messageExpression"),
                            m,
                            &declared,
                        )
                    })
                    .transpose()?,
                reason: v.reason.clone().unwrap_or_else(|| "Invalid".to_owned()),
            });
        }
        Ok(CompiledPolicy {
            name,
            file: doc.file.clone(),
            stack,
            failure_policy: policy.spec.failure_policy.unwrap_or_default(),
            spec: policy.spec,
            conditions_use_variables: match_conditions
                .iter()
                .any(|(_, c)| c.program.references().has_variable("variables")),
            match_conditions,
            variables,
            validations,
        })
    }
}

fn selector_problem(m: &model::MatchResources) -> Option<String> {
    [&m.namespace_selector, &m.object_selector]
        .into_iter()
        .flatten()
        .find_map(|s| s.invalid_operator().map(str::to_owned))
}

fn invalid(doc: &Document, message: impl fmt::Display) -> Error {
    Error::Invalid {
        file: doc.file.clone(),
        document: doc.document,
        message: message.to_string(),
    }
}

fn param(doc: &Document, stack: Option<String>) -> Result<Param> {
    let text = |pointer: &str| doc.value.pointer(pointer).and_then(Value::as_str);
    let (Some(api_version), Some(kind), Some(name)) =
        (text("/apiVersion"), text("/kind"), text("/metadata/name"))
    else {
        return Err(invalid(
            doc,
            "not a policy, binding or param object (apiVersion, kind and metadata.name are required)",
        ));
    };
    if kind == "Secret" {
        return Err(invalid(
            doc,
            format!("Secret {name}: params must not be Secrets (they are read from Git)"),
        ));
    }
    Ok(Param {
        stack,
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        namespace: text("/metadata/namespace").map(str::to_owned),
        name: name.to_owned(),
        labels: model::labels_of(&doc.value),
        value: crate::expression::to_val(&doc.value),
    })
}

#[cfg(test)]
mod tests;

//! The admissionregistration.k8s.io/v1 formats driftless reads: ValidatingAdmissionPolicy,
//! ValidatingAdmissionPolicyBinding and the label selectors they use. Only the fields that
//! decide admission are modelled; unknown fields are ignored as the API server's would be kept.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The API version of policies and bindings.
pub const API_VERSION: &str = "admissionregistration.k8s.io/v1";

/// `metadata` as far as driftless needs it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
}

/// A `ValidatingAdmissionPolicy`.
#[derive(Debug, Clone, Deserialize)]
pub struct ValidatingAdmissionPolicy {
    pub metadata: Metadata,
    pub spec: PolicySpec,
}

/// `ValidatingAdmissionPolicy.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    pub param_kind: Option<ParamKind>,
    pub match_constraints: Option<MatchResources>,
    #[serde(default)]
    pub validations: Vec<Validation>,
    pub failure_policy: Option<FailurePolicy>,
    #[serde(default)]
    pub match_conditions: Vec<NamedExpression>,
    #[serde(default)]
    pub variables: Vec<NamedExpression>,
}

/// `spec.paramKind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParamKind {
    pub api_version: String,
    pub kind: String,
}

/// `failurePolicy`: what an expression error means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum FailurePolicy {
    /// The request is rejected (the API server's default).
    #[default]
    Fail,
    /// The error is ignored.
    Ignore,
}

/// `matchConstraints` of a policy, `matchResources` of a binding.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchResources {
    pub namespace_selector: Option<LabelSelector>,
    pub object_selector: Option<LabelSelector>,
    #[serde(default)]
    pub resource_rules: Vec<ResourceRule>,
    #[serde(default)]
    pub exclude_resource_rules: Vec<ResourceRule>,
}

/// A `NamedRuleWithOperations`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRule {
    #[serde(default)]
    pub resource_names: Vec<String>,
    #[serde(default)]
    pub operations: Vec<String>,
    #[serde(default)]
    pub api_groups: Vec<String>,
    #[serde(default)]
    pub api_versions: Vec<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    pub scope: Option<String>,
}

/// A `matchCondition` or a `variable`: a name and an expression.
#[derive(Debug, Clone, Deserialize)]
pub struct NamedExpression {
    pub name: String,
    pub expression: String,
}

/// One entry of `spec.validations`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    pub expression: String,
    pub message: Option<String>,
    pub message_expression: Option<String>,
    pub reason: Option<String>,
}

/// A `ValidatingAdmissionPolicyBinding`.
#[derive(Debug, Clone, Deserialize)]
pub struct ValidatingAdmissionPolicyBinding {
    pub metadata: Metadata,
    pub spec: BindingSpec,
}

/// `ValidatingAdmissionPolicyBinding.spec`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingSpec {
    pub policy_name: String,
    pub param_ref: Option<ParamRef>,
    pub match_resources: Option<MatchResources>,
    #[serde(default)]
    pub validation_actions: Vec<ValidationAction>,
}

/// `spec.paramRef` of a binding.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParamRef {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub selector: Option<LabelSelector>,
    pub parameter_not_found_action: Option<ParameterNotFoundAction>,
}

/// What a binding does when its parameters are missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ParameterNotFoundAction {
    /// The request is admitted.
    Allow,
    /// The request is denied (the API server's default).
    #[default]
    Deny,
}

/// A binding's `validationActions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
pub enum ValidationAction {
    /// Blocks the stack's apply.
    Deny,
    /// Reported as a warning.
    Warn,
    /// Reported for the audit log.
    Audit,
}

/// A `metav1.LabelSelector`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, Deserialize)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector (an empty selector matches everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => value.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    // Rejected when the policy is loaded.
                    _ => false,
                }
            })
    }

    /// The first operator the API server would reject, if any.
    pub fn invalid_operator(&self) -> Option<&str> {
        self.match_expressions
            .iter()
            .map(|r| r.operator.as_str())
            .find(|op| !matches!(*op, "In" | "NotIn" | "Exists" | "DoesNotExist"))
    }
}

/// The labels of a JSON object (`metadata.labels`), empty when it has none.
pub fn labels_of(object: &serde_json::Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(serde_json::Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

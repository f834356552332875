//! Evaluation: for each desired object (and each workload's pod template), the bindings whose
//! policy matches it; per param, the match conditions, variables and validations, with the
//! API server's failurePolicy and message rules. Objects are converted to CEL values once,
//! and only when some binding matches them.

use std::collections::BTreeMap;
use std::path::Path;

use ::cel::Value as CelValue;
use serde_json::Value;

use super::matching::{Attributes, matches};
use super::model::{FailurePolicy, ParameterNotFoundAction};
use super::request::{Request, RevisionIndex, Source, pod_template_pointer};
use super::resources::group_version;
use super::{Binding, CompiledPolicy, CompiledVariable, Finding, Param, PolicySet};
use crate::expression::{evaluate, execute, shared, to_val};
use crate::stack::{ObjectKey, RenderedStack};

/// From this many subjects on, `check` uses several threads.
const PARALLEL_FROM: usize = 64;
/// At most this many threads.
const MAX_THREADS: usize = 8;

/// One desired object to check, and the live object it would replace (UPDATE) if any.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub key: &'a ObjectKey,
    pub api_version: &'a str,
    pub object: &'a Value,
    /// The file the object came from (for messages).
    pub file: &'a Path,
    /// The live object: the request is an UPDATE with it as `oldObject`; `None`: a CREATE.
    pub live: Option<&'a Value>,
}

/// Who a finding is about.
struct Target<'a> {
    object: String,
    file: &'a Path,
    pod_template: Option<String>,
}

impl PolicySet {
    /// Checks `subjects` against every repository-wide binding. Returns the findings in subject
    /// order.
    pub fn check(&self, subjects: &[Subject<'_>], index: &RevisionIndex) -> Vec<Finding> {
        self.check_in(None, subjects, index)
    }

    /// Checks `subjects`, objects of `stack` (`None`: of no stack in particular), against the
    /// repository-wide bindings and those local to `stack`. Returns the findings in subject
    /// order.
    ///
    /// Subjects are independent, so large sets are split across the machine's cores (scoped
    /// threads; nothing is shared but the compiled policies).
    pub fn check_in(
        &self,
        stack: Option<&str>,
        subjects: &[Subject<'_>],
        index: &RevisionIndex,
    ) -> Vec<Finding> {
        if self.bindings.is_empty() {
            return Vec::new();
        }
        crate::parallel::in_parts(subjects, PARALLEL_FROM, MAX_THREADS, |part| {
            let mut out = Vec::new();
            for s in part {
                self.check_subject(stack, s, index, &mut out);
            }
            out
        })
    }

    /// Checks every object of `stack`; `live` gives the live object of a key, if it exists.
    pub fn check_stack<'a>(
        &self,
        stack: &'a RenderedStack,
        index: &RevisionIndex,
        live: impl Fn(&ObjectKey) -> Option<&'a Value>,
    ) -> Vec<Finding> {
        // Hook Jobs are checked like the stack's objects: a denied hook blocks the stack too.
        let subjects: Vec<Subject<'_>> = stack
            .objects
            .iter()
            .chain(stack.post_sync.iter().map(|h| &h.job))
            .map(|o| Subject {
                key: &o.key,
                api_version: &o.api_version,
                object: &o.object,
                file: &o.place.file,
                live: live(&o.key),
            })
            .collect();
        self.check_in(Some(&stack.name), &subjects, index)
    }

    /// Checks every stack offline (`validate`): every object is a CREATE. Findings per stack,
    /// in stack order.
    pub fn check_offline(&self, stacks: &[RenderedStack]) -> Vec<(String, Vec<Finding>)> {
        let index = RevisionIndex::of_stacks(stacks);
        stacks
            .iter()
            .map(|s| (s.name.clone(), self.check_stack(s, &index, |_| None)))
            .collect()
    }

    fn check_subject(
        &self,
        stack: Option<&str>,
        s: &Subject<'_>,
        index: &RevisionIndex,
        out: &mut Vec<Finding>,
    ) {
        let namespace = s.key.namespace.as_deref();
        let request = Request::new(
            s.api_version,
            &s.key.kind,
            &s.key.name,
            namespace,
            Source::Object(s.object),
            s.live.map(Source::Object),
            index,
        );
        let attributes = request.attributes();
        let target = Target {
            object: s.key.to_string(),
            file: s.file,
            pod_template: None,
        };
        let mut matched_natively = vec![false; self.bindings.len()];
        let in_scope = |b: &Binding| b.stack.is_none() || b.stack.as_deref() == stack;
        for (i, binding) in self.bindings.iter().enumerate() {
            if in_scope(binding) && self.binding_matches(binding, &attributes) {
                matched_natively[i] = true;
                self.run(binding, &request, &target, out);
            }
        }
        // Pod policies protect before the Pod exists: evaluate them against pod templates.
        let Some(pointer) = pod_template_pointer(request.group, request.kind) else {
            return;
        };
        let Some(template) = s.object.pointer(pointer) else {
            return;
        };
        let old_template = s.live.and_then(|l| l.pointer(pointer));
        let pod_request = Request::new(
            "v1",
            "Pod",
            &s.key.name,
            namespace,
            Source::PodTemplate(template),
            old_template.map(Source::PodTemplate),
            index,
        );
        let pod_attributes = pod_request.attributes();
        let target = Target {
            pod_template: Some(pointer.trim_start_matches('/').replace('/', ".")),
            ..target
        };
        for (i, binding) in self.bindings.iter().enumerate() {
            if !matched_natively[i]
                && in_scope(binding)
                && self.binding_matches(binding, &pod_attributes)
            {
                self.run(binding, &pod_request, &target, out);
            }
        }
    }

    fn binding_matches(&self, binding: &Binding, attributes: &Attributes<'_>) -> bool {
        let policy = &self.policies[binding.policy];
        policy
            .spec
            .match_constraints
            .as_ref()
            .is_some_and(|m| matches(m, attributes, true))
            && binding
                .spec
                .match_resources
                .as_ref()
                .is_none_or(|m| matches(m, attributes, false))
    }

    fn params_for(
        &self,
        policy: &CompiledPolicy,
        binding: &Binding,
        namespace: Option<&str>,
    ) -> Vec<&Param> {
        let (Some(kind), Some(r)) = (&policy.spec.param_kind, &binding.spec.param_ref) else {
            return Vec::new();
        };
        let (group, _) = group_version(&kind.api_version);
        let namespaced = crate::stack::render::is_namespaced(group, &kind.kind, &BTreeMap::new());
        let ns = if namespaced {
            r.namespace.as_deref().or(namespace)
        } else {
            None
        };
        self.params
            .iter()
            .filter(|p| p.stack.is_none() || p.stack == binding.stack)
            .filter(|p| p.api_version == kind.api_version && p.kind == kind.kind)
            .filter(|p| !namespaced || p.namespace.as_deref() == ns)
            .filter(|p| match (&r.name, &r.selector) {
                (Some(name), _) => &p.name == name,
                (None, Some(selector)) => selector.matches(&p.labels),
                (None, None) => false,
            })
            .collect()
    }

    fn run(
        &self,
        binding: &Binding,
        request: &Request<'_>,
        target: &Target<'_>,
        out: &mut Vec<Finding>,
    ) {
        let policy = &self.policies[binding.policy];
        let finding = |validation: Option<usize>,
                       expression: Option<&str>,
                       reason: &str,
                       message: String| Finding {
            policy: policy.name.clone(),
            policy_file: policy.file.clone(),
            binding: binding.name.clone(),
            validation,
            expression: expression.map(str::to_owned),
            object: target.object.clone(),
            file: target.file.to_owned(),
            pod_template: target.pod_template.clone(),
            actions: binding.spec.validation_actions.clone(),
            reason: reason.to_owned(),
            message,
        };
        let params: Vec<Option<&Param>> = if policy.spec.param_kind.is_some() {
            let found = self.params_for(policy, binding, request.namespace);
            if found.is_empty() {
                let action = binding
                    .spec
                    .param_ref
                    .as_ref()
                    .and_then(|r| r.parameter_not_found_action)
                    .unwrap_or_default();
                if action == ParameterNotFoundAction::Deny {
                    out.push(finding(None, None, "Invalid", format!(
                        "no params found for binding {} (paramRef of kind {}): add the param object to policies/, or set parameterNotFoundAction: Allow",
                        binding.name,
                        policy.spec.param_kind.as_ref().map_or("", |k| k.kind.as_str()),
                    )));
                }
                return;
            }
            found.into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        let root = request.context(&self.env);
        for param in params {
            let mut scope = root.new_inner_scope();
            scope.add_variable_as_val(
                "params",
                param.map_or_else(|| to_val(&Value::Null), |p| p.value.clone_as_boxed()),
            );
            // Variables are bound after the match conditions, unless those use them.
            let mut failed: Vec<(&str, String)> = Vec::new();
            if policy.conditions_use_variables {
                failed = self.bind_variables(&policy.variables, request, &mut scope);
            }
            // Match conditions: any false → not matched; else any error → failurePolicy.
            let mut error = None;
            let mut matched = true;
            for (name, c) in &policy.match_conditions {
                match execute(&c.tree, &scope) {
                    Ok(CelValue::Bool(true)) => {}
                    Ok(CelValue::Bool(false)) => {
                        matched = false;
                        break;
                    }
                    Ok(other) => {
                        error.get_or_insert(format!(
                            "matchCondition {name}: expected a bool, got {other:?}"
                        ));
                    }
                    Err(e) => {
                        error.get_or_insert(format!("matchCondition {name}: {e}"));
                    }
                }
            }
            if !matched {
                continue;
            }
            if let Some(e) = error {
                if policy.failure_policy == FailurePolicy::Fail {
                    out.push(finding(
                        None,
                        None,
                        "Invalid",
                        format!("failed to evaluate {e}"),
                    ));
                }
                continue;
            }
            if !policy.conditions_use_variables {
                failed = self.bind_variables(&policy.variables, request, &mut scope);
            }
            for (i, v) in policy.validations.iter().enumerate() {
                let failure = match execute(&v.expression.tree, &scope) {
                    Ok(CelValue::Bool(true)) => continue,
                    Ok(CelValue::Bool(false)) => None,
                    Ok(other) => Some(format!("expected a bool, got {other:?}")),
                    Err(e) => Some(variable_error(&v.expression.source, &failed).unwrap_or(e)),
                };
                let message = match failure {
                    None => message(v, &scope),
                    Some(_) if policy.failure_policy == FailurePolicy::Ignore => continue,
                    Some(e) => format!(
                        "expression '{}' resulted in error: {e}",
                        v.expression.source
                    ),
                };
                out.push(finding(
                    Some(i + 1),
                    Some(&v.expression.source),
                    &v.reason,
                    message,
                ));
            }
        }
    }
}

impl PolicySet {
    /// Binds `variables`, in order (each sees those before it), as `variables.<name>` in
    /// `scope`. Request-only values come from, or go to, the request's cache, shared (a
    /// reference count per policy, not a copy). Returns the variables that failed and why.
    fn bind_variables<'v>(
        &self,
        variables: &'v [CompiledVariable],
        request: &Request<'_>,
        scope: &mut ::cel::Context<'_, 'static>,
    ) -> Vec<(&'v str, String)> {
        let mut failed = Vec::new();
        for v in variables {
            let slot = v.expression.shared;
            let cached = slot.and_then(|i| {
                request
                    .shared_variables
                    .borrow()
                    .get(i)
                    .and_then(Option::as_ref)
                    .map(|value| match value {
                        Ok(value) => Ok(value.clone_as_boxed()),
                        Err(e) => Err(e.clone()),
                    })
            });
            let value = cached.unwrap_or_else(|| {
                let value =
                    evaluate(&v.expression.tree, scope).map(|value| shared(value.into_owned()));
                if let Some(i) = slot {
                    let mut cache = request.shared_variables.borrow_mut();
                    if cache.len() < self.shared_variables {
                        cache.resize_with(self.shared_variables, || None);
                    }
                    if let Some(entry) = cache.get_mut(i) {
                        *entry = Some(match &value {
                            Ok(value) => Ok(value.clone_as_boxed()),
                            Err(e) => Err(e.clone()),
                        });
                    }
                }
                value
            });
            match value {
                Ok(value) => scope.add_variable_as_val(v.key.as_str(), value),
                Err(e) => failed.push((v.name.as_str(), e)),
            }
        }
        failed
    }
}

/// The message of a failed validation, as the API server chooses it: a messageExpression that
/// evaluates to a non-empty single-line string, else `message`, else the expression.
fn message(v: &super::CompiledValidation, scope: &::cel::Context<'_, 'static>) -> String {
    if let Some(m) = &v.message_expression
        && let Ok(CelValue::String(s)) = execute(&m.tree, scope)
        && !s.trim().is_empty()
        && !s.contains('\n')
    {
        return s.trim().to_owned();
    }
    v.message
        .clone()
        .unwrap_or_else(|| format!("failed expression: {}", v.expression.source))
}

/// When an expression failed because a variable it uses failed, that variable's error.
fn variable_error(source: &str, failed: &[(&str, String)]) -> Option<String> {
    failed.iter().find_map(|(name, e)| {
        source
            .contains(&format!("variables.{name}"))
            .then(|| format!("variables.{name}: {e}"))
    })
}

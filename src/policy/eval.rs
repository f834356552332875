//! Evaluation: for each desired object (and each workload's pod template), the bindings whose
//! policy matches it; per param, the match conditions, variables and validations, with the
//! API server's failurePolicy and message rules. Objects are converted to CEL values once,
//! and only when some binding matches them.

use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;

use ::cel::Value as CelValue;
use ::cel::common::value::Val;
use serde_json::{Value, json};

use super::cel::{evaluate, execute, map_val, request_context, shared, string_val, to_val};
use super::matching::{Attributes, matches};
use super::model::{FailurePolicy, ParameterNotFoundAction, labels_of};
use super::resources::{crd_plurals, group_version, plural};
use super::{Binding, CompiledPolicy, CompiledVariable, Finding, Param, PolicySet};
use crate::stack::{ObjectKey, RenderedStack};

/// A variable's value, or why it has none.
type VariableValue = Result<Box<dyn Val>, String>;

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

/// What the whole revision contributes to every evaluation: its Namespaces (namespaceSelector,
/// `namespaceObject`) and the plural names its CRDs define.
#[derive(Debug, Default)]
pub struct RevisionIndex {
    namespaces: BTreeMap<String, IndexedNamespace>,
    plurals: BTreeMap<(String, String), String>,
}

/// A Namespace of the revision, with the name label the API server adds: its labels for
/// namespaceSelectors and its CEL value (converted once, shared by every request in it).
#[derive(Debug)]
struct IndexedNamespace {
    labels: BTreeMap<String, String>,
    value: Box<dyn Val>,
}

impl RevisionIndex {
    /// Indexes the desired objects of a revision.
    pub fn new<'a>(objects: impl IntoIterator<Item = &'a Value> + Clone) -> RevisionIndex {
        let namespaces = objects
            .clone()
            .into_iter()
            .filter(|o| {
                o.get("kind").and_then(Value::as_str) == Some("Namespace")
                    && o.get("apiVersion").and_then(Value::as_str) == Some("v1")
            })
            .filter_map(|o| {
                let name = o.pointer("/metadata/name")?.as_str()?.to_owned();
                let mut ns = o.clone();
                add_name_label(&mut ns, &name);
                let indexed = IndexedNamespace {
                    labels: labels_of(&ns),
                    value: to_val(&ns),
                };
                Some((name, indexed))
            })
            .collect();
        RevisionIndex {
            namespaces,
            plurals: crd_plurals(objects),
        }
    }

    /// Indexes every object of every stack.
    pub fn of_stacks(stacks: &[RenderedStack]) -> RevisionIndex {
        let objects: Vec<&Value> = stacks
            .iter()
            .flat_map(|s| s.objects.iter().map(|o| &o.object))
            .collect();
        RevisionIndex::new(objects.iter().copied())
    }
}

/// The labels of a Namespace this revision does not declare: what the API server gives every
/// Namespace, its name label.
fn name_label(name: &str) -> BTreeMap<String, String> {
    [("kubernetes.io/metadata.name".to_owned(), name.to_owned())].into()
}

/// The CEL value of a Namespace this revision does not declare: only its name and name label.
fn undeclared_namespace(name: &str) -> Box<dyn Val> {
    map_val(vec![
        ("apiVersion", string_val("v1")),
        ("kind", string_val("Namespace")),
        (
            "metadata",
            map_val(vec![
                ("name", string_val(name)),
                (
                    "labels",
                    map_val(vec![("kubernetes.io/metadata.name", string_val(name))]),
                ),
            ]),
        ),
    ])
}

/// The API server labels every Namespace with its name.
fn add_name_label(ns: &mut Value, name: &str) {
    if let Some(meta) = ns.get_mut("metadata").and_then(Value::as_object_mut) {
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert("kubernetes.io/metadata.name".into(), name.into());
        }
    }
}

/// Where workload kinds keep their pod template.
fn pod_template_pointer(group: &str, kind: &str) -> Option<&'static str> {
    match (group, kind) {
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job")
        | ("", "ReplicationController") => Some("/spec/template"),
        ("batch", "CronJob") => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// What a request's object is made from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// The object itself.
    Object(&'a Value),
    /// A workload's pod template: the Pod its controller would create (named after the
    /// workload), built without copying the template.
    PodTemplate(&'a Value),
}

impl<'a> Source<'a> {
    /// JSON whose `/metadata/labels` are the object's labels.
    fn json(self) -> &'a Value {
        match self {
            Source::Object(v) | Source::PodTemplate(v) => v,
        }
    }

    fn to_val(self, name: &str, namespace: Option<&str>) -> Box<dyn Val> {
        let template = match self {
            Source::Object(v) => return to_val(v),
            Source::PodTemplate(t) => t,
        };
        let mut metadata: Vec<(&str, Box<dyn Val>)> = template
            .get("metadata")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(k, _)| !matches!(k.as_str(), "name" | "namespace"))
            .map(|(k, v)| (k.as_str(), to_val(v)))
            .collect();
        metadata.push(("name", string_val(name)));
        if let Some(ns) = namespace {
            metadata.push(("namespace", string_val(ns)));
        }
        map_val(vec![
            ("apiVersion", string_val("v1")),
            ("kind", string_val("Pod")),
            ("metadata", map_val(metadata)),
            (
                "spec",
                template
                    .get("spec")
                    .map_or_else(|| map_val(Vec::new()), to_val),
            ),
        ])
    }
}

/// One request as the evaluation sees it: attributes for matching, values converted on demand.
struct Request<'a> {
    group: &'a str,
    version: &'a str,
    kind: &'a str,
    resource: String,
    name: &'a str,
    namespace: Option<&'a str>,
    object: Source<'a>,
    old: Option<Source<'a>>,
    labels: BTreeMap<String, String>,
    old_labels: Option<BTreeMap<String, String>>,
    namespace_labels: Option<Cow<'a, BTreeMap<String, String>>>,
    /// The namespace's object: the revision's (converted once for all requests), or `None` for
    /// a namespace it does not declare (built when needed).
    namespace_object: Option<Option<&'a (dyn Val + 'static)>>,
    /// The request's values converted once, as the root of every evaluation's context.
    context: OnceCell<::cel::Context<'static, 'static>>,
    /// Values of request-only variables, by slot (see `Compiled::shared`).
    shared_variables: RefCell<Vec<Option<VariableValue>>>,
}

impl<'a> Request<'a> {
    fn new(
        api_version: &'a str,
        kind: &'a str,
        name: &'a str,
        namespace: Option<&'a str>,
        object: Source<'a>,
        old: Option<Source<'a>>,
        index: &'a RevisionIndex,
    ) -> Request<'a> {
        let (group, version) = group_version(api_version);
        let declared = namespace.map(|ns| index.namespaces.get(ns));
        let namespace_object = declared.map(|d| d.map(|n| n.value.as_ref()));
        let namespace_labels = match (namespace, declared) {
            (Some(_), Some(Some(n))) => Some(Cow::Borrowed(&n.labels)),
            (Some(ns), _) => Some(Cow::Owned(name_label(ns))),
            (None, _) if kind == "Namespace" && group.is_empty() => {
                let mut l = labels_of(object.json());
                l.insert("kubernetes.io/metadata.name".into(), name.into());
                Some(Cow::Owned(l))
            }
            (None, _) => None,
        };
        Request {
            group,
            version,
            kind,
            resource: plural(group, kind, &index.plurals),
            name,
            namespace,
            object,
            old,
            labels: labels_of(object.json()),
            old_labels: old.map(|o| labels_of(o.json())),
            namespace_labels,
            namespace_object,
            context: OnceCell::new(),
            shared_variables: RefCell::new(Vec::new()),
        }
    }

    fn operation(&self) -> &'static str {
        if self.old.is_some() {
            "UPDATE"
        } else {
            "CREATE"
        }
    }

    fn attributes(&self) -> Attributes<'_> {
        Attributes {
            group: self.group,
            version: self.version,
            resource: &self.resource,
            name: self.name,
            namespace: self.namespace,
            operation: self.operation(),
            labels: &self.labels,
            old_labels: self.old_labels.as_ref(),
            namespace_labels: self.namespace_labels.as_deref(),
        }
    }

    fn context(&self, env: &std::sync::Arc<::cel::Env>) -> &::cel::Context<'static, 'static> {
        self.context.get_or_init(|| {
            let kind = || {
                map_val(vec![
                    ("group", string_val(self.group)),
                    ("version", string_val(self.version)),
                    ("kind", string_val(self.kind)),
                ])
            };
            let resource = || {
                map_val(vec![
                    ("group", string_val(self.group)),
                    ("version", string_val(self.version)),
                    ("resource", string_val(&self.resource)),
                ])
            };
            let request = map_val(vec![
                ("uid", string_val("")),
                ("kind", kind()),
                ("requestKind", kind()),
                ("resource", resource()),
                ("requestResource", resource()),
                ("name", string_val(self.name)),
                ("namespace", string_val(self.namespace.unwrap_or(""))),
                ("operation", string_val(self.operation())),
                (
                    "userInfo",
                    map_val(vec![("username", string_val("driftless"))]),
                ),
                ("dryRun", to_val(&Value::Bool(false))),
            ]);
            request_context(
                env,
                vec![
                    ("object", self.object.to_val(self.name, self.namespace)),
                    (
                        "oldObject",
                        self.old.map_or_else(
                            || to_val(&Value::Null),
                            |o| o.to_val(self.name, self.namespace),
                        ),
                    ),
                    ("request", request),
                    (
                        "namespaceObject",
                        match (self.namespace_object, self.namespace) {
                            (Some(Some(declared)), _) => declared.clone_as_boxed(),
                            (_, Some(ns)) => undeclared_namespace(ns),
                            (_, None) => to_val(&Value::Null),
                        },
                    ),
                ],
            )
        })
    }
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
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, MAX_THREADS);
        if threads == 1 || subjects.len() < PARALLEL_FROM {
            let mut out = Vec::new();
            for s in subjects {
                self.check_subject(stack, s, index, &mut out);
            }
            return out;
        }
        let chunk = subjects.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = subjects
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        let mut out = Vec::new();
                        for s in part {
                            self.check_subject(stack, s, index, &mut out);
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    // A panic in a worker is re-raised here, as it would be without threads.
                    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
                })
                .collect()
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

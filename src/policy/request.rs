//! What one evaluation sees: the revision's index (its Namespaces and the plural names its
//! CRDs define) and one admission request made from a desired object or a workload's pod
//! template, its values converted to CEL on demand.

use std::borrow::Cow;
use std::cell::{OnceCell, RefCell};
use std::collections::BTreeMap;

use ::cel::common::value::Val;
use serde_json::{Value, json};

use super::matching::Attributes;
use super::model::labels_of;
use super::resources::{crd_plurals, group_version, plural};
use crate::expression::{map_val, request_context, string_val, to_val};
use crate::stack::RenderedStack;

/// A variable's value, or why it has none.
pub(super) type VariableValue = Result<Box<dyn Val>, String>;

/// What the whole revision contributes to every evaluation: its Namespaces (namespaceSelector,
/// `namespaceObject`) and the plural names its CRDs define.
#[derive(Debug, Default)]
pub struct RevisionIndex {
    pub(super) namespaces: BTreeMap<String, IndexedNamespace>,
    pub(super) plurals: BTreeMap<(String, String), String>,
}

/// A Namespace of the revision, with the name label the API server adds: its labels for
/// namespaceSelectors and its CEL value (converted once, shared by every request in it).
#[derive(Debug)]
pub(super) struct IndexedNamespace {
    pub(super) labels: BTreeMap<String, String>,
    pub(super) value: Box<dyn Val>,
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
pub(super) fn name_label(name: &str) -> BTreeMap<String, String> {
    [("kubernetes.io/metadata.name".to_owned(), name.to_owned())].into()
}

/// The CEL value of a Namespace this revision does not declare: only its name and name label.
pub(super) fn undeclared_namespace(name: &str) -> Box<dyn Val> {
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
pub(super) fn add_name_label(ns: &mut Value, name: &str) {
    if let Some(meta) = ns.get_mut("metadata").and_then(Value::as_object_mut) {
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert("kubernetes.io/metadata.name".into(), name.into());
        }
    }
}

/// Where workload kinds keep their pod template.
pub(super) fn pod_template_pointer(group: &str, kind: &str) -> Option<&'static str> {
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
pub(super) enum Source<'a> {
    /// The object itself.
    Object(&'a Value),
    /// A workload's pod template: the Pod its controller would create (named after the
    /// workload), built without copying the template.
    PodTemplate(&'a Value),
}

impl<'a> Source<'a> {
    /// JSON whose `/metadata/labels` are the object's labels.
    pub(super) fn json(self) -> &'a Value {
        match self {
            Source::Object(v) | Source::PodTemplate(v) => v,
        }
    }

    pub(super) fn to_val(self, name: &str, namespace: Option<&str>) -> Box<dyn Val> {
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
pub(super) struct Request<'a> {
    pub(super) group: &'a str,
    pub(super) version: &'a str,
    pub(super) kind: &'a str,
    pub(super) resource: String,
    pub(super) name: &'a str,
    pub(super) namespace: Option<&'a str>,
    pub(super) object: Source<'a>,
    pub(super) old: Option<Source<'a>>,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) old_labels: Option<BTreeMap<String, String>>,
    pub(super) namespace_labels: Option<Cow<'a, BTreeMap<String, String>>>,
    /// The namespace's object: the revision's (converted once for all requests), or `None` for
    /// a namespace it does not declare (built when needed).
    pub(super) namespace_object: Option<Option<&'a (dyn Val + 'static)>>,
    /// The request's values converted once, as the root of every evaluation's context.
    pub(super) context: OnceCell<::cel::Context<'static, 'static>>,
    /// Values of request-only variables, by slot (see `Compiled::shared`).
    pub(super) shared_variables: RefCell<Vec<Option<VariableValue>>>,
}

impl<'a> Request<'a> {
    pub(super) fn new(
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

    pub(super) fn operation(&self) -> &'static str {
        if self.old.is_some() {
            "UPDATE"
        } else {
            "CREATE"
        }
    }

    pub(super) fn attributes(&self) -> Attributes<'_> {
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

    pub(super) fn context(
        &self,
        env: &std::sync::Arc<::cel::Env>,
    ) -> &::cel::Context<'static, 'static> {
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

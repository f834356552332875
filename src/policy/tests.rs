//! Evaluation semantics, fixture-driven: policies as YAML text, objects as JSON.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::model::ValidationAction;
use super::{Document, Error, Finding, PolicySet, RevisionIndex, Subject};
use crate::stack::ObjectKey;

fn set(yaml: &str) -> PolicySet {
    try_set(yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn try_set(yaml: &str) -> Result<PolicySet, Error> {
    let file = PathBuf::from("policies/test.yaml");
    let docs = crate::yaml::parse_documents(&file, yaml)?
        .into_iter()
        .enumerate()
        .map(|(i, value)| Document {
            file: file.clone(),
            document: i + 1,
            value,
        })
        .collect();
    PolicySet::from_documents(docs)
}

fn check(set: &PolicySet, object: Value, live: Option<Value>, revision: &[Value]) -> Vec<Finding> {
    let text = |p: &str| object.pointer(p).and_then(Value::as_str).map(str::to_owned);
    let api_version = text("/apiVersion").unwrap();
    let key = ObjectKey {
        group: super::resources::group_version(&api_version).0.to_owned(),
        kind: text("/kind").unwrap(),
        namespace: text("/metadata/namespace"),
        name: text("/metadata/name").unwrap(),
    };
    let subject = Subject {
        key: &key,
        api_version: &api_version,
        object: &object,
        file: Path::new("stack/app/x.yaml"),
        live: live.as_ref(),
    };
    set.check(&[subject], &RevisionIndex::new(revision.iter()))
}

const BINDING: &str = r#"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: p-binding}
spec: {policyName: p, validationActions: [Deny]}
"#;

fn pod(containers: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "app", "labels": {"app": "web"}},
           "spec": {"containers": containers}})
}

const NO_ESCALATION: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: p}
spec:
  matchConstraints:
    resourceRules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [pods]}]
  variables:
    - {name: bad, expression: "object.spec.containers.filter(c, c.?securityContext.?allowPrivilegeEscalation.orValue(true))"}
  validations:
    - expression: "size(variables.bad) == 0"
      messageExpression: "'container ' + variables.bad.map(c, c.name).join(', ') + ' must set allowPrivilegeEscalation: false'"
      reason: Forbidden
"#;

#[test]
fn a_failed_validation_names_policy_object_file_and_message() {
    let s = set(&format!("{NO_ESCALATION}{BINDING}"));
    let good = pod(json!([{"name": "a", "securityContext": {"allowPrivilegeEscalation": false}}]));
    assert_eq!(check(&s, good, None, &[]), vec![]);
    let bad = pod(
        json!([{"name": "a", "securityContext": {"allowPrivilegeEscalation": false}}, {"name": "b"}]),
    );
    let f = check(&s, bad, None, &[]);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].policy, "p");
    assert_eq!(f[0].binding, "p-binding");
    assert_eq!(f[0].validation, Some(1));
    assert_eq!(f[0].object, "Pod/app/web");
    assert_eq!(f[0].reason, "Forbidden");
    assert_eq!(
        f[0].message,
        "container b must set allowPrivilegeEscalation: false"
    );
    assert!(f[0].denies());
    assert_eq!(
        f[0].to_string(),
        "denied by policy p validation 1 (policies/test.yaml, binding p-binding): Pod/app/web (stack/app/x.yaml): container b must set allowPrivilegeEscalation: false"
    );
}

#[test]
fn pod_policies_apply_to_pod_templates_of_workloads() {
    let s = set(&format!("{NO_ESCALATION}{BINDING}"));
    let template =
        json!({"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "pg"}]}});
    let cases = [
        (
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "app"}, "spec": {"template": template}}),
            "Deployment/app/d",
            "spec.template",
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s", "namespace": "app"}, "spec": {"template": template}}),
            "StatefulSet/app/s",
            "spec.template",
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "s", "namespace": "app"}, "spec": {"template": template}}),
            "DaemonSet/app/s",
            "spec.template",
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "s", "namespace": "app"}, "spec": {"template": template}}),
            "ReplicaSet/app/s",
            "spec.template",
        ),
        (
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "app"}, "spec": {"template": template}}),
            "Job/app/j",
            "spec.template",
        ),
        (
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c", "namespace": "app"}, "spec": {"jobTemplate": {"spec": {"template": template}}}}),
            "CronJob/app/c",
            "spec.jobTemplate.spec.template",
        ),
    ];
    for (object, key, path) in cases {
        let f = check(&s, object, None, &[]);
        assert_eq!(f.len(), 1, "{key}: {f:?}");
        assert_eq!(f[0].object, key);
        assert_eq!(f[0].pod_template.as_deref(), Some(path));
        assert!(
            f[0].to_string()
                .contains(&format!("{key} pod template {path}")),
            "{}",
            f[0]
        );
        assert!(f[0].message.contains("container pg"), "{}", f[0].message);
    }
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "app"}, "spec": {}});
    assert_eq!(check(&s, service, None, &[]), vec![]);
}

#[test]
fn operations_follow_the_live_object() {
    let yaml = NO_ESCALATION.replace("[CREATE, UPDATE]", "[UPDATE]");
    let s = set(&format!("{yaml}{BINDING}"));
    let bad = pod(json!([{"name": "a"}]));
    assert_eq!(
        check(&s, bad.clone(), None, &[]),
        vec![],
        "CREATE not matched"
    );
    assert_eq!(
        check(&s, bad.clone(), Some(bad), &[]).len(),
        1,
        "UPDATE matched"
    );
}

#[test]
fn old_object_and_request_are_bound() {
    let s = set(&format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: p}}
spec:
  matchConstraints:
    resourceRules: [{{apiGroups: ["*"], apiVersions: ["*"], operations: ["*"], resources: ["*"]}}]
  validations:
    - expression: "request.operation == 'CREATE' || oldObject.metadata.labels.app == object.metadata.labels.app"
      message: the app label is immutable
    - expression: "request.resource.resource == 'pods' && request.namespace == 'app' && request.name == 'web' && namespaceObject.metadata.labels.team == 'a'"
{BINDING}"#
    ));
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app", "labels": {"team": "a"}}});
    let p = pod(json!([]));
    assert_eq!(
        check(&s, p.clone(), None, std::slice::from_ref(&ns)),
        vec![]
    );
    let mut old = p.clone();
    old["metadata"]["labels"]["app"] = json!("other");
    let f = check(&s, p.clone(), Some(old), std::slice::from_ref(&ns));
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].message, "the app label is immutable");
    let f = check(&s, p, None, &[]);
    assert_eq!(
        f.len(),
        1,
        "namespace not in the revision has only its name label"
    );
    assert!(
        f[0].message
            .contains("resulted in error: No such key: team"),
        "{}",
        f[0].message
    );
}

#[test]
fn selectors_exclusions_and_match_conditions() {
    let policy = |extra: &str| {
        set(&format!(
            r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: p}}
spec:
  matchConstraints:
    resourceRules: [{{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}}]
{extra}
  validations: [{{expression: "false", message: "denied"}}]
{BINDING}"#
        ))
    };
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "app", "labels": {"env": "prod"}}});
    let cases = [
        ("    namespaceSelector: {matchLabels: {env: prod}}", 1),
        ("    namespaceSelector: {matchLabels: {env: dev}}", 0),
        (
            "    objectSelector: {matchExpressions: [{key: app, operator: In, values: [web]}]}",
            1,
        ),
        (
            "    objectSelector: {matchExpressions: [{key: app, operator: DoesNotExist}]}",
            0,
        ),
        (
            "    excludeResourceRules: [{apiGroups: [\"\"], apiVersions: [v1], operations: [CREATE], resources: [pods], resourceNames: [web]}]",
            0,
        ),
        (
            "  matchConditions: [{name: web-only, expression: \"object.metadata.name == 'web'\"}]",
            1,
        ),
        (
            "  matchConditions: [{name: not-web, expression: \"object.metadata.name != 'web'\"}]",
            0,
        ),
        (
            "  matchConditions: [{name: boom, expression: \"object.spec.nothing\"}]",
            1,
        ),
        (
            "  failurePolicy: Ignore\n  matchConditions: [{name: boom, expression: \"object.spec.nothing\"}]",
            0,
        ),
    ];
    for (extra, want) in cases {
        let f = check(
            &policy(extra),
            pod(json!([])),
            None,
            std::slice::from_ref(&ns),
        );
        assert_eq!(f.len(), want, "{extra}: {f:?}");
    }
}

#[test]
fn errors_follow_the_failure_policy_and_the_authorizer_is_absent() {
    let policy = |failure: &str| {
        set(&format!(
            r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: p}}
spec:
  failurePolicy: {failure}
  matchConstraints:
    resourceRules: [{{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}}]
  variables: [{{name: broken, expression: "object.spec.nothing"}}]
  validations:
    - expression: "authorizer.requestResource.check('get').allowed()"
    - expression: "size(variables.broken) == 0"
    - expression: "true"
{BINDING}"#
        ))
    };
    let f = check(&policy("Fail"), pod(json!([])), None, &[]);
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(
        f[0].message.contains("authorizer is not available"),
        "{}",
        f[0].message
    );
    assert!(
        f[1].message.contains("variables.broken"),
        "{}",
        f[1].message
    );
    assert_eq!(check(&policy("Ignore"), pod(json!([])), None, &[]), vec![]);
}

#[test]
fn params_and_validation_actions() {
    let s = set(r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: p}
spec:
  paramKind: {apiVersion: v1, kind: ConfigMap}
  matchConstraints:
    resourceRules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]
  validations:
    - expression: "object.metadata.name in params.data.names.split(',')"
      messageExpression: "'name ' + object.metadata.name + ' is not in ' + params.metadata.name"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: allowed, namespace: policy}
data: {names: "web,api"}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: warn-only}
spec:
  policyName: p
  validationActions: [Warn, Audit]
  paramRef: {name: allowed, namespace: policy, parameterNotFoundAction: Deny}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: missing-param}
spec:
  policyName: p
  validationActions: [Deny]
  paramRef: {name: nowhere, namespace: policy, parameterNotFoundAction: Deny}
  matchResources: {objectSelector: {matchLabels: {strict: "yes"}}}
"#);
    assert_eq!(check(&s, pod(json!([])), None, &[]), vec![]);
    let mut other = pod(json!([]));
    other["metadata"]["name"] = json!("db");
    let f = check(&s, other.clone(), None, &[]);
    assert_eq!(f.len(), 1);
    assert_eq!(
        f[0].actions,
        vec![ValidationAction::Warn, ValidationAction::Audit]
    );
    assert!(!f[0].denies());
    assert_eq!(f[0].message, "name db is not in allowed");
    other["metadata"]["labels"]["strict"] = json!("yes");
    let f = check(&s, other, None, &[]);
    assert_eq!(f.len(), 2);
    assert!(f[1].denies());
    assert!(
        f[1].message
            .starts_with("no params found for binding missing-param"),
        "{}",
        f[1].message
    );
}

#[test]
fn bad_policy_files_are_errors_naming_the_place() {
    let cases = [
        (
            r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: p}
spec:
  matchConstraints: {resourceRules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]}
  validations: [{expression: "object.("}]
"#,
            "policies/test.yaml: ValidatingAdmissionPolicy p: spec.validations[0].expression:",
        ),
        (
            r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: b}
spec: {policyName: nope, validationActions: [Deny]}
"#,
            "binding b names policy \"nope\", which is not defined",
        ),
        (
            r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: p}
spec: {validations: [{expression: "true"}]}
"#,
            "spec.matchConstraints is required",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
            "params must not be Secrets",
        ),
        (
            r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: p}
spec:
  matchConstraints: {resourceRules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]}
  variables: [{name: a, expression: "1"}]
  validations: [{expression: "variables.a == 1 && [1].all(x, x == variables.typo)"}]
"#,
            "policies/test.yaml: ValidatingAdmissionPolicy p: spec.validations[0].expression: variables.typo is not defined in spec.variables (have: a)",
        ),
        (
            r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: p}
spec:
  matchConstraints: {resourceRules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]}
  variables: [{name: a, expression: "variables.b + 1"}, {name: b, expression: "1"}]
  validations: [{expression: "true", messageExpression: "'x' + string(variables.a)"}]
"#,
            "spec.variables[0].expression: variables.b is declared after this variable",
        ),
        (
            r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: p}
spec:
  matchConstraints: {resourceRules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}]}
  validations: [{expression: "true", messageExpression: "variables.missing"}]
"#,
            "spec.validations[0].messageExpression: variables.missing is not defined in spec.variables (have: none)",
        ),
    ];
    for (yaml, want) in cases {
        let e = match try_set(yaml) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(want), "{e}\nwanted: {want}");
    }
}

#[test]
fn crd_plurals_decide_resource_rules() {
    let s = set(&format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: p}}
spec:
  matchConstraints:
    resourceRules: [{{apiGroups: [x.dev], apiVersions: ["*"], operations: [CREATE], resources: [octopodes]}}]
  validations: [{{expression: "false", message: no octopus}}]
{BINDING}"#
    ));
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "octopodes.x.dev"},
        "spec": {"group": "x.dev", "names": {"kind": "Octopus", "plural": "octopodes"}}});
    let obj = json!({"apiVersion": "x.dev/v1", "kind": "Octopus", "metadata": {"name": "o", "namespace": "app"}});
    assert_eq!(
        check(&s, obj.clone(), None, &[]).len(),
        0,
        "guessed plural octopuses"
    );
    assert_eq!(check(&s, obj, None, &[crd]).len(), 1);
}

fn docs(file: &str, yaml: &str) -> Vec<Document> {
    let file = PathBuf::from(file);
    crate::yaml::parse_documents(&file, yaml)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(i, value)| Document {
            file: file.clone(),
            document: i + 1,
            value,
        })
        .collect()
}

fn deny_configmaps(name: &str, message: &str) -> String {
    format!(
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  matchConstraints:
    resourceRules: [{{apiGroups: [""], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [configmaps]}}]
  validations: [{{expression: "false", message: "{message}"}}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec: {{policyName: {name}, validationActions: [Deny]}}
"#
    )
}

fn configmap_subject<'a>(key: &'a ObjectKey, object: &'a Value) -> Subject<'a> {
    Subject {
        key,
        api_version: "v1",
        object,
        file: Path::new("stack/x/cm.yaml"),
        live: None,
    }
}

#[test]
fn stack_local_policies_apply_to_their_stack_only() {
    let set = PolicySet::from_scoped(
        docs(
            "policies/global.yaml",
            &deny_configmaps("global", "global says no"),
        ),
        vec![(
            "app".to_owned(),
            docs(
                "stack/app/policies/local.yaml",
                &deny_configmaps("local", "app says no"),
            ),
        )],
    )
    .unwrap();
    let object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}});
    let key = ObjectKey {
        group: String::new(),
        kind: "ConfigMap".into(),
        namespace: Some("n".into()),
        name: "c".into(),
    };
    let subjects = [configmap_subject(&key, &object)];
    let index = RevisionIndex::new([&object]);
    let names = |stack: Option<&str>| -> Vec<String> {
        set.check_in(stack, &subjects, &index)
            .into_iter()
            .map(|f| f.to_string())
            .collect()
    };
    assert_eq!(
        names(Some("app")),
        [
            "denied by policy global validation 1 (policies/global.yaml, binding global): ConfigMap/n/c (stack/x/cm.yaml): global says no",
            "denied by policy local validation 1 (stack/app/policies/local.yaml, binding local): ConfigMap/n/c (stack/x/cm.yaml): app says no",
        ]
    );
    assert_eq!(names(Some("other")).len(), 1, "another stack: global only");
    assert_eq!(names(None).len(), 1);
    assert_eq!(set.policy_stack("local"), Some("app"));
    assert_eq!(set.policy_stack("global"), None);
}

#[test]
fn stack_local_names_must_not_collide() {
    let e = PolicySet::from_scoped(
        docs("policies/a.yaml", &deny_configmaps("same", "x")),
        vec![(
            "app".to_owned(),
            docs("stack/app/policies/a.yaml", &deny_configmaps("same", "y")),
        )],
    )
    .expect_err("a collision is an error")
    .to_string();
    assert!(
        e.starts_with("stack/app/policies/a.yaml: ValidatingAdmissionPolicy same is also defined in policies/a.yaml"),
        "{e}"
    );
    // A stack's binding may not bind another stack's policy.
    let other = format!(
        "{}---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata: {{name: steal}}\nspec: {{policyName: mine, validationActions: [Deny]}}\n",
        deny_configmaps("theirs", "z")
    );
    let e = PolicySet::from_scoped(
        Vec::new(),
        vec![
            (
                "a".to_owned(),
                docs("stack/a/policies/p.yaml", &deny_configmaps("mine", "m")),
            ),
            ("b".to_owned(), docs("stack/b/policies/p.yaml", &other)),
        ],
    )
    .expect_err("a cross-stack binding is an error")
    .to_string();
    assert!(
        e.contains("binding steal of stack b names policy \"mine\" of stack a"),
        "{e}"
    );
}

#[test]
fn stack_local_params_are_seen_by_their_stack_only() {
    let policy = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: p}
spec:
  paramKind: {apiVersion: v1, kind: ConfigMap}
  matchConstraints:
    resourceRules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}]
  validations: [{expression: "object.metadata.name != params.data.forbidden", messageExpression: "'forbidden by ' + params.metadata.name"}]
"#;
    let binding = |name: &str| {
        format!(
            "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata: {{name: {name}}}\nspec: {{policyName: p, validationActions: [Deny], paramRef: {{name: params, namespace: policy, parameterNotFoundAction: Allow}}}}\n"
        )
    };
    let params = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: params, namespace: policy}\ndata: {forbidden: c}\n";
    let set = PolicySet::from_scoped(
        docs(
            "policies/p.yaml",
            &format!("{policy}---\n{}", binding("global-binding")),
        ),
        vec![(
            "app".to_owned(),
            docs(
                "stack/app/policies/b.yaml",
                &format!("{}---\n{params}", binding("app-binding")),
            ),
        )],
    )
    .unwrap();
    let object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "n"}});
    let key = ObjectKey {
        group: String::new(),
        kind: "ConfigMap".into(),
        namespace: Some("n".into()),
        name: "c".into(),
    };
    let subjects = [configmap_subject(&key, &object)];
    let index = RevisionIndex::new([&object]);
    let app = set.check_in(Some("app"), &subjects, &index);
    assert_eq!(app.len(), 1, "{app:?}");
    assert_eq!(app[0].binding, "app-binding");
    assert_eq!(app[0].message, "forbidden by params");
    assert_eq!(
        set.check_in(Some("other"), &subjects, &index),
        vec![],
        "global binding finds no params: Allow"
    );
}

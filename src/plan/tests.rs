use serde_json::{Value, json};

use super::*;

fn key(group: &str, kind: &str, ns: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey {
        group: group.into(),
        kind: kind.into(),
        namespace: ns.map(Into::into),
        name: name.into(),
    }
}

fn obs(k: ObjectKey, live: Option<Value>, would_be: Option<Value>) -> Observation {
    Observation {
        key: k,
        api_version: "v1".into(),
        live,
        would_be,
    }
}

fn cm(name: &str, data: Value, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv, "uid": "u1", "managedFields": [{"manager": "driftless"}]},
        "data": data})
}

const OWNER: Owner<'static> = Owner {
    stack: "s",
    instance: "prod",
};

/// A candidate whose live object is stack `s`'s of instance `prod` (plus `live`'s metadata).
fn candidate(k: ObjectKey, mut live: Value) -> PruneCandidate {
    live["metadata"]["name"] = json!(k.name.clone());
    live["metadata"]["uid"] = json!(format!("uid-{}", k.name));
    live["metadata"]["labels"]["driftless.dev/stack"] = json!("s");
    live["metadata"]["annotations"]["driftless.dev/instance"] = json!("prod");
    PruneCandidate {
        key: k,
        api_version: "v1".into(),
        live: Some(live),
    }
}

#[test]
fn create_update_and_unchanged() {
    let deploy_live = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "ns", "generation": 3, "resourceVersion": "10"},
        "spec": {"replicas": 1, "progressDeadlineSeconds": 600, "revisionHistoryLimit": 10},
        "status": {"readyReplicas": 1}});
    // The dry-run result carries the same server defaults: no perpetual diff.
    let mut deploy_same = deploy_live.clone();
    deploy_same["metadata"]["resourceVersion"] = json!("10");
    deploy_same["status"] = json!({});
    let mut deploy_scaled = deploy_live.clone();
    deploy_scaled["spec"]["replicas"] = json!(2);
    let observations = vec![
        obs(
            key("apps", "Deployment", Some("ns"), "web"),
            Some(deploy_live.clone()),
            Some(deploy_same),
        ),
        obs(
            key("", "ConfigMap", Some("ns"), "new"),
            None,
            Some(cm("new", json!({"a": "1"}), "1")),
        ),
        obs(
            key("apps", "Deployment", Some("ns"), "api"),
            Some(deploy_live.clone()),
            Some(deploy_scaled),
        ),
        obs(
            key("", "ConfigMap", Some("ns"), "cached"),
            Some(cm("cached", json!({}), "5")),
            None,
        ),
    ];
    let plan = plan_stack(OWNER, &observations, &[], 4, PruneSettings::default());
    let actions: Vec<(String, Action)> = plan
        .changes
        .iter()
        .map(|c| (c.key.to_string(), c.action))
        .collect();
    assert_eq!(
        actions,
        [
            ("ConfigMap/ns/new".to_owned(), Action::Create),
            ("ConfigMap/ns/cached".to_owned(), Action::Unchanged),
            ("Deployment/ns/web".to_owned(), Action::Unchanged),
            ("Deployment/ns/api".to_owned(), Action::Update),
        ]
    );
    let update = &plan.changes[3].diff;
    assert!(update.contains("--- live/Deployment/ns/api"), "{update}");
    assert!(
        update.contains("-  replicas: 1\n+  replicas: 2\n"),
        "{update}"
    );
    assert!(
        !update.contains("resourceVersion") && !update.contains("readyReplicas"),
        "{update}"
    );
    let create = &plan.changes[0].diff;
    assert!(
        create.contains("+data:\n+  a: '1'\n") || create.contains("+data:\n+  a: \"1\"\n"),
        "{create}"
    );
    assert!(!create.contains("managedFields"), "{create}");
    assert_eq!(plan.counts(), (1, 1, 0));
    assert!(plan.has_changes());
}

#[test]
fn secret_diffs_show_changed_keys_never_values() {
    let live = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "ns"},
        "data": {"password": "czNudGluZWwtb2xk", "user": "YWRtaW4="}});
    let mut after = live.clone();
    after["data"]["password"] = json!("czNudGluZWwtbmV3");
    let plan = plan_stack(
        OWNER,
        &[
            obs(
                key("", "Secret", Some("ns"), "db"),
                Some(live.clone()),
                Some(after),
            ),
            obs(
                key("", "Secret", Some("ns"), "new"),
                None,
                Some(live.clone()),
            ),
        ],
        &[candidate(key("", "Secret", Some("ns"), "old"), live)],
        3,
        PruneSettings::default(),
    );
    let update = &plan
        .changes
        .iter()
        .find(|c| c.key.name == "db")
        .unwrap()
        .diff;
    assert!(
        update.contains("-  password: '*** (before, masked)'")
            || update.contains("-  password: \"*** (before, masked)\""),
        "{update}"
    );
    assert!(
        !update.contains("user:")
            || !update
                .lines()
                .any(|l| l.starts_with(['-', '+']) && l.contains("user")),
        "{update}"
    );
    let all = serde_json::to_string(&plan).unwrap();
    for value in ["czNudGluZWw", "YWRtaW4="] {
        assert!(!all.contains(value), "{value} leaked: {all}");
    }
}

#[test]
fn prune_gates() {
    let ns_key = |n: &str| key("", "ConfigMap", Some("ns"), n);
    let protected = json!({"metadata": {"annotations": {"driftless.dev/prune": "disabled"}}});
    let candidates = vec![
        candidate(ns_key("a"), json!({"metadata": {}})),
        candidate(ns_key("keep"), protected),
        candidate(key("", "Namespace", None, "data"), json!({"metadata": {}})),
        candidate(
            key("", "PersistentVolumeClaim", Some("ns"), "pvc"),
            json!({"metadata": {}}),
        ),
        PruneCandidate {
            key: ns_key("gone"),
            api_version: "v1".into(),
            live: None,
        },
    ];
    // 2 real prunes (a, gone) of an inventory of 10: allowed.
    let plan = plan_stack(OWNER, &[], &candidates, 10, PruneSettings::default());
    let pruned: Vec<String> = plan.changes.iter().map(|c| c.key.name.clone()).collect();
    assert_eq!(pruned, ["gone", "a"], "reverse order");
    let kept: Vec<(String, String)> = plan
        .kept
        .iter()
        .map(|k| (k.key.name.clone(), k.reason.clone()))
        .collect();
    assert_eq!(
        kept[0],
        (
            "keep".to_owned(),
            "annotation driftless.dev/prune: disabled".to_owned()
        )
    );
    assert_eq!(kept[1].0, "data");
    assert_eq!(kept[2].0, "pvc");
    assert!(plan.prune_refused.is_none());

    // The same 2 prunes of an inventory of 3 exceed 50 %: refused as a whole.
    let plan = plan_stack(OWNER, &[], &candidates, 3, PruneSettings::default());
    assert_eq!(plan.counts().2, 0, "nothing pruned");
    let msg = plan.prune_refused.as_deref().expect("refused");
    assert!(
        msg.contains("refusing to prune 2 of 3 objects (67 % > 50 %)")
            && msg.contains("--allow-mass-prune"),
        "{msg}"
    );

    let allow = PruneSettings {
        allow_mass_prune: true,
        include_namespaces_and_volumes: true,
        ..PruneSettings::default()
    };
    let plan = plan_stack(OWNER, &[], &candidates, 3, allow);
    let pruned: Vec<String> = plan.changes.iter().map(|c| c.key.to_string()).collect();
    // Reverse apply order (stable within a rank, reversed): the Namespace last.
    assert_eq!(
        pruned,
        [
            "ConfigMap/ns/gone",
            "PersistentVolumeClaim/ns/pvc",
            "ConfigMap/ns/a",
            "Namespace/data"
        ]
    );

    let off = PruneSettings {
        enabled: false,
        ..PruneSettings::default()
    };
    let plan = plan_stack(OWNER, &[], &candidates, 10, off);
    assert_eq!(plan.counts().2, 0);
    assert!(
        plan.kept
            .iter()
            .all(|k| k.reason == "prune is disabled for this stack")
    );
}

#[test]
fn candidates_that_are_not_the_owners_are_kept() {
    let mine = candidate(
        key("", "ConfigMap", Some("ns"), "mine"),
        json!({"metadata": {}}),
    );
    let foreign = |name: &str, labels: Value, annotations: Value| PruneCandidate {
        key: key("", "ConfigMap", Some("ns"), name),
        api_version: "v1".into(),
        live: Some(
            json!({"metadata": {"name": name, "uid": "u", "labels": labels, "annotations": annotations}}),
        ),
    };
    let candidates = vec![
        mine,
        foreign("victim", json!({}), json!({})),
        foreign(
            "other-stack",
            json!({"driftless.dev/stack": "t"}),
            json!({"driftless.dev/instance": "prod"}),
        ),
        foreign(
            "other-instance",
            json!({"driftless.dev/stack": "s"}),
            json!({"driftless.dev/instance": "dev"}),
        ),
        foreign("unmarked", json!({"driftless.dev/stack": "s"}), json!({})),
    ];
    let plan = plan_stack(OWNER, &[], &candidates, 100, PruneSettings::default());
    let pruned: Vec<&str> = plan.changes.iter().map(|c| c.key.name.as_str()).collect();
    assert_eq!(pruned, ["mine"]);
    let kept: Vec<(&str, &str)> = plan
        .kept
        .iter()
        .map(|k| (k.key.name.as_str(), k.reason.as_str()))
        .collect();
    assert_eq!(
        kept,
        [
            (
                "victim",
                "not managed by this instance: no label driftless.dev/stack"
            ),
            (
                "other-stack",
                "not managed by this instance: label driftless.dev/stack is \"t\""
            ),
            (
                "other-instance",
                "not managed by this instance: annotation driftless.dev/instance is \"dev\""
            ),
            (
                "unmarked",
                "not managed by this instance: no annotation driftless.dev/instance"
            ),
        ]
    );
}

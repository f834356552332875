//! Kinds → plural resource names, offline: a table of Kubernetes' own kinds, the revision's CRDs,
//! and otherwise the API machinery's own guess (lower case, `-s`/`-es`/`-ies`). Policies match
//! resources by plural name, as the API server does.

use std::collections::BTreeMap;

use serde_json::Value;

/// Kinds whose plural is not the regular guess, or that are common enough to list anyway.
const PLURALS: &[(&str, &str)] = &[
    ("Pod", "pods"),
    ("Service", "services"),
    ("ConfigMap", "configmaps"),
    ("Secret", "secrets"),
    ("Namespace", "namespaces"),
    ("Endpoints", "endpoints"),
    ("PersistentVolumeClaim", "persistentvolumeclaims"),
    ("PersistentVolume", "persistentvolumes"),
    ("ServiceAccount", "serviceaccounts"),
    ("Deployment", "deployments"),
    ("StatefulSet", "statefulsets"),
    ("DaemonSet", "daemonsets"),
    ("ReplicaSet", "replicasets"),
    ("ReplicationController", "replicationcontrollers"),
    ("Job", "jobs"),
    ("CronJob", "cronjobs"),
    ("Ingress", "ingresses"),
    ("IngressClass", "ingressclasses"),
    ("NetworkPolicy", "networkpolicies"),
    ("PodDisruptionBudget", "poddisruptionbudgets"),
    ("HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    ("StorageClass", "storageclasses"),
    ("PriorityClass", "priorityclasses"),
    ("ResourceQuota", "resourcequotas"),
    ("LimitRange", "limitranges"),
    ("CustomResourceDefinition", "customresourcedefinitions"),
    ("ValidatingAdmissionPolicy", "validatingadmissionpolicies"),
    (
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
    ),
];

/// The plural resource names the revision's CRDs define, by (group, kind).
pub fn crd_plurals<'a>(
    objects: impl IntoIterator<Item = &'a Value>,
) -> BTreeMap<(String, String), String> {
    objects
        .into_iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition"))
        .filter_map(|o| {
            Some((
                (
                    o.pointer("/spec/group")?.as_str()?.to_owned(),
                    o.pointer("/spec/names/kind")?.as_str()?.to_owned(),
                ),
                o.pointer("/spec/names/plural")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// The plural resource name of `group`/`kind`.
pub fn plural(group: &str, kind: &str, crds: &BTreeMap<(String, String), String>) -> String {
    if let Some(p) = crds.get(&(group.to_owned(), kind.to_owned())) {
        return p.clone();
    }
    if let Some((_, p)) = PLURALS.iter().find(|(k, _)| *k == kind) {
        return (*p).to_owned();
    }
    // As k8s.io/apimachinery's UnsafeGuessKindToResource.
    let lower = kind.to_ascii_lowercase();
    if lower.ends_with('s') {
        format!("{lower}es")
    } else if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    }
}

/// Splits `apiVersion` into group and version.
pub fn group_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plurals_come_from_the_table_the_crds_or_the_guess() {
        let crd = json!({"kind": "CustomResourceDefinition", "spec": {"group": "x.dev",
            "names": {"kind": "Octopus", "plural": "octopodes"}}});
        let crds = crd_plurals([&crd]);
        assert_eq!(plural("x.dev", "Octopus", &crds), "octopodes");
        assert_eq!(plural("networking.k8s.io", "Ingress", &crds), "ingresses");
        assert_eq!(plural("", "Endpoints", &crds), "endpoints");
        assert_eq!(plural("x.dev", "Policy", &crds), "policies");
        assert_eq!(plural("x.dev", "Bus", &crds), "buses");
        assert_eq!(plural("x.dev", "Widget", &crds), "widgets");
        assert_eq!(group_version("apps/v1"), ("apps", "v1"));
        assert_eq!(group_version("v1"), ("", "v1"));
    }
}

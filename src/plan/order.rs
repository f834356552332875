//! Apply order (DESIGN.md §3): Namespaces and CRDs first, cluster-scoped RBAC and policy next,
//! then namespaced plumbing, then workloads, custom resources, and admission webhooks last (a
//! webhook applied before its backend would block everything after it). Prunes run in reverse.

use super::PlannedChange;

/// Rank of a kind in the apply order; lower applies first.
pub fn apply_rank(group: &str, kind: &str) -> u8 {
    match (group, kind) {
        ("", "Namespace") => 0,
        ("apiextensions.k8s.io", "CustomResourceDefinition") => 1,
        ("scheduling.k8s.io", "PriorityClass")
        | ("storage.k8s.io", "StorageClass")
        | ("node.k8s.io", "RuntimeClass") => 2,
        ("rbac.authorization.k8s.io", "ClusterRole" | "ClusterRoleBinding") => 3,
        ("", "ServiceAccount" | "ResourceQuota" | "LimitRange") => 4,
        ("rbac.authorization.k8s.io", "Role" | "RoleBinding") => 4,
        ("networking.k8s.io", "NetworkPolicy") | ("policy", "PodDisruptionBudget") => 5,
        ("", "ConfigMap" | "Secret" | "PersistentVolume" | "PersistentVolumeClaim") => 6,
        ("", "Service") => 7,
        ("apps", _) | ("batch", _) | ("", "Pod" | "ReplicationController") | ("autoscaling", _) => {
            8
        }
        ("networking.k8s.io", "Ingress" | "IngressClass") => 9,
        (
            "admissionregistration.k8s.io",
            "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding",
        ) => 11,
        ("admissionregistration.k8s.io", _) | ("apiregistration.k8s.io", "APIService") => 12,
        (g, _) if g.is_empty() || g.ends_with(".k8s.io") || !g.contains('.') => 9,
        // Custom resources: after everything built in, so their CRDs and operators exist.
        _ => 10,
    }
}

/// Sorts changes by apply rank, keeping file order within a rank.
pub fn sort_for_apply(changes: &mut [PlannedChange]) {
    // Cached: the rank is a string match, and a sort asks for it n·log n times.
    changes.sort_by_cached_key(|c| apply_rank(&c.key.group, &c.key.kind));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_follow_the_design_order() {
        let order = [
            ("", "Namespace"),
            ("apiextensions.k8s.io", "CustomResourceDefinition"),
            ("rbac.authorization.k8s.io", "ClusterRole"),
            ("", "ServiceAccount"),
            ("", "ConfigMap"),
            ("", "Service"),
            ("apps", "Deployment"),
            ("kafka.strimzi.io", "Kafka"),
            (
                "admissionregistration.k8s.io",
                "ValidatingWebhookConfiguration",
            ),
        ];
        let ranks: Vec<u8> = order.iter().map(|(g, k)| apply_rank(g, k)).collect();
        let mut sorted = ranks.clone();
        sorted.sort();
        assert_eq!(ranks, sorted, "{order:?}");
        assert!(
            ranks.windows(2).all(|w| w[0] < w[1]),
            "strictly ordered: {ranks:?}"
        );
    }
}

//! The benchmark's objects: a realistic mix of 21 kinds, many of them written to by controllers
//! (status of Deployments, StatefulSets, Jobs, CronJobs, PodDisruptionBudgets, HPAs without
//! metrics, ResourceQuotas, PVCs), as one driftless stack and as plain manifests for kubectl.

use std::collections::BTreeMap;
use std::path::Path;

/// Objects of each kind in every block of 100 (one namespace per block).
pub const MIX: [(&str, usize); 21] = [
    ("ConfigMap", 20),
    ("Secret", 8),
    ("ServiceAccount", 8),
    ("Service", 6),
    ("Deployment", 5),
    ("StatefulSet", 2),
    ("Job", 2),
    ("CronJob", 2),
    ("Role", 4),
    ("RoleBinding", 4),
    ("NetworkPolicy", 4),
    ("PodDisruptionBudget", 3),
    ("HorizontalPodAutoscaler", 3),
    ("Ingress", 3),
    ("LimitRange", 1),
    ("ResourceQuota", 1),
    ("PersistentVolumeClaim", 3),
    ("PriorityClass", 1),
    ("ClusterRole", 2),
    ("EndpointSlice", 3),
    ("Widget", 15),
];

/// The resources (plural names) of the mix, and Namespaces: what the request counts cover.
pub const RESOURCES: [&str; 22] = [
    "namespaces",
    "configmaps",
    "secrets",
    "serviceaccounts",
    "services",
    "deployments",
    "statefulsets",
    "jobs",
    "cronjobs",
    "roles",
    "rolebindings",
    "networkpolicies",
    "poddisruptionbudgets",
    "horizontalpodautoscalers",
    "ingresses",
    "limitranges",
    "resourcequotas",
    "persistentvolumeclaims",
    "priorityclasses",
    "clusterroles",
    "endpointslices",
    "widgets",
];

/// Label on every object, for cleaning up the cluster-scoped ones.
pub const RUN_LABEL: &str = "bench-run";

/// Which variant of the mix.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// All 21 kinds. PVCs name a StorageClass that does not exist: they stay Pending (and never
    /// take one of the test environment's volumes).
    Full,
    /// For the daemon, which waits for health: ConfigMaps instead of the PVCs (a Pending PVC
    /// never becomes healthy).
    Daemon,
}

const CRD_KIND: &str = "Widget";

/// The kind of the object at `slot` (0..100) of a block.
fn kind_at(slot: usize, mix: Mix) -> (&'static str, usize) {
    let mut start = 0;
    for (kind, count) in MIX {
        if slot < start + count {
            let kind = match (kind, mix) {
                ("PersistentVolumeClaim", Mix::Daemon) => "ConfigMap",
                _ => kind,
            };
            return (kind, slot - start);
        }
        start += count;
    }
    (CRD_KIND, slot)
}

/// The index of the first object of `kind` in the block starting at `base`.
fn first_of(kind: &str, base: usize) -> usize {
    let mut start = 0;
    for (k, count) in MIX {
        if k == kind {
            return base + start;
        }
        start += count;
    }
    base
}

/// Writes N objects as a driftless stack (`<dir>/stack/bench/…`) and as plain manifests for
/// kubectl (`<dir>/kubectl/…`), one namespace `<prefix>-<block>` per 100 objects. The first
/// `changed` ConfigMaps (in index order) carry another value: the "1 % changed" revision.
pub fn generate(dir: &Path, prefix: &str, n: usize, changed: usize, mix: Mix) {
    assert_eq!(
        MIX.iter().map(|(_, c)| c).sum::<usize>(),
        100,
        "a block is 100"
    );
    let mut docs: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for block in 0..n.div_ceil(100) {
        docs.entry("00-namespaces").or_default().push(format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {prefix}-{block}}}\n"
        ));
    }
    let mut configmaps = 0;
    for i in 0..n {
        let (block, slot) = (i / 100, i % 100);
        let base = block * 100;
        let ns = format!("{prefix}-{block}");
        let (kind, k) = kind_at(slot, mix);
        let meta = |name: String| format!("metadata: {{name: {name}, namespace: {ns}}}");
        let app = format!("app-{}", first_of("Deployment", base));
        let svc = format!("svc-{}", first_of("Service", base));
        let (file, doc) = match kind {
            "ConfigMap" => {
                let value = if configmaps < changed {
                    "changed"
                } else {
                    "original"
                };
                configmaps += 1;
                (
                    "20-configmaps",
                    format!(
                        "apiVersion: v1\nkind: ConfigMap\n{}\ndata: {{value: {value}, index: \"{i}\"}}\n",
                        meta(format!("cm-{i}"))
                    ),
                )
            }
            "Secret" => (
                "20-secrets",
                format!(
                    "apiVersion: v1\nkind: Secret\n{}\nstringData: {{token: bench-{i}}}\n",
                    meta(format!("secret-{i}"))
                ),
            ),
            "ServiceAccount" => (
                "10-serviceaccounts",
                format!(
                    "apiVersion: v1\nkind: ServiceAccount\n{}\n",
                    meta(format!("sa-{i}"))
                ),
            ),
            "Service" => (
                "30-services",
                format!(
                    "apiVersion: v1\nkind: Service\n{}\nspec:\n  selector: {{app: {app}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n",
                    meta(format!("svc-{i}"))
                ),
            ),
            // The first of each block runs one pod (its controller and KWOK's write status);
            // the others are scaled to zero (their controller still writes status once).
            "Deployment" => (
                "40-deployments",
                format!(
                    "apiVersion: apps/v1\nkind: Deployment\n{}\nspec:\n  replicas: {}\n  selector: {{matchLabels: {{app: app-{i}}}}}\n  template:\n    metadata: {{labels: {{app: app-{i}}}}}\n    spec: {{containers: [{{name: app, image: \"registry.local/app:1.0.{}\"}}]}}\n",
                    meta(format!("app-{i}")),
                    u8::from(k == 0),
                    i % 7
                ),
            ),
            "StatefulSet" => (
                "40-statefulsets",
                format!(
                    "apiVersion: apps/v1\nkind: StatefulSet\n{}\nspec:\n  replicas: 0\n  serviceName: {svc}\n  selector: {{matchLabels: {{app: db-{i}}}}}\n  template:\n    metadata: {{labels: {{app: db-{i}}}}}\n    spec: {{containers: [{{name: db, image: registry.local/db:1}}]}}\n",
                    meta(format!("db-{i}"))
                ),
            ),
            // Runs one pod to completion (KWOK completes Job pods).
            "Job" => (
                "40-jobs",
                format!(
                    "apiVersion: batch/v1\nkind: Job\n{}\nspec:\n  backoffLimit: 0\n  template:\n    spec: {{restartPolicy: Never, containers: [{{name: job, image: registry.local/job:1}}]}}\n",
                    meta(format!("job-{i}"))
                ),
            ),
            "CronJob" => (
                "40-cronjobs",
                format!(
                    "apiVersion: batch/v1\nkind: CronJob\n{}\nspec:\n  schedule: \"0 3 * * *\"\n  suspend: true\n  jobTemplate: {{spec: {{template: {{spec: {{restartPolicy: Never, containers: [{{name: job, image: registry.local/job:1}}]}}}}}}}}\n",
                    meta(format!("cron-{i}"))
                ),
            ),
            "Role" => (
                "10-roles",
                format!(
                    "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n{}\nrules: [{{apiGroups: [\"\"], resources: [configmaps], verbs: [get, list]}}]\n",
                    meta(format!("role-{i}"))
                ),
            ),
            "RoleBinding" => (
                "10-rolebindings",
                format!(
                    "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n{}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: role-{}}}\nsubjects: [{{kind: ServiceAccount, name: sa-{}, namespace: {ns}}}]\n",
                    meta(format!("rb-{i}")),
                    first_of("Role", base) + k,
                    first_of("ServiceAccount", base) + k
                ),
            ),
            "NetworkPolicy" => (
                "50-networkpolicies",
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n{}\nspec:\n  podSelector: {{matchLabels: {{app: {app}}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{role: client-{k}}}}}}}], ports: [{{port: 8080, protocol: TCP}}]}}]\n",
                    meta(format!("netpol-{i}"))
                ),
            ),
            "PodDisruptionBudget" => (
                "50-pdbs",
                format!(
                    "apiVersion: policy/v1\nkind: PodDisruptionBudget\n{}\nspec: {{maxUnavailable: 1, selector: {{matchLabels: {{app: {app}}}}}}}\n",
                    meta(format!("pdb-{i}"))
                ),
            ),
            // No metrics server: the controller writes conditions saying so.
            "HorizontalPodAutoscaler" => (
                "50-hpas",
                format!(
                    "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\n{}\nspec:\n  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {app}}}\n  minReplicas: 1\n  maxReplicas: {}\n  metrics: [{{type: Resource, resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 80}}}}}}]\n",
                    meta(format!("hpa-{i}")),
                    3 + k
                ),
            ),
            "Ingress" => (
                "50-ingresses",
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: Ingress\n{}\nspec:\n  rules: [{{host: h{i}.bench.local, http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}]}}}}]\n",
                    meta(format!("ing-{i}"))
                ),
            ),
            "LimitRange" => (
                "05-limitranges",
                format!(
                    "apiVersion: v1\nkind: LimitRange\n{}\nspec:\n  limits: [{{type: Container, default: {{cpu: 500m, memory: 256Mi}}, defaultRequest: {{cpu: 10m, memory: 16Mi}}}}]\n",
                    meta(format!("limits-{i}"))
                ),
            ),
            // Counted on every create in its namespace: the API server and the quota controller
            // write its status.
            "ResourceQuota" => (
                "05-quotas",
                format!(
                    "apiVersion: v1\nkind: ResourceQuota\n{}\nspec:\n  hard: {{pods: \"100\", configmaps: \"100\", secrets: \"100\", services: \"100\", persistentvolumeclaims: \"100\"}}\n",
                    meta(format!("quota-{i}"))
                ),
            ),
            "PersistentVolumeClaim" => (
                "30-pvcs",
                format!(
                    "apiVersion: v1\nkind: PersistentVolumeClaim\n{}\nspec: {{storageClassName: driftless-bench-none, accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n",
                    meta(format!("data-{i}"))
                ),
            ),
            "PriorityClass" => (
                "01-priorityclasses",
                format!(
                    "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {{name: {prefix}-pc-{i}, labels: {{{RUN_LABEL}: {prefix}}}}}\nvalue: {}\nglobalDefault: false\n",
                    1000 + i
                ),
            ),
            "ClusterRole" => (
                "01-clusterroles",
                format!(
                    "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {prefix}-cr-{i}, labels: {{{RUN_LABEL}: {prefix}}}}}\nrules: [{{apiGroups: [\"\"], resources: [namespaces], verbs: [get]}}]\n"
                ),
            ),
            "EndpointSlice" => (
                "30-endpointslices",
                format!(
                    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n{}\naddressType: IPv4\nendpoints: [{{addresses: [\"10.1.{}.{}\"]}}]\nports: [{{name: http, port: 8080, protocol: TCP}}]\n",
                    meta(format!("eps-{i}")),
                    block % 250,
                    slot + 1
                ),
            ),
            _ => (
                "60-widgets",
                format!(
                    "apiVersion: bench.driftless.dev/v1\nkind: Widget\n{}\nspec: {{size: {i}, colour: blue}}\n",
                    meta(format!("w-{i}"))
                ),
            ),
        };
        docs.entry(file).or_default().push(doc);
    }
    let stack = dir.join("stack/bench");
    let plain = dir.join("kubectl");
    std::fs::create_dir_all(stack.join("manifests")).unwrap();
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(
        stack.join("stack.yaml"),
        format!("apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: {prefix}}}\nspec: {{path: manifests}}\n"),
    )
    .unwrap();
    // Files of at most 500 documents (as people split them; the loader caps a file's documents).
    for (file, list) in docs {
        for (part, chunk) in list.chunks(500).enumerate() {
            let text = chunk.join("---\n");
            let name = format!("{file}-{part:02}.yaml");
            std::fs::write(stack.join("manifests").join(&name), &text).unwrap();
            std::fs::write(plain.join(&name), &text).unwrap();
        }
    }
}

/// The namespaced ConfigMap the daemon section changes: the first of the mix.
pub fn first_configmap(prefix: &str) -> (String, String) {
    (format!("{prefix}-0"), "cm-0".to_owned())
}

pub const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.bench.driftless.dev}
spec:
  group: bench.driftless.dev
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

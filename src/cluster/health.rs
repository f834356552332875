//! Health, kstatus-like: per-kind rules on the live object (pure), and a wait loop over a set of
//! objects with a timeout.

use std::time::{Duration, Instant};

use kube::Client;
use serde_json::Value;

use super::Result;
use super::discovery::Kinds;
use crate::stack::ObjectKey;

pub use crate::health_checks::HealthStatus;

fn int(v: &Value, pointer: &str) -> Option<i64> {
    v.pointer(pointer).and_then(Value::as_i64)
}

fn condition<'a>(v: &'a Value, type_: &str) -> Option<&'a Value> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn condition_is(v: &Value, type_: &str, status: &str) -> bool {
    condition(v, type_)
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some(status)
}

/// What decides health beyond a kind's built-in rules: the revision's declared checks (for the
/// objects of one stack).
#[derive(Clone, Copy)]
pub struct Declared<'a> {
    pub checks: &'a crate::health_checks::HealthChecks,
    pub stack: &'a str,
}

/// Health of one live object: a declared check for its `apiVersion`/`kind` decides when there
/// is one; otherwise the rules of its kind, where a kind with a `status` subresource is in
/// progress until its controller has written a status for the current generation.
pub fn health_of_object(
    declared: Option<Declared<'_>>,
    api_version: &str,
    group: &str,
    kind: &str,
    status_subresource: bool,
    live: &Value,
) -> HealthStatus {
    if let Some(d) = declared
        && let Some(check) = d.checks.find(d.stack, api_version, kind)
    {
        return d.checks.evaluate(check, live);
    }
    rules(group, kind, status_subresource, live)
}

/// Health of a live object by the rules of its kind (a kind without a status subresource).
pub fn health_of(group: &str, kind: &str, live: &Value) -> HealthStatus {
    rules(group, kind, false, live)
}

fn rules(group: &str, kind: &str, status_subresource: bool, live: &Value) -> HealthStatus {
    use HealthStatus::*;
    let generation = int(live, "/metadata/generation");
    let observed = int(live, "/status/observedGeneration");
    let stale = matches!((generation, observed), (Some(g), Some(o)) if o < g)
        || (generation.is_some()
            && observed.is_none()
            && matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet"));
    if stale {
        return Progressing("the controller has not observed the latest generation".to_owned());
    }
    match (group, kind) {
        ("apps", "Deployment") => {
            if condition(live, "Progressing")
                .and_then(|c| c.get("reason"))
                .and_then(Value::as_str)
                == Some("ProgressDeadlineExceeded")
            {
                return Failed("rollout exceeded its progress deadline".to_owned());
            }
            let want = int(live, "/spec/replicas").unwrap_or(1);
            let updated = int(live, "/status/updatedReplicas").unwrap_or(0);
            let available = int(live, "/status/availableReplicas").unwrap_or(0);
            let total = int(live, "/status/replicas").unwrap_or(0);
            if updated < want {
                Progressing(format!("{updated}/{want} replicas updated"))
            } else if total > updated {
                Progressing(format!(
                    "{} old replicas pending termination",
                    total - updated
                ))
            } else if available < want {
                Progressing(format!("{available}/{want} replicas available"))
            } else {
                Healthy
            }
        }
        ("apps", "StatefulSet") => {
            let want = int(live, "/spec/replicas").unwrap_or(1);
            let ready = int(live, "/status/readyReplicas").unwrap_or(0);
            let updated = int(live, "/status/updatedReplicas").unwrap_or(0);
            let rolling = live
                .pointer("/spec/updateStrategy/type")
                .and_then(Value::as_str)
                != Some("OnDelete");
            if ready < want {
                Progressing(format!("{ready}/{want} replicas ready"))
            } else if rolling && updated < want {
                Progressing(format!("{updated}/{want} replicas updated"))
            } else {
                Healthy
            }
        }
        ("apps", "DaemonSet") => {
            let desired = int(live, "/status/desiredNumberScheduled").unwrap_or(0);
            let ready = int(live, "/status/numberReady").unwrap_or(0);
            let updated = int(live, "/status/updatedNumberScheduled").unwrap_or(0);
            if updated < desired {
                Progressing(format!("{updated}/{desired} pods updated"))
            } else if ready < desired {
                Progressing(format!("{ready}/{desired} pods ready"))
            } else {
                Healthy
            }
        }
        ("batch", "Job") => {
            if condition_is(live, "Failed", "True") {
                Failed("job failed".to_owned())
            } else if condition_is(live, "Complete", "True") {
                Healthy
            } else {
                Progressing("job running".to_owned())
            }
        }
        ("", "PersistentVolumeClaim") => {
            match live.pointer("/status/phase").and_then(Value::as_str) {
                Some("Bound") => Healthy,
                Some("Lost") => Failed("claim lost its volume".to_owned()),
                phase => Progressing(format!(
                    "claim {}",
                    phase.unwrap_or("pending").to_lowercase()
                )),
            }
        }
        ("", "Namespace") => match live.pointer("/status/phase").and_then(Value::as_str) {
            Some("Terminating") => Failed("namespace is terminating".to_owned()),
            _ => Healthy,
        },
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            if condition_is(live, "Established", "True") {
                Healthy
            } else {
                Progressing("not yet established".to_owned())
            }
        }
        _ => {
            // A controller writes the status of such a kind: until it has, for this generation,
            // nothing is known (a fresh custom resource is not healthy just for existing).
            if status_subresource {
                if live.get("status").is_none_or(Value::is_null) {
                    return Progressing(
                        "no status yet: its controller has not looked at it".to_owned(),
                    );
                }
                if let Some(generation) = generation {
                    let behind = live
                        .pointer("/status/conditions")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|c| {
                            Some((c.get("type")?.as_str()?, int(c, "/observedGeneration")?))
                        })
                        .find(|(_, observed)| *observed < generation);
                    if let Some((type_, observed)) = behind {
                        return Progressing(format!(
                            "condition {type_} is of generation {observed}, the object is at {generation}"
                        ));
                    }
                }
            }
            // Generic: a Ready condition decides when there is one.
            match condition(live, "Ready")
                .and_then(|c| c.get("status"))
                .and_then(Value::as_str)
            {
                Some("False") | Some("Unknown") => {
                    let msg = condition(live, "Ready")
                        .and_then(|c| c.get("message"))
                        .and_then(Value::as_str)
                        .unwrap_or("not ready");
                    Progressing(msg.to_owned())
                }
                _ => Healthy,
            }
        }
    }
}

/// One object to wait for.
#[derive(Debug, Clone)]
pub struct Watched {
    pub key: ObjectKey,
    pub api_version: String,
}

/// Polls `objects` until all are healthy, one failed, or `timeout` passed. Returns the last
/// status of every object that is not healthy (empty when all are).
pub async fn wait_healthy(
    client: &Client,
    kinds: &Kinds,
    stack: &str,
    objects: &[Watched],
    timeout: Duration,
    checks: Option<&crate::health_checks::HealthChecks>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<(ObjectKey, HealthStatus)>> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    let declared = checks.map(|checks| Declared { checks, stack });
    // Kinds that have no state to wait for are healthy once applied: not read at all (unless
    // the revision declares a check for them).
    let resolved: Vec<(&Watched, super::discovery::Resolved)> = objects
        .iter()
        .filter(|w| {
            !always_healthy(&w.key.group, &w.key.kind)
                || checks.is_some_and(|c| c.find(stack, &w.api_version, &w.key.kind).is_some())
        })
        .filter_map(|w| Some((w, kinds.resolve(&w.api_version, &w.key.kind)?)))
        .collect();
    let mut waiting: Vec<usize> = (0..resolved.len()).collect();
    loop {
        // Every object still waited for, read with one label-selected LIST per kind.
        let wants: Vec<super::live::Want<'_>> = waiting
            .iter()
            .map(|&i| {
                let (w, r) = &resolved[i];
                super::live::Want {
                    key: &w.key,
                    resource: &r.resource,
                    namespace: r.namespace_for(w.key.namespace.as_deref()),
                    recorded: true,
                    status_subresource: r.status_subresource,
                }
            })
            .collect();
        let mut live = super::live::fetch(client, stack, &wants).await?;
        let mut pending = Vec::new();
        let mut still = Vec::new();
        for &i in &waiting {
            let (w, r) = &resolved[i];
            let status = match live.remove(&w.key).flatten() {
                Some(live) => health_of_object(
                    declared,
                    &w.api_version,
                    &w.key.group,
                    &w.key.kind,
                    r.status_subresource,
                    &live,
                ),
                None => HealthStatus::Progressing("does not exist".to_owned()),
            };
            if status != HealthStatus::Healthy {
                pending.push((w.key.clone(), status));
                still.push(i);
            }
        }
        waiting = still;
        progress(objects.len() - pending.len(), objects.len());
        let failed = pending
            .iter()
            .any(|(_, s)| matches!(s, HealthStatus::Failed(_)));
        if pending.is_empty() || failed || start.elapsed() >= timeout {
            return Ok(pending);
        }
        tokio::time::sleep(delay.min(timeout.saturating_sub(start.elapsed()))).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Kinds whose objects are usable as soon as the API server stored them.
fn always_healthy(group: &str, kind: &str) -> bool {
    matches!(
        (group, kind),
        (
            "",
            "ConfigMap"
                | "Secret"
                | "ServiceAccount"
                | "LimitRange"
                | "ResourceQuota"
                | "Endpoints"
        ) | (
            "rbac.authorization.k8s.io",
            "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding"
        ) | ("networking.k8s.io", "NetworkPolicy" | "IngressClass")
            | ("scheduling.k8s.io", "PriorityClass")
            | ("storage.k8s.io", "StorageClass")
            | ("policy", "PodDisruptionBudget")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_per_kind() {
        use HealthStatus::*;
        let cases = [
            (
                "apps",
                "Deployment",
                json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
                "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}}),
                true,
            ),
            (
                "apps",
                "Deployment",
                json!({"metadata": {"generation": 3}, "spec": {"replicas": 2},
                "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}}),
                false,
            ),
            (
                "apps",
                "Deployment",
                json!({"metadata": {"generation": 1}, "spec": {"replicas": 2},
                "status": {"observedGeneration": 1, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}}),
                false,
            ),
            (
                "apps",
                "StatefulSet",
                json!({"metadata": {"generation": 1}, "spec": {"replicas": 1},
                "status": {"observedGeneration": 1, "readyReplicas": 1, "updatedReplicas": 1}}),
                true,
            ),
            (
                "apps",
                "DaemonSet",
                json!({"metadata": {"generation": 1},
                "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "numberReady": 2, "updatedNumberScheduled": 3}}),
                false,
            ),
            (
                "batch",
                "Job",
                json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}),
                true,
            ),
            (
                "",
                "PersistentVolumeClaim",
                json!({"status": {"phase": "Pending"}}),
                false,
            ),
            (
                "",
                "PersistentVolumeClaim",
                json!({"status": {"phase": "Bound"}}),
                true,
            ),
            (
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                json!({"status": {"conditions": [{"type": "Established", "status": "True"}]}}),
                true,
            ),
            (
                "example.com",
                "Widget",
                json!({"status": {"conditions": [{"type": "Ready", "status": "False", "message": "waiting"}]}}),
                false,
            ),
            ("", "ConfigMap", json!({"data": {}}), true),
        ];
        for (group, kind, live, healthy) in cases {
            assert_eq!(
                health_of(group, kind, &live) == Healthy,
                healthy,
                "{kind}: {live}"
            );
        }
        // A kind with a status subresource: nothing before its controller has looked.
        let custom = [
            (
                json!({"metadata": {"generation": 1}}),
                false,
                "no status yet",
            ),
            (
                json!({"metadata": {"generation": 1}, "status": null}),
                false,
                "no status yet",
            ),
            (
                json!({"metadata": {"generation": 1}, "status": {}}),
                true,
                "",
            ),
            (
                json!({"metadata": {"generation": 2}, "status": {"observedGeneration": 1}}),
                false,
                "latest generation",
            ),
            (
                json!({"metadata": {"generation": 2}, "status": {"conditions": [
                    {"type": "Ready", "status": "True", "observedGeneration": 1}]}}),
                false,
                "condition Ready is of generation 1",
            ),
            (
                json!({"metadata": {"generation": 2}, "status": {"conditions": [
                    {"type": "Ready", "status": "True", "observedGeneration": 2}]}}),
                true,
                "",
            ),
        ];
        for (live, healthy, message) in custom {
            let got =
                health_of_object(None, "example.com/v1", "example.com", "Widget", true, &live);
            assert_eq!(got == Healthy, healthy, "{live}: {got:?}");
            if let Progressing(m) = &got {
                assert!(m.contains(message), "{live}: {m}");
            }
        }
        // A CRD without a status subresource: a status-less object is healthy (no Ready
        // condition says otherwise), as before.
        assert_eq!(
            health_of_object(
                None,
                "example.com/v1",
                "example.com",
                "Widget",
                false,
                &json!({"metadata": {"generation": 1}})
            ),
            Healthy
        );
        let failed = health_of(
            "batch",
            "Job",
            &json!({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}),
        );
        assert!(matches!(failed, Failed(_)));
    }
}

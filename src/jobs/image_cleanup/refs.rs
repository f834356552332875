//! Image references as workloads write them, and the images a set of Kubernetes objects uses
//! (pure). Protection reads Pods (images and the `imageID`s the runtime resolved) and the pod
//! templates of every workload kind that can start Pods, so an image is protected before its Pod
//! exists and while an old ReplicaSet could still roll back to it.

use std::collections::BTreeMap;

use serde_json::Value;

/// A parsed image reference: `[host[:port]/]path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host (and port), lowercase; `docker.io` when the reference names none.
    pub host: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Parses a reference; `None` when it is not one (empty, or a bare digest without a name).
pub fn parse(reference: &str) -> Option<ImageRef> {
    let text = reference
        .trim()
        .trim_start_matches("docker-pullable://")
        .trim_start_matches("docker://");
    let (name, digest) = match text.split_once('@') {
        Some((n, d)) => (n, Some(d.to_owned())),
        None => (text, None),
    };
    if name.is_empty() {
        return None;
    }
    // The tag is after the last ':' of the last path segment (a host port is not a tag).
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match name[last_slash..].rfind(':') {
        Some(i) => (
            &name[..last_slash + i],
            Some(name[last_slash + i + 1..].to_owned()),
        ),
        None => (name, None),
    };
    let (host, repository) = match path.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_ascii_lowercase(), rest.to_owned())
        }
        _ if path.contains('/') => ("docker.io".to_owned(), path.to_owned()),
        _ => ("docker.io".to_owned(), format!("library/{path}")),
    };
    if repository.is_empty() || tag.as_deref() == Some("") {
        return None;
    }
    Some(ImageRef {
        host,
        repository,
        tag,
        digest,
    })
}

/// How an image is referenced.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reference {
    Tag(String),
    Digest(String),
}

/// The references into one registry, by repository, each with who makes it.
pub type Uses = BTreeMap<String, Vec<(Reference, String)>>;

/// Adds the images `object` uses (a Pod, or any kind with a pod template) to `uses`, keeping
/// those whose host is one of `hosts` (the names under which workloads reach the registry).
/// `who` names the object in reports (`Deployment ducklake/backend`).
pub fn collect(object: &Value, who: &str, hosts: &[String], uses: &mut Uses) {
    let mut add = |reference: &str| {
        let Some(r) = parse(reference) else { return };
        if !hosts.iter().any(|h| h.eq_ignore_ascii_case(&r.host)) {
            return;
        }
        let entry = uses.entry(r.repository).or_default();
        for reference in r
            .digest
            .map(Reference::Digest)
            .into_iter()
            .chain(r.tag.map(Reference::Tag))
        {
            let item = (reference, who.to_owned());
            if !entry.contains(&item) {
                entry.push(item);
            }
        }
    };
    for spec in pod_specs(object) {
        for list in ["containers", "initContainers", "ephemeralContainers"] {
            for c in array(spec, list) {
                if let Some(image) = c.get("image").and_then(Value::as_str) {
                    add(image);
                }
            }
        }
    }
    if let Some(status) = object.get("status") {
        for list in [
            "containerStatuses",
            "initContainerStatuses",
            "ephemeralContainerStatuses",
        ] {
            for c in array(status, list) {
                for field in ["image", "imageID"] {
                    if let Some(image) = c.get(field).and_then(Value::as_str) {
                        add(image);
                    }
                }
            }
        }
    }
}

/// The pod specs of an object: a Pod's own, a template's, a CronJob's job template's.
fn pod_specs(object: &Value) -> Vec<&Value> {
    [
        "/spec/containers",
        "/spec/template/spec/containers",
        "/spec/jobTemplate/spec/template/spec/containers",
    ]
    .iter()
    .filter_map(|p| {
        object.pointer(p)?;
        object.pointer(p.trim_end_matches("/containers"))
    })
    .collect()
}

fn array<'a>(v: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    v.get(field).and_then(Value::as_array).into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(host: &str, repo: &str, tag: Option<&str>, digest: Option<&str>) -> Option<ImageRef> {
        Some(ImageRef {
            host: host.into(),
            repository: repo.into(),
            tag: tag.map(Into::into),
            digest: digest.map(Into::into),
        })
    }

    #[test]
    fn references_parse_as_the_runtime_reads_them() {
        for (text, want) in [
            ("nginx", r("docker.io", "library/nginx", None, None)),
            (
                "nginx:1.27",
                r("docker.io", "library/nginx", Some("1.27"), None),
            ),
            (
                "localhost:30500/ducklake/backend:1.2.0",
                r("localhost:30500", "ducklake/backend", Some("1.2.0"), None),
            ),
            // A port is not a tag.
            (
                "registry.local:5000/app",
                r("registry.local:5000", "app", None, None),
            ),
            (
                "Registry.Local:5000/a/b:v1@sha256:abc",
                r("registry.local:5000", "a/b", Some("v1"), Some("sha256:abc")),
            ),
            (
                "docker-pullable://registry.local:5000/a@sha256:abc",
                r("registry.local:5000", "a", None, Some("sha256:abc")),
            ),
            (
                "minio/minio:latest",
                r("docker.io", "minio/minio", Some("latest"), None),
            ),
            ("", None),
            ("app:", None),
        ] {
            assert_eq!(parse(text), want, "{text}");
        }
    }

    #[test]
    fn uses_come_from_pods_templates_and_statuses_of_this_registry_only() {
        let hosts = vec!["registry.local:5000".to_owned()];
        let mut uses = Uses::new();
        let deployment = json!({"kind": "Deployment", "spec": {"template": {"spec": {
            "initContainers": [{"image": "registry.local:5000/app/migrate:v3"}],
            "containers": [{"image": "registry.local:5000/app/web:v3"}, {"image": "nginx:1.27"}]}}}});
        collect(&deployment, "Deployment ns/web", &hosts, &mut uses);
        let cronjob = json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"image": "registry.local:5000/app/report@sha256:r1"}]}}}}}});
        collect(&cronjob, "CronJob ns/report", &hosts, &mut uses);
        let pod = json!({"kind": "Pod", "spec": {"containers": [{"image": "registry.local:5000/app/web:v2"}]},
            "status": {"containerStatuses": [{"image": "registry.local:5000/app/web:v2",
                "imageID": "docker-pullable://registry.local:5000/app/web@sha256:w2"}]}});
        collect(&pod, "Pod ns/web-1", &hosts, &mut uses);
        assert_eq!(
            uses.keys().collect::<Vec<_>>(),
            ["app/migrate", "app/report", "app/web"]
        );
        assert_eq!(
            uses["app/web"],
            vec![
                (Reference::Tag("v3".into()), "Deployment ns/web".into()),
                (Reference::Tag("v2".into()), "Pod ns/web-1".into()),
                (Reference::Digest("sha256:w2".into()), "Pod ns/web-1".into()),
            ]
        );
        assert_eq!(
            uses["app/report"],
            vec![(
                Reference::Digest("sha256:r1".into()),
                "CronJob ns/report".into()
            )]
        );
    }
}

//! Health of custom resources against the test cluster: a custom resource whose operator has not
//! looked at it keeps its dependents waiting; declared CEL checks (`health/`) decide when it is
//! healthy or failed; the test writes the status through the status subresource, as the operator
//! would.

mod support;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{Repo, TestEnv, kubectl, text, unique_name};

/// A CRD of `group` with a status subresource: `Widget` (a declared check) and `Gadget` (none).
fn crds(group: &str) -> String {
    let crd = |kind: &str, plural: &str| {
        format!(
            "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: {plural}.{group}}}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{kind: {kind}, plural: {plural}, singular: {}}}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    subresources: {{status: {{}}}}\n    schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}\n",
            kind.to_lowercase()
        )
    };
    format!(
        "{}---\n{}",
        crd("Widget", "widgets"),
        crd("Gadget", "gadgets")
    )
}

/// A repository: `crds` (the CRDs), `a` (one custom resource of `kind`), `b` (a ConfigMap,
/// depending on `a`), and a root `health/` check for Widgets.
fn repo(kind: &str, wait: &str) -> (Repo, String, String) {
    let r = Repo::new("health", "");
    let group = format!("{}.example.com", r.id);
    let ns = unique_name("health-ns");
    let stack = |name: &str, deps: &str| {
        format!(
            "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: {name}-ID}}\nspec:\n  namespace: {ns}\n  dependsOn: [{deps}]\n  wait: {{timeout: {wait}}}\n"
        )
    };
    r.write("stack/crds/stack.yaml", &stack("crds", ""));
    r.write("stack/crds/crds.yaml", &crds(&group));
    r.write("stack/a/stack.yaml", &stack("a", "crds-ID"));
    r.write(
        "stack/a/objects.yaml",
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\napiVersion: {group}/v1\nkind: {kind}\nmetadata: {{name: one}}\nspec: {{size: 1}}\n"
        ),
    );
    r.write("stack/b/stack.yaml", &stack("b", "a-ID"));
    r.write(
        "stack/b/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dependent}\ndata: {greeting: hello}\n",
    );
    r.write(
        "health/widgets.yaml",
        &format!(
            "apiVersion: driftless.dev/v1alpha1\nkind: HealthChecks\nchecks:\n- apiVersion: {group}/v1\n  kind: Widget\n  failed: \"object.?status.?phase.orValue('') == 'Failed'\"\n  current: \"object.?status.?phase.orValue('') == 'Ready'\"\n  inProgress: \"true\"\n  message: \"object.?status.?message.orValue('')\"\n"
        ),
    );
    (r, group, ns)
}

fn sync(r: &Repo) -> Child {
    let env = TestEnv::get();
    Command::new(env!("CARGO_BIN_EXE_driftless"))
        .arg("--config")
        .arg(&r.config)
        .args(["sync"])
        .env("KUBECONFIG", env.var("KUBECONFIG"))
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sync")
}

/// Polls `check` every 200 ms until it holds; panics after `secs` naming `what`.
fn until(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn exists(args: &[&str]) -> bool {
    let env = TestEnv::get();
    Command::new(env.var("KUBECTL"))
        .arg("--kubeconfig")
        .arg(env.var("KUBECONFIG"))
        .args(["get"])
        .args(args)
        .output()
        .expect("kubectl")
        .status
        .success()
}

/// Writes `status` on the custom resource through its status subresource.
fn set_status(resource: &str, ns: &str, status: &str) {
    kubectl(&[
        "patch",
        resource,
        "one",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!("{{\"status\": {status}}}"),
    ]);
}

fn finish(child: Child) -> Output {
    child.wait_with_output().expect("sync output")
}

#[test]
fn dependents_wait_until_the_declared_check_holds() {
    let (r, group, ns) = repo("Widget", "2m");
    let mut child = sync(&r);
    let widget = format!("widgets.{group}");
    until("the widget to be applied", 60, || {
        exists(&[&widget, "one", "-n", &ns])
    });
    // No status yet: the operator has not looked at it. Its dependent is not applied while the
    // sync waits.
    let waiting = |child: &mut Child| child.try_wait().expect("try_wait").is_none();
    assert!(waiting(&mut child), "the sync must wait for the widget");
    assert!(!exists(&["configmap", "dependent", "-n", &ns]));
    // In progress by the declared check.
    set_status(&widget, &ns, r#"{"phase": "Provisioning"}"#);
    assert!(waiting(&mut child));
    assert!(!exists(&["configmap", "dependent", "-n", &ns]));
    // Current: the dependent follows, the sync ends well.
    set_status(&widget, &ns, r#"{"phase": "Ready"}"#);
    until("the dependent to be applied", 60, || {
        exists(&["configmap", "dependent", "-n", &ns])
    });
    let out = finish(child);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("unhealthy"), "{}", text(&out));
    kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

#[test]
fn a_failed_expression_fails_the_stack_with_its_message() {
    let (r, group, ns) = repo("Widget", "2m");
    let child = sync(&r);
    let widget = format!("widgets.{group}");
    until("the widget to be applied", 60, || {
        exists(&[&widget, "one", "-n", &ns])
    });
    set_status(
        &widget,
        &ns,
        r#"{"phase": "Failed", "message": "quota exceeded in zone b"}"#,
    );
    let out = finish(child);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("quota exceeded in zone b"), "{said}");
    assert!(
        said.contains(&format!("skipped: dependency a-{} failed", r.id)),
        "{said}"
    );
    assert!(!exists(&["configmap", "dependent", "-n", &ns]));
    kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

#[test]
fn without_a_check_a_custom_resource_waits_for_its_controller() {
    // Gadget has a status subresource and no declared check: no status means not yet looked at.
    let (r, group, ns) = repo("Gadget", "4s");
    let out = finish(sync(&r));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("no status yet"), "{said}");
    assert!(!exists(&["configmap", "dependent", "-n", &ns]));

    // Once its controller wrote a status for the current generation (the generic rule), it is
    // healthy and the dependent is applied.
    let gadget = format!("gadgets.{group}");
    set_status(&gadget, &ns, r#"{"observedGeneration": 1}"#);
    let out = finish(sync(&r));
    assert!(out.status.success(), "{}", text(&out));
    assert!(exists(&["configmap", "dependent", "-n", &ns]));
    kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}

#[test]
fn validate_lists_the_checks_and_refuses_a_broken_one() {
    let (r, _group, _ns) = repo("Widget", "1m");
    let out = support::driftless(&r.config, &["validate"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("health check "), "{}", text(&out));
    assert!(
        text(&out).contains("Widget (health/widgets.yaml)"),
        "{}",
        text(&out)
    );
    r.write(
        "health/broken.yaml",
        "apiVersion: driftless.dev/v1alpha1\nkind: HealthChecks\nchecks:\n- {apiVersion: x.io/v1, kind: K, current: 'object.status.('}\n",
    );
    let out = support::driftless(&r.config, &["validate"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("health/broken.yaml"), "{}", text(&out));
}

//! Chart and Kustomize stacks (`spec.helm`, `spec.kustomize`) against the real control plane, with
//! the `helm` the test environment builds and its `kubectl`: the rendered objects are applied like
//! plain ones (profiles choose values files and Kustomize directories, overlays still patch), a
//! second sync changes nothing, and a render that fails applies and prunes nothing.

mod support;

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use std::path::Path;

use support::{Repo, TestEnv, driftless, driftless_with, text};

fn sync(repo: &Repo) -> std::process::Output {
    driftless(&repo.config, &["sync"])
}

async fn config_map(ns: &str, name: &str) -> Option<ConfigMap> {
    let api: Api<ConfigMap> = Api::namespaced(TestEnv::get().kube_client().await, ns);
    api.get_opt(name).await.expect("get configmap")
}

fn data(cm: &ConfigMap, key: &str) -> String {
    cm.data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
        .unwrap_or_default()
}

/// A chart stack: values.yaml, then values-local.yaml in the local profile, then an overlay.
fn chart_repo() -> Repo {
    let repo = Repo::new("hm", "profile: local\n");
    repo.write(
        "stack/web/stack.yaml",
        "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: ID}\nspec:\n  namespace: ID\n  helm:\n    chart: chart\n    valuesFiles: [chart/values.yaml]\n  profiles:\n    local:\n      helm: {valuesFiles: [values-local.yaml]}\n      overlays: [overlays/local]\n",
    );
    repo.write(
        "stack/web/chart/Chart.yaml",
        "apiVersion: v2\nname: web\nversion: 0.1.0\n",
    );
    repo.write(
        "stack/web/chart/values.yaml",
        "greeting: hello\ncolour: blue\nport: 80\n",
    );
    repo.write("stack/web/values-local.yaml", "colour: green\n");
    repo.write(
        "stack/web/chart/templates/namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {{ .Release.Namespace }}\n",
    );
    repo.write(
        "stack/web/chart/templates/settings.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\ndata:\n  greeting: {{ .Values.greeting | quote }}\n  colour: {{ .Values.colour | quote }}\n  # Helm's own syntax and shell text pass through untouched (no ${VAR} substitution).\n  script: 'echo ${HOME}'\n",
    );
    repo.write(
        "stack/web/chart/templates/service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports: [{port: {{ .Values.port }}}]\n",
    );
    repo.write(
        "stack/web/overlays/local/patch.yaml",
        "apiVersion: driftless.dev/v1alpha1\nkind: Overlay\npatches:\n  - target: {kind: ConfigMap, name: ID-settings}\n    merge: {data: {overlay: applied}}\n",
    );
    repo
}

#[tokio::test]
async fn helm_chart_stack_syncs_with_profile_values_and_converges() {
    let repo = chart_repo();
    let id = repo.id.clone();

    let out = driftless(&repo.config, &["validate"]);
    assert!(out.status.success(), "validate: {}", text(&out));

    let out = sync(&repo);
    assert!(out.status.success(), "sync: {}", text(&out));
    let cm = config_map(&id, &format!("{id}-settings"))
        .await
        .expect("the chart's ConfigMap exists");
    assert_eq!(data(&cm, "greeting"), "hello");
    assert_eq!(data(&cm, "colour"), "green", "values-local.yaml wins");
    assert_eq!(
        data(&cm, "overlay"),
        "applied",
        "overlays patch rendered objects"
    );
    assert_eq!(data(&cm, "script"), "echo ${HOME}");
    let labels = cm.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("driftless.dev/stack").map(String::as_str),
        Some(id.as_str()),
        "rendered objects carry the stack label"
    );
    let svc: Api<Service> = Api::namespaced(TestEnv::get().kube_client().await, &id);
    assert!(svc.get_opt("web").await.unwrap().is_some());

    // A second sync changes nothing.
    let out = sync(&repo);
    assert!(out.status.success(), "second sync: {}", text(&out));
    assert!(
        text(&out).contains("applied: 0 to create, 0 to update, 0 to prune"),
        "{}",
        text(&out)
    );

    // A values change is a normal update; a template removed from the chart is pruned.
    repo.write(
        "stack/web/chart/values.yaml",
        "greeting: bonjour\ncolour: blue\nport: 80\n",
    );
    std::fs::remove_file(repo.path().join("stack/web/chart/templates/service.yaml")).unwrap();
    let out = sync(&repo);
    assert!(out.status.success(), "third sync: {}", text(&out));
    let cm = config_map(&id, &format!("{id}-settings")).await.unwrap();
    assert_eq!(data(&cm, "greeting"), "bonjour");
    assert!(svc.get_opt("web").await.unwrap().is_none(), "pruned");
}

#[tokio::test]
async fn a_failing_render_applies_and_prunes_nothing() {
    let repo = chart_repo();
    let id = repo.id.clone();
    let out = sync(&repo);
    assert!(out.status.success(), "sync: {}", text(&out));

    // A template error (a value that is not there), together with a change that would apply.
    repo.write(
        "stack/web/chart/values.yaml",
        "greeting: changed\ncolour: blue\nport: 80\n",
    );
    repo.write(
        "stack/web/chart/templates/broken.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: broken}\ndata:\n  x: {{ .Values.missing.field }}\n",
    );
    let out = sync(&repo);
    assert!(
        !out.status.success(),
        "a failed render fails: {}",
        text(&out)
    );
    let t = text(&out);
    assert!(
        t.contains("stack/web/stack.yaml"),
        "names the stack file: {t}"
    );
    assert!(t.contains("spec.helm"), "names the field: {t}");
    assert!(t.contains("broken.yaml"), "passes on helm's message: {t}");
    let cm = config_map(&id, &format!("{id}-settings")).await.unwrap();
    assert_eq!(data(&cm, "greeting"), "hello", "nothing was applied");
    let svc: Api<Service> = Api::namespaced(TestEnv::get().kube_client().await, &id);
    assert!(
        svc.get_opt("web").await.unwrap().is_some(),
        "nothing pruned"
    );

    // A renderer that is not installed is named, with what to do.
    std::fs::remove_file(repo.path().join("stack/web/chart/templates/broken.yaml")).unwrap();
    let out = driftless_with(
        &repo.config,
        &["diff"],
        &[("DRIFTLESS_HELM", "/nonexistent/helm")],
    );
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("\"/nonexistent/helm\", which was not found") && t.contains("install Helm"),
        "{t}"
    );
    let cm = config_map(&id, &format!("{id}-settings")).await.unwrap();
    assert_eq!(data(&cm, "greeting"), "hello");
}

#[tokio::test]
async fn kustomize_stack_uses_the_profile_directory_and_fails_safely() {
    let repo = Repo::new("kz", "profile: local\n");
    let id = repo.id.clone();
    repo.write(
        "stack/app/stack.yaml",
        "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: ID}\nspec:\n  namespace: ID\n  kustomize: {path: base}\n  profiles:\n    local: {kustomize: {path: local}}\n    prod: {}\n",
    );
    repo.write(
        "stack/app/base/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: ID\nlabels:\n  - pairs: {team: data}\nresources: [namespace.yaml, settings.yaml]\n",
    );
    repo.write(
        "stack/app/base/namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ID}\n",
    );
    repo.write(
        "stack/app/base/settings.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {size: large}\n",
    );
    repo.write(
        "stack/app/local/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../base]\npatches:\n  - target: {kind: ConfigMap, name: settings}\n    patch: |\n      - {op: replace, path: /data/size, value: small}\n",
    );

    let out = sync(&repo);
    assert!(out.status.success(), "sync: {}", text(&out));
    let cm = config_map(&id, "settings").await.expect("rendered");
    assert_eq!(data(&cm, "size"), "small", "the local profile's directory");
    let labels = cm.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("data"));
    let out = sync(&repo);
    assert!(
        text(&out).contains("applied: 0 to create, 0 to update, 0 to prune"),
        "{}",
        text(&out)
    );

    // A kustomization naming a file that is not there: an error, nothing pruned.
    repo.write(
        "stack/app/base/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: ID\nresources: [namespace.yaml, missing.yaml]\n",
    );
    let out = sync(&repo);
    assert!(!out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("spec.kustomize") && t.contains("missing.yaml"),
        "{t}"
    );
    assert!(
        config_map(&id, "settings").await.is_some(),
        "nothing pruned after a failed render"
    );
}

/// Remote bases and files are refused before `kubectl kustomize` runs: nothing is fetched,
/// nothing applied, and the error names the kustomization file, the field and the entry.
#[tokio::test]
async fn remote_kustomize_references_are_refused_and_nothing_is_applied() {
    let repo = Repo::new("kzr", "");
    let id = repo.id.clone();
    repo.write(
        "stack/app/stack.yaml",
        "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: ID}\nspec:\n  namespace: ID\n  kustomize: {path: overlay}\n",
    );
    repo.write(
        "stack/app/base/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [namespace.yaml, settings.yaml]\n",
    );
    repo.write(
        "stack/app/base/namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ID}\n",
    );
    repo.write(
        "stack/app/base/settings.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: ID}\n",
    );
    for (entry, field) in [
        (
            "https://raw.githubusercontent.com/kubernetes/website/main/content/en/examples/application/nginx-app.yaml",
            "resources[1]",
        ),
        (
            "github.com/kubernetes-sigs/kustomize//examples/helloWorld?ref=v3.3.1",
            "resources[1]",
        ),
    ] {
        repo.write(
            "stack/app/overlay/kustomization.yaml",
            &format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../base, '{entry}']\n"
            ),
        );
        let out = sync(&repo);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let t = text(&out);
        assert!(
            t.contains(&format!(
                "stack/app/overlay/kustomization.yaml: {field} {entry:?}"
            )) && t.contains("remote")
                && t.contains("spec.kustomize"),
            "{t}"
        );
        let ns: Api<k8s_openapi::api::core::v1::Namespace> =
            Api::all(TestEnv::get().kube_client().await);
        assert!(ns.get_opt(&id).await.unwrap().is_none(), "nothing applied");
    }
    // The same directory with local references only renders and applies.
    repo.write(
        "stack/app/overlay/kustomization.yaml",
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../base]\n",
    );
    let out = sync(&repo);
    assert!(out.status.success(), "{}", text(&out));
    assert!(config_map(&id, "settings").await.is_some());
}

/// A chart whose directory holds a symlink out of the repository is refused before Helm runs:
/// Helm follows it, and `.Files.Get` would put the host's file into a ConfigMap.
#[tokio::test]
async fn a_chart_symlink_out_of_the_repository_is_refused_before_helm_runs() {
    let repo = chart_repo();
    let id = repo.id.clone();
    repo.write(
        "stack/web/chart/templates/leak.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: leak}\ndata:\n  passwd: {{ .Files.Get \"files/passwd\" | quote }}\n",
    );
    std::fs::create_dir_all(repo.path().join("stack/web/chart/files")).unwrap();
    std::os::unix::fs::symlink(
        "/etc/passwd",
        repo.path().join("stack/web/chart/files/passwd"),
    )
    .unwrap();
    let out = sync(&repo);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("stack/web/stack.yaml: spec.helm.chart of stack")
            && t.contains("stack/web/chart/files/passwd: symlink leads outside the repository"),
        "{t}"
    );
    assert!(!t.contains("root:x:0"), "{t}");
    assert!(config_map(&id, "leak").await.is_none(), "nothing applied");
    assert!(config_map(&id, &format!("{id}-settings")).await.is_none());

    // A link to /etc itself, and one hidden in a dot-directory, likewise.
    std::fs::remove_file(repo.path().join("stack/web/chart/files/passwd")).unwrap();
    std::os::unix::fs::symlink("/etc", repo.path().join("stack/web/chart/files/etc")).unwrap();
    let t = text(&driftless(&repo.config, &["validate"]));
    assert!(
        t.contains("stack/web/chart/files/etc: symlink leads outside"),
        "{t}"
    );
    std::fs::remove_file(repo.path().join("stack/web/chart/files/etc")).unwrap();
    std::fs::create_dir_all(repo.path().join("stack/web/chart/.git")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", repo.path().join("stack/web/chart/.git/x")).unwrap();
    let t = text(&driftless(&repo.config, &["validate"]));
    assert!(
        t.contains("stack/web/chart/.git/x: symlink leads outside"),
        "{t}"
    );
}

/// A renderer sees none of driftless' environment but `PATH`, and an empty private `HOME`.
/// Neither helm nor kubectl can print their environment into a render (Helm has no `env`
/// function; Kustomize reads no variables), so a renderer program configured through
/// `renderers.helm` records what it was given: observation injection, with driftless itself
/// unchanged.
#[test]
fn renderers_run_with_a_minimal_environment() {
    let tools = tempfile::tempdir().unwrap();
    let seen = tools.path().join("seen");
    let script = tools.path().join("helm");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv > '{seen}.env'\nls -A \"$HOME\" > '{seen}.home'\nprintf -- '---\\n# Source: web/templates/a.yaml\\napiVersion: v1\\nkind: ConfigMap\\nmetadata: {{name: a}}\\n'\n",
            seen = seen.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = Repo::new(
        "env",
        &format!("renderers: {{helm: {}}}\n", script.display()),
    );
    repo.write(
        "stack/web/stack.yaml",
        "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: ID}\nspec:\n  namespace: ID\n  helm: {chart: chart}\n",
    );
    repo.write(
        "stack/web/chart/Chart.yaml",
        "apiVersion: v2\nname: web\nversion: 0.1.0\n",
    );
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join(".netrc"), "machine example.com password x").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_driftless"))
        .arg("--config")
        .arg(&repo.config)
        .arg("validate")
        .env("DRIFTLESS_TEST_SENTINEL", "s3ntinel-in-driftless-env")
        .env("AWS_SECRET_ACCESS_KEY", "s3ntinel-aws")
        .env("HTTPS_PROXY", "http://proxy.invalid:3128")
        .env("http_proxy", "http://proxy.invalid:3128")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("HOME", home.path())
        .output()
        .expect("run driftless");
    assert!(out.status.success(), "{}", text(&out));
    let env = std::fs::read_to_string(seen.with_extension("env")).unwrap();
    assert!(!env.contains("s3ntinel"), "{env}");
    for var in ["HTTPS_PROXY=", "http_proxy=", "KUBECONFIG=", "DRIFTLESS_"] {
        assert!(
            !env.lines().any(|l| l.starts_with(var)),
            "{var} passed: {env}"
        );
    }
    let path = std::env::var("PATH").unwrap();
    assert!(env.lines().any(|l| l == format!("PATH={path}")), "{env}");
    let renderer_home = env
        .lines()
        .find_map(|l| l.strip_prefix("HOME="))
        .expect("HOME set");
    assert_ne!(Path::new(renderer_home), home.path());
    assert!(
        env.lines()
            .any(|l| l == format!("HELM_CACHE_HOME={renderer_home}/.cache/helm")),
        "{env}"
    );
    let listing = std::fs::read_to_string(seen.with_extension("home")).unwrap();
    assert_eq!(listing, "", "HOME was empty");
    assert!(
        !Path::new(renderer_home).exists(),
        "and is removed afterwards"
    );
}

/// Helm resolves a `values.schema.json` `$ref` against `file:///` and loads it: a relative one
/// reads any file of the host, and its content comes back in Helm's error message. Refused before
/// Helm runs; the host file's content appears nowhere.
#[test]
fn a_chart_schema_reference_to_a_host_file_is_refused_before_helm_runs() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.json");
    std::fs::write(
        &secret,
        r#"{"type": "string", "const": "S3NTINEL-host-file"}"#,
    )
    .unwrap();
    let repo = chart_repo();
    let reference = secret.to_str().unwrap().trim_start_matches('/');
    repo.write(
        "stack/web/chart/values.schema.json",
        &format!(
            r#"{{"type": "object", "properties": {{"greeting": {{"$ref": "{reference}"}}}}}}"#
        ),
    );
    let out = driftless(&repo.config, &["validate"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains(&format!(
            "stack/web/chart/values.schema.json: /properties/greeting/$ref {reference:?}: Helm would load it"
        )),
        "{t}"
    );
    assert!(!t.contains("S3NTINEL"), "{t}");
}

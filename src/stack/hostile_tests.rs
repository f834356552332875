//! Hostile repositories: walks that a commit could make endless (symlink loops, deep trees),
//! paths that lead outside the repository, and renderer inputs that would reach the network or
//! the host. Each case must be a load error naming the place, before any renderer runs.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::*;

const STACK: &str =
    "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec: {namespace: ns}\n";
const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n";

fn write(root: &Path, path: &str, text: &str) {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, text) in files {
        write(dir.path(), path, text);
    }
    dir
}

fn load_err(root: &Path) -> String {
    match load_repo(root, None, LoadLimits::default()) {
        Ok(_) => panic!("loaded; expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_symlink_loop_in_a_manifest_directory_is_a_load_error_naming_it() {
    let r = repo(&[("stack/s/stack.yaml", STACK), ("stack/s/cm.yaml", CM)]);
    symlink(".", r.path().join("stack/s/loop")).unwrap();
    let err = load_err(r.path());
    assert!(err.contains("stack/s/loop"), "{err}");
    assert!(err.contains("symlink loop"), "{err}");
}

#[test]
fn ten_symlink_loops_and_a_fan_of_links_end_quickly() {
    // Ten links back to the stack directory, and a chain of directories that each link twice to
    // the next: without a visited set the walk is exponential.
    let r = repo(&[("stack/s/stack.yaml", STACK), ("stack/s/cm.yaml", CM)]);
    for i in 0..10 {
        symlink(".", r.path().join(format!("stack/s/loop{i}"))).unwrap();
    }
    let started = std::time::Instant::now();
    let err = load_err(r.path());
    assert!(err.contains("stack/s/loop0"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    let r = repo(&[("stack/s/stack.yaml", STACK), ("stack/s/cm.yaml", CM)]);
    for level in 0..24 {
        let dir = r.path().join(format!("fan/d{level}"));
        std::fs::create_dir_all(&dir).unwrap();
        symlink(format!("../d{}", level + 1), dir.join("a")).unwrap();
        symlink(format!("../d{}", level + 1), dir.join("b")).unwrap();
    }
    std::fs::create_dir_all(r.path().join("fan/d24")).unwrap();
    symlink("../../fan/d0", r.path().join("stack/s/fan")).unwrap();
    let started = std::time::Instant::now();
    let err = load_err(r.path());
    assert!(err.contains("stack/s/fan/"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn a_too_deep_tree_is_a_load_error_naming_it() {
    let deep: String = (0..40).map(|i| format!("d{i}/")).collect();
    let r = repo(&[
        ("stack/s/stack.yaml", STACK),
        (&format!("stack/s/{deep}cm.yaml"), CM),
    ]);
    let err = load_err(r.path());
    assert!(err.contains("stack/s/d0/d1/"), "{err}");
    assert!(err.contains("more than 32 directory levels"), "{err}");
}

#[test]
fn stack_and_jobs_files_may_not_lead_outside_the_repository() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "stack.yaml", STACK);
    write(outside.path(), "cm.yaml", CM);
    write(outside.path(), "jobs.yaml", "s3ntinel: outside\n");

    let r = repo(&[("stack/s/cm.yaml", CM)]);
    symlink(
        outside.path().join("stack.yaml"),
        r.path().join("stack/s/stack.yaml"),
    )
    .unwrap();
    let err = load_err(r.path());
    assert!(
        err.contains("stack/s/stack.yaml") && err.contains("outside the repository"),
        "{err}"
    );

    let r = repo(&[("stack/s/stack.yaml", STACK), ("stack/s/cm.yaml", CM)]);
    symlink(
        outside.path().join("jobs.yaml"),
        r.path().join("stack/s/jobs.yaml"),
    )
    .unwrap();
    let err = load_err(r.path());
    assert!(
        err.contains("stack/s/jobs.yaml") && err.contains("outside the repository"),
        "{err}"
    );

    // The stacks directory itself, and a stack directory, lead outside.
    let r = repo(&[("README.md", "")]);
    symlink(outside.path(), r.path().join("stack")).unwrap();
    let err = load_err(r.path());
    assert!(
        err.contains("stack") && err.contains("outside the repository"),
        "{err}"
    );
}

/// A stand-in renderer that records that it ran (in `ran`) and prints one ConfigMap: load-level
/// checks must refuse before it runs. The real helm and kubectl are exercised in
/// tests/renderers.rs.
fn marker_renderer(dir: &Path) -> (Renderers, PathBuf) {
    let ran = dir.join("ran");
    let script = dir.join("renderer");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch '{}'\nprintf -- '---\\n# Source: chart/templates/a.yaml\\napiVersion: v1\\nkind: ConfigMap\\nmetadata: {{name: a}}\\n'\n",
            ran.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (
        Renderers {
            helm: script.clone(),
            kubectl: script,
            timeout: std::time::Duration::from_secs(10),
        },
        ran,
    )
}

const KUSTOMIZE_STACK: &str = "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec:\n  namespace: ns\n  kustomize: {path: overlay}\n";
const HELM_STACK: &str = "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec:\n  namespace: ns\n  helm: {chart: chart}\n";

fn kustomization(body: &str) -> String {
    format!("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n{body}")
}

/// Loads with the marker renderer; returns the error and whether the renderer ran.
fn load_with_marker(root: &Path) -> (Result<Vec<LoadedStack>>, bool) {
    let tools = tempfile::tempdir().unwrap();
    let (renderers, ran) = marker_renderer(tools.path());
    let result = load_repo_with(root, None, LoadLimits::default(), &renderers);
    (result, ran.exists())
}

#[test]
fn remote_kustomize_references_are_refused_before_the_renderer_runs() {
    let base = kustomization("resources: [cm.yaml]\n");
    let cases: Vec<(String, &str)> = vec![
        (
            kustomization("resources: [../base, 'https://example.com/x.yaml']\n"),
            "resources[1] \"https://example.com/x.yaml\"",
        ),
        (
            kustomization(
                "resources:\n- github.com/kubernetes-sigs/kustomize//examples/helloWorld?ref=v1.0.6\n",
            ),
            "resources[0] \"github.com/kubernetes-sigs/kustomize//examples/helloWorld?ref=v1.0.6\"",
        ),
        (
            kustomization("bases: ['git::https://example.com/repo.git//base']\n"),
            "bases[0] \"git::https://example.com/repo.git//base\"",
        ),
        (
            kustomization("resources: [../base]\ncomponents: ['ssh://git@example.com/c.git']\n"),
            "components[0] \"ssh://git@example.com/c.git\"",
        ),
        (
            kustomization("resources: [../base]\npatches:\n- path: https://example.com/p.yaml\n"),
            "patches[0].path \"https://example.com/p.yaml\"",
        ),
        (
            kustomization(
                "resources: [../base]\nopenapi: {path: 'https://example.com/schema.json'}\n",
            ),
            "openapi.path \"https://example.com/schema.json\"",
        ),
        (
            kustomization(
                "helmCharts:\n- {name: redis, repo: 'https://charts.example.com', version: 1.0.0}\n",
            ),
            "helmCharts[0].repo \"https://charts.example.com\"",
        ),
        (
            kustomization(
                "resources: [../base]\nconfigMapGenerator:\n- name: g\n  files: ['k=https://example.com/f']\n",
            ),
            "configMapGenerator[0].files[0] \"k=https://example.com/f\"",
        ),
        (
            kustomization(
                "resources: [../base]\ntransformers:\n- |\n  apiVersion: builtin\n  kind: PatchTransformer\n  metadata: {name: t}\n  path: https://example.com/p.yaml\n  target: {kind: ConfigMap}\n",
            ),
            "transformers[0]",
        ),
    ];
    for (overlay, want) in cases {
        let r = repo(&[
            ("stack/s/stack.yaml", KUSTOMIZE_STACK),
            ("stack/s/base/kustomization.yaml", &base),
            ("stack/s/base/cm.yaml", CM),
            ("stack/s/overlay/kustomization.yaml", &overlay),
        ]);
        let (result, ran) = load_with_marker(r.path());
        let err = result.map(|_| ()).unwrap_err().to_string();
        assert!(
            err.contains("stack/s/overlay/kustomization.yaml") && err.contains(want),
            "{want}: {err}"
        );
        assert!(err.contains("remote"), "{err}");
        assert!(!ran, "{want}: the renderer ran");
    }
    // The same through a base: every reachable kustomization is read.
    let r = repo(&[
        ("stack/s/stack.yaml", KUSTOMIZE_STACK),
        (
            "stack/s/base/kustomization.yaml",
            &kustomization("resources: [cm.yaml, 'https://example.com/x.yaml']\n"),
        ),
        ("stack/s/base/cm.yaml", CM),
        (
            "stack/s/overlay/kustomization.yaml",
            &kustomization("resources: [../base]\n"),
        ),
    ]);
    let (result, ran) = load_with_marker(r.path());
    let err = result.map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains("stack/s/base/kustomization.yaml") && err.contains("resources[1]"),
        "{err}"
    );
    assert!(!ran);
    // A local reference that leaves the repository is refused too.
    let r = repo(&[
        ("stack/s/stack.yaml", KUSTOMIZE_STACK),
        (
            "stack/s/overlay/kustomization.yaml",
            &kustomization("resources: [../../../../../../../../etc]\n"),
        ),
    ]);
    let (result, ran) = load_with_marker(r.path());
    let err = result.map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("resources[0]"), "{err}");
    assert!(!ran);
    // Local references only: the renderer runs.
    let r = repo(&[
        ("stack/s/stack.yaml", KUSTOMIZE_STACK),
        ("stack/s/base/kustomization.yaml", &base),
        ("stack/s/base/cm.yaml", CM),
        (
            "stack/s/overlay/kustomization.yaml",
            &kustomization(
                "resources: [../base]\nconfigMapGenerator:\n- name: g\n  literals: ['URL=https://example.com']\n",
            ),
        ),
    ]);
    let (result, ran) = load_with_marker(r.path());
    result.expect("local kustomizations load");
    assert!(ran);
}

#[test]
fn chart_and_kustomize_directories_may_not_hold_links_outside_the_repository() {
    let chart = "apiVersion: v2\nname: web\nversion: 0.1.0\n";
    let r = repo(&[
        ("stack/s/stack.yaml", HELM_STACK),
        ("stack/s/chart/Chart.yaml", chart),
        ("stack/s/chart/templates/cm.yaml", CM),
    ]);
    symlink("/etc", r.path().join("stack/s/chart/files")).unwrap();
    let (result, ran) = load_with_marker(r.path());
    let err = result.map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains("stack/s/chart/files") && err.contains("outside the repository"),
        "{err}"
    );
    assert!(!ran, "helm ran");

    // Hidden entries count too: Helm reads them.
    let r = repo(&[
        ("stack/s/stack.yaml", HELM_STACK),
        ("stack/s/chart/Chart.yaml", chart),
        ("stack/s/chart/templates/cm.yaml", CM),
    ]);
    symlink("/etc/passwd", r.path().join("stack/s/chart/.passwd")).unwrap();
    let (result, ran) = load_with_marker(r.path());
    let err = result.map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("stack/s/chart/.passwd"), "{err}");
    assert!(!ran, "helm ran");

    let r = repo(&[
        ("stack/s/stack.yaml", KUSTOMIZE_STACK),
        (
            "stack/s/overlay/kustomization.yaml",
            &kustomization(
                "resources: [cm.yaml]\nconfigMapGenerator:\n- {name: g, files: [data/passwd]}\n",
            ),
        ),
        ("stack/s/overlay/cm.yaml", CM),
    ]);
    std::fs::create_dir(r.path().join("stack/s/overlay/data")).unwrap();
    symlink("/etc/passwd", r.path().join("stack/s/overlay/data/passwd")).unwrap();
    let (result, ran) = load_with_marker(r.path());
    let err = result.map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains("stack/s/overlay/data/passwd") && err.contains("outside the repository"),
        "{err}"
    );
    assert!(!ran, "kubectl ran");
}

#[test]
fn chart_dependencies_from_repositories_must_be_vendored() {
    let chart = "apiVersion: v2\nname: web\nversion: 0.1.0\ndependencies:\n- name: redis\n  version: 1.2.3\n  repository: https://charts.example.com\n";
    let r = repo(&[
        ("stack/s/stack.yaml", HELM_STACK),
        ("stack/s/chart/Chart.yaml", chart),
        ("stack/s/chart/templates/cm.yaml", CM),
    ]);
    let (result, ran) = load_with_marker(r.path());
    let err = result.map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains("stack/s/chart/Chart.yaml")
            && err.contains("dependencies[0]")
            && err.contains("https://charts.example.com")
            && err.contains("charts/"),
        "{err}"
    );
    assert!(!ran, "helm ran");
    // Vendored (as `helm dependency build` leaves it): the renderer runs.
    write(r.path(), "stack/s/chart/charts/redis-1.2.3.tgz", "");
    let (result, ran) = load_with_marker(r.path());
    result.expect("a vendored dependency loads");
    assert!(ran);
}

#[test]
fn entry_and_file_limits_name_the_place() {
    let r = repo(&[("stack/s/stack.yaml", STACK), ("stack/s/cm.yaml", CM)]);
    for i in 0..30 {
        write(r.path(), &format!("stack/s/many/f{i:02}.txt"), "");
    }
    let limits = LoadLimits {
        max_entries: 20,
        ..LoadLimits::default()
    };
    let err = load_repo(r.path(), None, limits).unwrap_err().to_string();
    assert!(
        err.starts_with("stack/s/many: more than 20 directory entries below "),
        "{err}"
    );
    // A sparse file far over the limit is refused from its size, without reading it.
    let huge = std::fs::File::create(r.path().join("stack/s/huge.yaml")).unwrap();
    huge.set_len(1 << 40).unwrap();
    std::fs::remove_dir_all(r.path().join("stack/s/many")).unwrap();
    let err = load_err(r.path());
    assert!(
        err.starts_with("stack/s/huge.yaml: file is 1099511627776 bytes, over the limit"),
        "{err}"
    );
}

#[test]
fn fifos_and_non_utf8_names_are_errors_not_hangs() {
    let r = repo(&[("stack/s/stack.yaml", STACK), ("stack/s/cm.yaml", CM)]);
    let fifo = r.path().join("stack/s/pipe.yaml");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let err = load_err(r.path());
    assert!(
        err.starts_with("stack/s/pipe.yaml: not a regular file"),
        "{err}"
    );
    std::fs::remove_file(&fifo).unwrap();
    use std::os::unix::ffi::OsStrExt;
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9.yaml");
    std::fs::write(r.path().join("stack/s").join(bad), CM).unwrap();
    let err = load_err(r.path());
    assert!(
        err.starts_with("stack/s/caf\u{fffd}.yaml: the name is not UTF-8"),
        "{err}"
    );
}

#[test]
fn links_inside_the_repository_still_work() {
    // A shared manifest directory linked into a stack, and a linked file.
    let r = repo(&[
        ("stack/s/stack.yaml", STACK),
        ("shared/cm.yaml", CM),
        (
            "shared/more/other.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\n",
        ),
    ]);
    symlink("../../shared", r.path().join("stack/s/common")).unwrap();
    let stacks = load_repo(r.path(), None, LoadLimits::default()).expect("loads");
    let files: Vec<_> = stacks[0]
        .manifests
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    assert_eq!(
        files,
        ["stack/s/common/cm.yaml", "stack/s/common/more/other.yaml"]
    );
}

#[test]
fn chart_schemas_may_not_reference_anything_outside_themselves() {
    let chart = "apiVersion: v2\nname: web\nversion: 0.1.0\n";
    let cases = [
        (
            r##"{"properties": {"a": {"$ref": "etc/passwd"}}}"##,
            "/properties/a/$ref \"etc/passwd\"",
        ),
        (
            r##"{"$ref": "https://example.com/schema.json"}"##,
            "/$ref \"https://example.com/schema.json\"",
        ),
        (
            r##"{"$schema": "https://example.com/meta"}"##,
            "/$schema \"https://example.com/meta\"",
        ),
    ];
    for (schema, want) in cases {
        let r = repo(&[
            ("stack/s/stack.yaml", HELM_STACK),
            ("stack/s/chart/Chart.yaml", chart),
            ("stack/s/chart/templates/cm.yaml", CM),
            ("stack/s/chart/charts/sub/Chart.yaml", chart),
            ("stack/s/chart/charts/sub/values.schema.json", schema),
        ]);
        let (result, ran) = load_with_marker(r.path());
        let err = result.map(|_| ()).unwrap_err().to_string();
        assert!(
            err.contains("stack/s/chart/charts/sub/values.schema.json") && err.contains(want),
            "{want}: {err}"
        );
        assert!(!ran, "helm ran");
    }
    let r = repo(&[
        ("stack/s/stack.yaml", HELM_STACK),
        ("stack/s/chart/Chart.yaml", chart),
        (
            "stack/s/chart/values.schema.json",
            r##"{"$schema": "http://json-schema.org/draft-07/schema#", "definitions": {"x": {"type": "string"}}, "properties": {"a": {"$ref": "#/definitions/x"}}}"##,
        ),
    ]);
    let (result, ran) = load_with_marker(r.path());
    result.expect("a self-contained schema loads");
    assert!(ran);
}

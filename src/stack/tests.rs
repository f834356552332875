//! Fixture-driven tests of loading and rendering: a repository is written into a temporary
//! directory from `(path, text)` pairs and rendered; good input is checked by its objects, bad
//! input by the error it must give (naming the place).

use std::path::Path;

use secrecy::ExposeSecret;
use serde_json::json;

use super::*;

fn write_repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    dir
}

fn render_repo(
    root: &Path,
    profile: Option<&str>,
    creds: Option<&Path>,
) -> Result<Vec<RenderedStack>> {
    let stacks = load_repo(root, profile, LoadLimits::default())?;
    let secrets = read_host_secrets(
        &stacks,
        &crate::credentials::Credentials::in_dir(creds.map(Path::to_owned)),
    )?;
    render(&stacks, &secrets)
}

const WEB_STACK: &str = "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: web}\nspec:\n  namespace: web\n  path: manifests\n  vars: {TAG: '1.0'}\n  profiles:\n    local: {overlays: [overlays/local], vars: {REGISTRY: 'localhost:5000'}}\n    prod: {overlays: [overlays/prod], vars: {REGISTRY: registry.example.internal, TAG: '2.0'}}\n";
const WEB_DEPLOY: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n  template:\n    spec:\n      containers: [{name: web, image: '${REGISTRY}/web:${TAG}'}]\n      volumes: [{name: cfg, configMap: {name: web, defaultMode: 0644}}]\n";
const WEB_NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: web, namespace: ignored}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {enabled: 'yes'}\n";
const LOCAL_OVERLAY: &str = "apiVersion: driftless.dev/v1alpha1\nkind: Overlay\npatches:\n- target: {kind: Deployment, name: web}\n  merge: {spec: {replicas: 2}}\n- target: {kind: ConfigMap, name: web}\n  json: [{op: add, path: /data/profile, value: local}]\n";

fn web_repo() -> Vec<(&'static str, &'static str)> {
    vec![
        ("stack/web/stack.yaml", WEB_STACK),
        ("stack/web/manifests/10-deploy.yaml", WEB_DEPLOY),
        ("stack/web/manifests/00-base.yaml", WEB_NS),
        ("stack/web/overlays/local/patch.yaml", LOCAL_OVERLAY),
        (
            "stack/web/overlays/prod/patch.yaml",
            "apiVersion: driftless.dev/v1alpha1\nkind: Overlay\npatches:\n- target: {kind: Deployment, name: web}\n  merge: {spec: {replicas: 5}}\n",
        ),
    ]
}

#[test]
fn renders_a_stack_with_profile_overlays_and_variables() {
    let repo = write_repo(&web_repo());
    let stacks = render_repo(repo.path(), Some("local"), None).expect("renders");
    assert_eq!(stacks.len(), 1);
    let objs = &stacks[0].objects;
    // Sorted file order: 00-base.yaml (Namespace, ConfigMap) before 10-deploy.yaml.
    let keys: Vec<String> = objs.iter().map(|o| o.key.to_string()).collect();
    assert_eq!(
        keys,
        ["Namespace/web", "ConfigMap/web/web", "Deployment/web/web"]
    );
    let deploy = &objs[2].object;
    assert_eq!(deploy["spec"]["replicas"], json!(2), "merge patch applied");
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"][0]["image"],
        json!("localhost:5000/web:1.0")
    );
    assert_eq!(
        deploy["spec"]["template"]["spec"]["volumes"][0]["configMap"]["defaultMode"],
        json!(420),
        "0644 is octal"
    );
    assert_eq!(
        deploy["metadata"]["labels"][render::STACK_LABEL],
        json!("web")
    );
    assert_eq!(
        deploy["metadata"]["namespace"],
        json!("web"),
        "namespace defaulted"
    );
    assert_eq!(
        objs[1].object["data"],
        json!({"enabled": "yes", "profile": "local"}),
        "quoted 'yes' stays a string; json patch applied"
    );
    assert!(
        objs[0].object["metadata"].get("namespace").is_none(),
        "cluster-scoped object loses its namespace"
    );

    let prod = render_repo(repo.path(), Some("prod"), None).expect("renders prod");
    let deploy = &prod[0].objects[2].object;
    assert_eq!(deploy["spec"]["replicas"], json!(5));
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"][0]["image"],
        json!("registry.example.internal/web:2.0"),
        "profile vars override stack vars"
    );
}

#[test]
fn host_secrets_and_git_secrets_are_held_apart_from_the_object() {
    let mut files = web_repo();
    let stack = "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: db}\nspec:\n  namespace: db\n  secrets:\n  - name: db-credentials\n    fromFiles: {password: db-password}\n";
    files.push(("stack/db/stack.yaml", stack));
    files.push(("stack/db/secret.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: git-secret}\nstringData: {token: s3ntinel-from-git}\ndata: {other: czNudGluZWwtYjY0}\n"));
    let repo = write_repo(&files);
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("db-password"), "s3ntinel-from-host").unwrap();
    let stacks = render_repo(repo.path(), Some("local"), Some(creds.path())).expect("renders");
    let db = stacks.iter().find(|s| s.name == "db").expect("db stack");
    let secret = db
        .objects
        .iter()
        .find(|o| o.key.name == "db-credentials")
        .expect("host secret");
    let data = secret.secret_data.as_ref().expect("secret data");
    assert_eq!(data.0["password"].expose_secret(), b"s3ntinel-from-host");
    let git = db
        .objects
        .iter()
        .find(|o| o.key.name == "git-secret")
        .expect("git secret");
    let git_data = git.secret_data.as_ref().unwrap();
    assert_eq!(git_data.0["token"].expose_secret(), b"s3ntinel-from-git");
    assert_eq!(git_data.0["other"].expose_secret(), b"s3ntinel-b64");
    // Only Secrets made from host files carry the host-secret label (policies tell them apart).
    assert_eq!(
        secret.object["metadata"]["labels"][render::HOST_SECRET_LABEL],
        "true"
    );
    assert!(
        git.object["metadata"]["labels"]
            .get(render::HOST_SECRET_LABEL)
            .is_none()
    );
    // Nothing that prints objects can print a value.
    let printed = format!(
        "{:?} {:?} {}",
        db.objects,
        stacks,
        serde_json::to_string(&secret.object).unwrap()
    );
    assert!(
        !printed.contains("s3ntinel"),
        "secret value printed: {printed}"
    );
    assert!(
        !printed.contains("czNudGluZWwtYjY0"),
        "base64 secret value printed"
    );
    assert_eq!(secret.object["type"], json!("Opaque"));
    assert_eq!(secret.object["metadata"]["namespace"], json!("db"));
}

#[test]
fn stacks_come_in_dependency_order() {
    let stack = |name: &str, deps: &str| {
        format!(
            "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: {name}}}\nspec: {{namespace: x, dependsOn: [{deps}]}}\n"
        )
    };
    let cm = |name: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n");
    let (a, b, c) = (
        stack("a-app", "c-db"),
        stack("b-base", ""),
        stack("c-db", "b-base"),
    );
    let (ca, cb, cc) = (cm("a"), cm("b"), cm("c"));
    let repo = write_repo(&[
        ("stack/a/stack.yaml", &a),
        ("stack/a/cm.yaml", &ca),
        ("stack/b/stack.yaml", &b),
        ("stack/b/cm.yaml", &cb),
        ("stack/c/stack.yaml", &c),
        ("stack/c/cm.yaml", &cc),
    ]);
    let names: Vec<String> = render_repo(repo.path(), None, None)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["b-base", "c-db", "a-app"]);
}

/// Bad input: each case is a repository change and the text its error must contain.
#[test]
fn bad_input_gives_an_error_naming_the_place() {
    let base_stack = "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec: {namespace: ns}\n";
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n";
    let big = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata: {{x: '{}'}}\n",
        "x".repeat(5 * 1024 * 1024)
    );
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, Option<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        ("invalid YAML", vec![("stack/s/a.yaml", "a: [1, 2\nb: 3\n".into())], None, "stack/s/a.yaml:"),
        ("missing kind", vec![("stack/s/a.yaml", "apiVersion: v1\nmetadata: {name: x}\n".into())], None, "stack/s/a.yaml (document 1, stack s): missing `kind`"),
        ("missing apiVersion", vec![("stack/s/a.yaml", "kind: ConfigMap\nmetadata: {name: x}\n".into())], None, "missing `apiVersion`"),
        ("missing name", vec![("stack/s/a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {labels: {a: b}}\n".into())], None, "ConfigMap: missing metadata.name"),
        ("generateName", vec![("stack/s/a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {generateName: x-}\n".into())], None, "generateName is not supported"),
        ("not a mapping", vec![("stack/s/a.yaml", "- just\n- a list\n".into())], None, "document is not a mapping"),
        ("duplicate object", vec![("stack/s/a.yaml", cm.into()), ("stack/s/b.yaml", cm.into())], None, "ConfigMap/ns/c is also defined at stack/s/a.yaml"),
        ("duplicate across stacks", vec![("stack/s/a.yaml", cm.into()), ("stack/t/stack.yaml", base_stack.replace("name: s", "name: t")), ("stack/t/b.yaml", cm.into())], None, "is also defined at"),
        ("undefined variable", vec![("stack/s/a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: '${NOPE}'}\n".into())], None, "stack/s/a.yaml:4: undefined variable ${NOPE}"),
        ("host secret file outside the credentials directory", vec![("stack/s/stack.yaml", format!("{base_stack}  secrets: [{{name: x, fromFiles: {{k: /etc/passwd}}}}]\n").replace("spec: {namespace: ns}\n  secrets", "spec:\n  namespace: ns\n  secrets")), ("stack/s/a.yaml", cm.into())], None, "must be a plain file name in the credentials directory"),
        ("host secret file above the credentials directory", vec![("stack/s/stack.yaml", format!("{base_stack}  secrets: [{{name: x, fromFiles: {{k: ../x}}}}]\n").replace("spec: {namespace: ns}\n  secrets", "spec:\n  namespace: ns\n  secrets")), ("stack/s/a.yaml", cm.into())], None, "spec.secrets[0].fromFiles.k: \"../x\" must be a plain file name"),
        ("missing host secret file", vec![("stack/s/stack.yaml", format!("{base_stack}  secrets: [{{name: x, fromFiles: {{k: no-such-file}}}}]\n").replace("spec: {namespace: ns}\n  secrets", "spec:\n  namespace: ns\n  secrets")), ("stack/s/a.yaml", cm.into())], None, "secret \"x\": spec.secrets[0].fromFiles.k: "),
        ("overlay targets nothing", vec![("stack/s/stack.yaml", "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec:\n  namespace: ns\n  profiles: {p: {overlays: [o]}}\n".into()), ("stack/s/a.yaml", cm.into()), ("stack/s/o/x.yaml", "apiVersion: driftless.dev/v1alpha1\nkind: Overlay\npatches: [{target: {kind: ConfigMap, name: typo}, merge: {data: {a: b}}}]\n".into())], Some("p"), "stack/s/o/x.yaml: overlay patch 1 targets ConfigMap/typo, which stack s does not render"),
        ("overlay patch fails", vec![("stack/s/stack.yaml", "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec:\n  namespace: ns\n  profiles: {p: {overlays: [o]}}\n".into()), ("stack/s/a.yaml", cm.into()), ("stack/s/o/x.yaml", "apiVersion: driftless.dev/v1alpha1\nkind: Overlay\npatches: [{target: {kind: ConfigMap, name: c}, json: [{op: remove, path: /spec/nothing}]}]\n".into())], Some("p"), "overlay patch 1 on ConfigMap/c"),
        ("unknown profile", vec![("stack/s/stack.yaml", "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec:\n  namespace: ns\n  profiles: {local: {}}\n".into()), ("stack/s/a.yaml", cm.into())], Some("prod"), "stack s: no profile \"prod\" (defined: local)"),
        ("dependsOn cycle", vec![("stack/s/stack.yaml", base_stack.replace("{namespace: ns}", "{namespace: ns, dependsOn: [t]}")), ("stack/s/a.yaml", cm.into()), ("stack/t/stack.yaml", base_stack.replace("name: s", "name: t").replace("{namespace: ns}", "{namespace: ns, dependsOn: [s]}")), ("stack/t/b.yaml", cm.replace("name: c", "name: d"))], None, "dependsOn cycle: s → t → s"),
        ("unknown dependency", vec![("stack/s/stack.yaml", base_stack.replace("{namespace: ns}", "{namespace: ns, dependsOn: [ghost]}")), ("stack/s/a.yaml", cm.into())], None, "stack s: dependsOn names unknown stack \"ghost\""),
        ("path escapes with ..", vec![("stack/s/stack.yaml", base_stack.replace("{namespace: ns}", "{namespace: ns, path: ../../..}"))], None, "path leads outside the repository"),
        ("oversized file", vec![("stack/s/a.yaml", big)], None, "over the limit of 4194304 bytes"),
        ("empty render", vec![("stack/s/a.yaml", "# nothing here\n".into())], None, "stack s: renders no objects"),
        ("bad stack file field", vec![("stack/s/stack.yaml", "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec: {namespce: ns}\n".into())], None, "stack/s/stack.yaml"),
        ("wrong stack kind", vec![("stack/s/stack.yaml", "apiVersion: driftless.dev/v1alpha1\nkind: Stak\nmetadata: {name: s}\n".into())], None, "expected apiVersion driftless.dev/v1alpha1 and kind Stack"),
        ("namespaced without namespace", vec![("stack/s/stack.yaml", "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\n".into()), ("stack/s/a.yaml", cm.into())], None, "namespaced object without metadata.namespace"),
        ("bad secret base64", vec![("stack/s/a.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\ndata: {k: 'not base64!'}\n".into())], None, "Secret/x: data.k is not valid base64"),
        ("bad duration", vec![("stack/s/stack.yaml", base_stack.replace("{namespace: ns}", "{namespace: ns, wait: {timeout: 5 minutes}}")), ("stack/s/a.yaml", cm.into())], None, "invalid duration"),
        ("not UTF-8", vec![("stack/s/a.yaml", String::from_utf8_lossy(b"\xff\xfe").into_owned())], None, ""),
    ];
    for (what, changes, profile, want) in cases {
        let mut files: Vec<(&str, String)> = vec![("stack/s/stack.yaml", base_stack.to_owned())];
        for (path, text) in changes {
            files.retain(|(p, _)| *p != path);
            files.push((path, text));
        }
        let refs: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
        let repo = write_repo(&refs);
        if what == "not UTF-8" {
            std::fs::write(repo.path().join("stack/s/a.yaml"), b"\xff\xfe\x00").unwrap();
        }
        let creds = tempfile::tempdir().unwrap();
        let err = match render_repo(repo.path(), profile, Some(creds.path())) {
            Ok(_) => panic!("{what}: rendered, expected an error containing {want:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(want),
            "{what}: error {err:?} does not contain {want:?}"
        );
        if what == "not UTF-8" {
            assert!(err.contains("stack/s/a.yaml: not UTF-8"), "{err}");
        }
    }
}

#[test]
fn symlink_leaving_the_repository_is_refused() {
    let repo = write_repo(&[
        (
            "stack/s/stack.yaml",
            "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec: {namespace: ns}\n",
        ),
        (
            "stack/s/a.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
        ),
    ]);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("x.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: d}\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("x.yaml"),
        repo.path().join("stack/s/link.yaml"),
    )
    .unwrap();
    let err = render_repo(repo.path(), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("stack/s/link.yaml: symlink leads outside the repository"),
        "{err}"
    );
}

#[test]
fn a_repository_without_stacks_is_an_error() {
    let repo = write_repo(&[("README.md", "nothing")]);
    std::fs::create_dir(repo.path().join("stack")).unwrap();
    let err = render_repo(repo.path(), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no stacks found"), "{err}");
}

#[test]
fn jobs_files_are_read_and_checked() {
    let stack = "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\nspec: {namespace: ns}\n";
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n";
    let good = "apiVersion: driftless.dev/v1alpha1\nkind: Backup\nmetadata: {name: pg}\nspec: {schedule: '0 3 * * 1-5', timeZone: Europe/Berlin, startingDeadline: 2h, source: {postgres: {database: app, username: app}}, destination: {local: {path: /b}}, retention: {keepLast: 3}}\n---\napiVersion: driftless.dev/v1alpha1\nkind: ImageCleanup\nmetadata: {name: registry}\nspec: {schedule: '@daily', registry: {url: 'http://r:5000'}, rules: [{repositories: '**', keepLast: 5}]}\n";
    let repo = write_repo(&[
        ("stack/s/stack.yaml", stack),
        ("stack/s/cm.yaml", cm),
        ("stack/s/jobs.yaml", good),
    ]);
    let loaded = load_repo(repo.path(), None, LoadLimits::default()).unwrap();
    let jobs = crate::jobs::model::load_jobs(&loaded).unwrap();
    let names: Vec<(&str, &str)> = jobs.iter().map(|j| (j.name.as_str(), j.kind())).collect();
    assert_eq!(names, [("pg", "Backup"), ("registry", "ImageCleanup")]);
    assert_eq!(
        jobs[0].starting_deadline,
        Some(std::time::Duration::from_secs(7200))
    );
    assert_eq!(jobs[0].schedule.time_zone(), chrono_tz::Europe::Berlin);
    // jobs.yaml is not a manifest.
    assert_eq!(
        render(&loaded, &HostSecrets::new()).unwrap()[0]
            .objects
            .len(),
        1
    );

    let cases = [
        (
            "apiVersion: driftless.dev/v1alpha1\nkind: Backup\nmetadata: {name: pg}\nspec: {schedule: '0 3 * *'}\n",
            "stack/s/jobs.yaml: job pg: cron expression \"0 3 * *\"",
        ),
        (
            "apiVersion: driftless.dev/v1alpha1\nkind: Cleanup\nmetadata: {name: x}\nspec: {schedule: '@daily'}\n",
            "unknown job kind \"Cleanup\"",
        ),
        (
            "apiVersion: driftless.dev/v1alpha1\nkind: Backup\nmetadata: {name: pg}\nspec: {}\n",
            "Backup/pg: missing spec.schedule",
        ),
        (
            "apiVersion: driftless.dev/v1alpha1\nkind: Backup\nmetadata: {name: pg}\nspec: {schedule: '@daily', timeZone: Mars/Olympus}\n",
            "Mars/Olympus",
        ),
        (
            "apiVersion: driftless.dev/v1alpha1\nkind: Backup\nmetadata: {name: pg}\nspec: {schedule: '@daily', source: {postgres: {database: a, username: a}}, destination: {local: {path: /b}}, retention: {keepLast: 1}}\n---\napiVersion: driftless.dev/v1alpha1\nkind: Backup\nmetadata: {name: pg}\nspec: {schedule: '@daily', source: {postgres: {database: a, username: a}}, destination: {local: {path: /b}}, retention: {keepLast: 1}}\n",
            "job name \"pg\" is also used",
        ),
        (
            "apiVersion: driftless.dev/v1alpha1\nkind: Backup\nmetadata: {name: pg}\nspec: {schedule: '@daily', source: {postgres: {database: a, username: a}}, destination: {local: {path: /b}}, retention: {}}\n",
            "stack/s/jobs.yaml: Backup pg: spec.retention: the retention policy keeps nothing",
        ),
        (
            // The kind's own fields are checked at load, naming the field.
            "apiVersion: driftless.dev/v1alpha1\nkind: ImageCleanup\nmetadata: {name: reg}\nspec: {schedule: '@daily', registry: {url: 'http://r'}, rules: [{repositories: '**'}]}\n",
            "stack/s/jobs.yaml: ImageCleanup reg: spec.rules[0]: name at least one of",
        ),
    ];
    for (text, want) in cases {
        let repo = write_repo(&[
            ("stack/s/stack.yaml", stack),
            ("stack/s/cm.yaml", cm),
            ("stack/s/jobs.yaml", text),
        ]);
        let loaded = load_repo(repo.path(), None, LoadLimits::default()).unwrap();
        let err = crate::jobs::model::load_jobs(&loaded)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err:?} lacks {want:?}");
    }
}

#[test]
fn manifests_may_not_claim_the_host_secret_label() {
    let mut files = web_repo();
    files.push(("stack/web/manifests/fake.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: fake, labels: {driftless.dev/host-secret: \"true\"}}\n"));
    let repo = write_repo(&files);
    let err = render_repo(repo.path(), Some("local"), None).expect_err("refused");
    assert!(
        err.to_string()
            .contains("is reserved for Secrets driftless makes from host files"),
        "{err}"
    );
}

#[test]
fn stacks_are_found_in_groups_and_nested_stacks_stay_out_of_their_parent() {
    let stack = |name: &str| {
        format!(
            "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: {name}}}\nspec: {{namespace: ns}}\n"
        )
    };
    let cm = |name: &str| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n");
    let (outer, inner, grouped) = (stack("outer"), stack("inner"), stack("grouped"));
    let (c1, c2, c3) = (cm("outer"), cm("inner"), cm("grouped"));
    let repo = write_repo(&[
        ("stack/outer/stack.yaml", &outer),
        ("stack/outer/cm.yaml", &c1),
        ("stack/outer/inner/stack.yaml", &inner),
        ("stack/outer/inner/cm.yaml", &c2),
        (
            "stack/group/README.md",
            "a group of stacks, no stack itself",
        ),
        ("stack/group/grouped/stack.yaml", &grouped),
        ("stack/group/grouped/cm.yaml", &c3),
        ("stack/.hidden/stack.yaml", &stack("hidden")),
    ]);
    let stacks = render_repo(repo.path(), None, None).unwrap();
    let names: Vec<(&str, Vec<&str>)> = stacks
        .iter()
        .map(|s| {
            let objects = s.objects.iter().map(|o| o.key.name.as_str()).collect();
            (s.name.as_str(), objects)
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("grouped", vec!["grouped"]),
            ("inner", vec!["inner"]),
            ("outer", vec!["outer"]),
        ]
    );
}

/// A stand-in renderer for load-level checks: prints the arguments it was given as a ConfigMap,
/// so that the tests see exactly what driftless passed (the real helm and kubectl are exercised
/// by tests/renderers.rs against the test cluster).
fn echo_renderer(dir: &Path) -> Renderers {
    let script = dir.join("echo-renderer");
    std::fs::write(
        &script,
        "#!/bin/sh\nprintf -- '---\\n# Source: chart/templates/args.yaml\\napiVersion: v1\\nkind: ConfigMap\\nmetadata: {name: args}\\ndata:\\n  args: \"%s\"\\n  text: \"${HOME} $X\"\\n' \"$*\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    Renderers {
        helm: script.clone(),
        kubectl: script,
        timeout: std::time::Duration::from_secs(10),
    }
}

const CHART_STACK: &str = "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: web}\nspec:\n  namespace: web\n  helm: {chart: chart, valuesFiles: [chart/values.yaml]}\n  profiles:\n    local: {helm: {valuesFiles: [values-local.yaml]}}\n";

#[test]
fn chart_stacks_pass_values_files_in_order_and_skip_substitution() {
    let repo = write_repo(&[
        ("stack/web/stack.yaml", CHART_STACK),
        (
            "stack/web/chart/Chart.yaml",
            "apiVersion: v2\nname: web\nversion: 0.1.0\n",
        ),
        ("stack/web/chart/values.yaml", "a: 1\n"),
        ("stack/web/values-local.yaml", "a: 2\n"),
        // Not a manifest of a chart stack: never read as one.
        ("stack/web/stray.yaml", "not: [valid"),
    ]);
    let tools = tempfile::tempdir().unwrap();
    let loaded = load_repo_with(
        repo.path(),
        Some("local"),
        LoadLimits::default(),
        &echo_renderer(tools.path()),
    )
    .expect("loads");
    let stacks = render(&loaded, &HostSecrets::new()).expect("renders");
    let o = &stacks[0].objects[0];
    assert_eq!(
        o.object["data"]["args"],
        "template web stack/web/chart --include-crds --skip-tests --namespace web --values stack/web/chart/values.yaml --values stack/web/values-local.yaml"
    );
    // Rendered text is not run through ${VAR} substitution.
    assert_eq!(o.object["data"]["text"], "${HOME} $X");
    assert_eq!(
        o.place.file,
        Path::new("stack/web/chart/templates/args.yaml")
    );
    assert_eq!(o.object["metadata"]["namespace"], "web");
}

#[test]
fn renderer_settings_are_checked_before_anything_runs() {
    let tools = tempfile::tempdir().unwrap();
    let r = echo_renderer(tools.path());
    let load = |files: &[(&str, &str)]| {
        let repo = write_repo(files);
        load_repo_with(repo.path(), Some("local"), LoadLimits::default(), &r)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let chart = (
        "stack/web/chart/Chart.yaml",
        "apiVersion: v2\nname: web\nversion: 0.1.0\n",
    );
    let values = ("stack/web/chart/values.yaml", "a: 1\n");
    let err = load(&[
        (
            "stack/web/stack.yaml",
            "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: web}\nspec:\n  path: manifests\n  helm: {chart: chart}\n",
        ),
        chart,
    ]);
    assert!(
        err.contains("stack/web/stack.yaml")
            && err.contains("at most one of spec.path, spec.helm and spec.kustomize"),
        "{err}"
    );
    let err = load(&[
        (
            "stack/web/stack.yaml",
            "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: web}\nspec:\n  profiles: {local: {helm: {valuesFiles: [v.yaml]}}}\n",
        ),
        (
            "stack/web/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
        ),
    ]);
    assert!(
        err.contains("spec.profiles.local.helm: the stack has no spec.helm"),
        "{err}"
    );
    let err = load(&[
        ("stack/web/stack.yaml", CHART_STACK),
        values,
        ("stack/web/values-local.yaml", ""),
    ]);
    assert!(
        err.contains("spec.helm.chart") && err.contains("no Chart.yaml"),
        "{err}"
    );
    let err = load(&[("stack/web/stack.yaml", CHART_STACK), chart, values]);
    assert!(
        err.contains("values-local.yaml"),
        "a missing values file is named: {err}"
    );
    let err = load(&[
        (
            "stack/web/stack.yaml",
            "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: web}\nspec:\n  kustomize: {path: base}\n",
        ),
        ("stack/web/base/x.yaml", ""),
    ]);
    assert!(
        err.contains("spec.kustomize.path") && err.contains("no kustomization.yaml"),
        "{err}"
    );
}

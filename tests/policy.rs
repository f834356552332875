//! Policies: the shipped baseline against its fixtures, against the real API server (parity of
//! admit/deny and messages), and a violating revision that must apply nothing of its stack.

mod support;

use support::{driftless, text};

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use driftless::policy::{self, Document, PolicySet, fixtures};
use serde_json::{Value, json};
use support::{TestEnv, TestNamespace, eventually, kubectl_cmd, unique_name};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn offline(args: &[&str]) -> Output {
    // No cluster; the bundled chart and Kustomize stacks need the environment's helm and kubectl.
    let env = TestEnv::get();
    Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["--config", "/nonexistent/driftless.yaml"])
        .args(args)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("DRIFTLESS_HELM", env.var("HELM"))
        .env("DRIFTLESS_KUBECTL", env.var("KUBECTL"))
        .output()
        .expect("run driftless")
}

#[test]
fn shipped_policies_pass_their_fixtures_and_the_bundled_stacks() {
    let out = offline(&["policy", "test", "--path", ROOT]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(" passed, 0 failed"), "{}", text(&out));
    for profile in ["local", "prod"] {
        let out = offline(&[
            "validate",
            "--path",
            ROOT,
            "--profile",
            profile,
            "-o",
            "json",
        ]);
        assert!(out.status.success(), "{profile}: {}", text(&out));
        let report: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(report["valid"], true);
        for stack in report["stacks"].as_array().unwrap() {
            assert_eq!(stack["policy"], json!([]), "{profile}: {stack}");
        }
    }
}

fn kubectl_stdin(args: &[&str], input: &Value) -> Output {
    let mut child = kubectl_cmd()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write kubectl stdin");
    child.wait_with_output().expect("kubectl")
}

/// Deletes the cluster-scoped policies and bindings a test installed, even when it fails.
struct Installed(Vec<(String, String)>);

impl Drop for Installed {
    fn drop(&mut self) {
        for (kind, name) in &self.0 {
            let _ = kubectl_cmd()
                .args(["delete", kind, name, "--ignore-not-found", "--wait=false"])
                .output();
        }
    }
}

/// The API server's informer for a paramKind dies for the life of the process once no binding
/// of a policy with that paramKind is left (seen on 1.35/1.36: every later binding then finds no
/// params). A binding that matches nothing and is never deleted keeps the ConfigMap informer
/// alive across test runs against the same server.
fn ensure_param_informer_anchor() {
    let anchor = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": "driftless-test-configmap-param-anchor"},
         "spec": {"paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
                  "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]},
                  "validations": [{"expression": "true"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": "driftless-test-configmap-param-anchor"},
         "spec": {"policyName": "driftless-test-configmap-param-anchor", "validationActions": ["Audit"],
                  "paramRef": {"name": "none", "namespace": "default", "parameterNotFoundAction": "Allow"},
                  "matchResources": {"namespaceSelector": {"matchLabels": {"driftless.dev/never": "matches"}}}}}
    ]});
    let out = kubectl_stdin(&["apply", "-f", "-"], &anchor);
    assert!(out.status.success(), "anchor: {}", text(&out));
}

/// The server's verdict on a dry-run create: `None` admitted, `Some(message)` denied by `policy`.
fn server_verdict(object: &Value, namespace: &str, policy: &str) -> Option<String> {
    let out = kubectl_stdin(
        &[
            "create",
            "--dry-run=server",
            "-n",
            namespace,
            "-o",
            "name",
            "-f",
            "-",
        ],
        object,
    );
    if out.status.success() {
        return None;
    }
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let marker = format!("ValidatingAdmissionPolicy '{policy}' with binding");
    assert!(
        err.contains(&marker),
        "dry-run of {object} failed for another reason than {policy}: {err}"
    );
    Some(err)
}

/// Is this object only checked through driftless's pod-template autogen (no server equivalent)?
fn autogen_only(object: &Value) -> bool {
    matches!(
        object["kind"].as_str(),
        Some("Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "CronJob")
    )
}

#[test]
fn the_cel_library_fixtures_pass_offline() {
    let path = Path::new(ROOT).join("tests/policy-library");
    let out = offline(&["policy", "test", "--path", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(" passed, 0 failed"), "{}", text(&out));
}

#[tokio::test]
async fn server_side_dry_run_admits_and_denies_exactly_the_fixtures_driftless_does() {
    let compared = parity(policy::POLICY_DIR).await;
    assert!(compared >= 50, "only {compared} fixtures compared");
}

/// The Kubernetes CEL libraries driftless provides (quantity, IP/CIDR, URL, lists) answer as
/// the API server's do: every fixture's verdict and message, which reports each function's result.
#[tokio::test]
async fn the_cel_libraries_agree_with_the_api_server() {
    let compared = parity("tests/policy-library/policies").await;
    assert!(compared >= 80, "only {compared} fixtures compared");
}

/// Installs the policies of `dir` (below the checkout) in the test API server and checks that
/// its server-side dry-run admits and denies exactly the fixtures of `dir/tests` that driftless
/// does, with the same messages. Returns how many fixtures were compared.
async fn parity(dir: &str) -> usize {
    let env = TestEnv::get();
    let root = Path::new(ROOT);
    let docs = policy::load_dir(root, &root.join(dir), &["tests"]).expect("load");
    let tests = fixtures::load_tests(root, &root.join(dir).join("tests")).expect("fixtures");
    let suffix = unique_name("parity");
    // One namespace per policy (its binding selects only that namespace, so the policies are
    // judged one at a time and nothing else in the cluster is affected), one for the params.
    let params_ns = env.namespace("parity-params").await;
    let mut namespaces: BTreeMap<String, TestNamespace> = BTreeMap::new();
    for doc in &docs {
        if doc.value["kind"] == "ValidatingAdmissionPolicy" {
            let name = doc.value["metadata"]["name"].as_str().unwrap().to_owned();
            namespaces.insert(name, env.namespace("parity").await);
        }
    }
    let ns_of = |policy: &str| namespaces[policy].name.clone();
    // A node port of its own: 30500 may be allocated by the bundled stack's test.
    let node_port = 30000 + (rand::random::<u16>() % 400) as i64;
    let mut transformed: Vec<Document> = Vec::new();
    for doc in &docs {
        let mut v = doc.value.clone();
        match v["kind"].as_str() {
            Some("ValidatingAdmissionPolicy") => {
                let name = v["metadata"]["name"].as_str().unwrap().to_owned();
                v["metadata"]["name"] = json!(format!("{name}-{suffix}"));
            }
            Some("ValidatingAdmissionPolicyBinding") => {
                let policy = v["spec"]["policyName"].as_str().unwrap().to_owned();
                assert!(
                    v["spec"].get("matchResources").is_none(),
                    "shipped bindings select by policy"
                );
                v["metadata"]["name"] = json!(format!(
                    "{}-{suffix}",
                    v["metadata"]["name"].as_str().unwrap()
                ));
                v["spec"]["policyName"] = json!(format!("{policy}-{suffix}"));
                v["spec"]["matchResources"] = json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns_of(&policy)}}});
                if v["spec"].get("paramRef").is_some() {
                    v["spec"]["paramRef"]["namespace"] = json!(params_ns.name);
                }
            }
            _ => {
                v["metadata"]["namespace"] = json!(params_ns.name);
                if let Some(ports) = v["data"]["allowedNodePorts"].as_str() {
                    let ports = ports
                        .replace(
                            "storage/",
                            &format!("{}/", ns_of("driftless-service-exposure")),
                        )
                        .replace(":30500", &format!(":{node_port}"));
                    v["data"]["allowedNodePorts"] = json!(ports);
                }
            }
        }
        transformed.push(Document {
            value: v,
            ..doc.clone()
        });
    }
    let set = PolicySet::from_documents(transformed.clone()).expect("transformed policies compile");
    ensure_param_informer_anchor();
    let mut installed = Installed(Vec::new());
    // Params first, then policies, then bindings.
    let rank = |d: &Document| match d.value["kind"].as_str() {
        Some("ValidatingAdmissionPolicy") => 1,
        Some("ValidatingAdmissionPolicyBinding") => 2,
        _ => 0,
    };
    transformed.sort_by_key(rank);
    for d in &transformed {
        let out = kubectl_stdin(&["apply", "-f", "-"], &d.value);
        assert!(
            out.status.success(),
            "install {}: {}",
            d.value["metadata"]["name"],
            text(&out)
        );
        let kind = d.value["kind"].as_str().unwrap();
        if kind.starts_with("ValidatingAdmissionPolicy") {
            installed.0.push((
                kind.to_owned(),
                d.value["metadata"]["name"].as_str().unwrap().to_owned(),
            ));
        }
    }

    let mut compared = 0;
    let mut autogen = 0;
    for test in &tests {
        let renamed = format!("{}-{suffix}", test.policy);
        let ns = ns_of(&test.policy);
        // Wait until the server enforces this policy (bindings take effect asynchronously)
        // with its params (loaded asynchronously too: until then everything is denied).
        let probe = |expect: fixtures::Expect| {
            test.cases
                .iter()
                .find(|c| c.expect == expect && !autogen_only(&c.object))
                .map(|c| {
                    let mut object = c.object.clone();
                    object["metadata"]["namespace"] = json!(ns);
                    object
                })
        };
        for (expect, object) in [
            (fixtures::Expect::Deny, probe(fixtures::Expect::Deny)),
            (fixtures::Expect::Admit, probe(fixtures::Expect::Admit)),
        ] {
            let Some(object) = object else { continue };
            eventually(
                &format!("{renamed} to be enforced"),
                Duration::from_secs(60),
                || {
                    let object = object.clone();
                    let (ns, renamed) = (ns.clone(), renamed.clone());
                    async move {
                        let verdict = server_verdict(&object, &ns, &renamed);
                        let ok = verdict.is_some() == (expect == fixtures::Expect::Deny);
                        if !ok {
                            eprintln!("waiting for {renamed}: {verdict:?}");
                        }
                        ok.then_some(())
                    }
                },
            )
            .await;
        }
        for case in &test.cases {
            if autogen_only(&case.object) {
                autogen += 1;
                continue;
            }
            let mut case = case.clone();
            case.object["metadata"]["namespace"] = json!(ns);
            if let Some(ports) = case
                .object
                .pointer_mut("/spec/ports")
                .and_then(Value::as_array_mut)
            {
                for p in ports.iter_mut().filter(|p| p["nodePort"] == 30500) {
                    p["nodePort"] = json!(node_port);
                }
            }
            let ours = fixtures::evaluate_case(&set, &renamed, &case).expect("evaluates");
            let our_denial = ours.iter().find(|f| f.denies());
            let theirs = server_verdict(&case.object, &ns, &renamed);
            match (our_denial, &theirs) {
                (None, None) => {}
                (Some(f), Some(server)) => assert!(
                    server.contains(&f.message),
                    "{} / {}: messages differ\n driftless: {}\n server: {server}",
                    test.policy,
                    case.name,
                    f.message
                ),
                _ => panic!(
                    "{} / {}: driftless {} but the API server {}",
                    test.policy,
                    case.name,
                    our_denial.map_or("admits".to_owned(), |f| format!("denies ({})", f.message)),
                    theirs.map_or("admits".to_owned(), |e| format!("denies: {e}"))
                ),
            }
            compared += 1;
        }
    }
    eprintln!(
        "parity ({dir}): {compared} fixtures agree with the API server; {autogen} pod-template fixtures are driftless-only"
    );
    drop(installed);
    compared
}

fn write(root: &Path, path: &str, text: &str) {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn copy_policies(to: &Path) {
    let from = Path::new(ROOT).join("policies");
    for entry in std::fs::read_dir(&from).unwrap() {
        let p: PathBuf = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&p, to.join("policies").join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[tokio::test]
async fn a_denied_stack_applies_nothing_and_says_why() {
    let env = TestEnv::get();
    let ns = env.namespace("policy-deny").await;
    let ok_ns = env.namespace("policy-ok").await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("policies")).unwrap();
    copy_policies(&repo);
    const SENTINEL: &str = "s3ntinel-do-not-print";
    // Stack names are cluster-wide (inventories): unique per run.
    let (bad_name, good_name) = (unique_name("bad"), unique_name("good"));
    write(
        &repo,
        "stack/bad/stack.yaml",
        &format!(
            "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: {bad_name}}}\nspec: {{namespace: {}}}\n",
            ns.name
        ),
    );
    write(
        &repo,
        "stack/bad/objects.yaml",
        &format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: harmless}}
data: {{LOG_LEVEL: info}}
---
apiVersion: v1
kind: Secret
metadata: {{name: committed}}
stringData: {{password: {SENTINEL}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      securityContext: {{runAsNonRoot: true, runAsUser: 1000}}
      containers:
        - name: web
          image: nginx:latest
          resources: {{requests: {{cpu: 10m, memory: 16Mi}}, limits: {{memory: 32Mi}}}}
          securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
          readinessProbe: {{httpGet: {{path: /, port: 80}}}}
          livenessProbe: {{httpGet: {{path: /, port: 80}}}}
"#
        ),
    );
    write(
        &repo,
        "stack/good/stack.yaml",
        &format!(
            "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: {good_name}}}\nspec: {{namespace: {}}}\n",
            ok_ns.name
        ),
    );
    write(
        &repo,
        "stack/good/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fine}\ndata: {A: b}\n",
    );
    let config = dir.path().join("driftless.yaml");
    std::fs::write(
        &config,
        format!(
            "instance: {}\nsource: {{path: {}}}\nstateDir: {}\n",
            unique_name("policy"),
            repo.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();

    let out = driftless(&config, &["sync", "--no-wait", "-o", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        !text(&out).contains(SENTINEL),
        "a secret value was printed: {}",
        text(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report");
    let stacks = report["stacks"].as_array().unwrap();
    let bad = stacks
        .iter()
        .find(|s| s["stack"] == bad_name.as_str())
        .expect("bad stack");
    let good = stacks
        .iter()
        .find(|s| s["stack"] == good_name.as_str())
        .expect("good stack");
    assert_eq!(bad["applied"], false);
    assert_eq!(
        good["applied"], true,
        "an unrelated stack still syncs: {good}"
    );
    let error = bad["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("nothing of stack {bad_name} is applied")),
        "{error}"
    );
    assert!(error.contains(&format!("denied by policy driftless-image-references validation 2 (policies/image-references.yaml, binding driftless-image-references): Deployment/{}/web pod template spec.template (stack/bad/objects.yaml): container web (nginx:latest) uses the latest tag", ns.name)), "{error}");
    assert!(error.contains(&format!("denied by policy driftless-no-secrets-in-git validation 1 (policies/no-secrets-in-git.yaml, binding driftless-no-secrets-in-git): Secret/{}/committed (stack/bad/objects.yaml)", ns.name)), "{error}");
    let findings = bad["policy"].as_array().unwrap();
    let image = findings
        .iter()
        .find(|f| f["policy"] == "driftless-image-references")
        .expect("finding");
    assert_eq!(image["validation"], 2);
    assert_eq!(image["object"], format!("Deployment/{}/web", ns.name));
    assert_eq!(image["file"], "stack/bad/objects.yaml");
    assert_eq!(image["podTemplate"], "spec.template");
    assert_eq!(image["actions"], json!(["Deny"]));
    assert!(
        image["message"]
            .as_str()
            .unwrap()
            .contains("pin a version tag or a digest")
    );

    // Nothing of the denied stack reached the cluster, not even its harmless ConfigMap.
    let get = |what: &str, ns: &str| {
        kubectl_cmd()
            .args(["get", what, "-n", ns, "-o", "name"])
            .output()
            .unwrap()
    };
    assert!(!get("configmap/harmless", &ns.name).status.success());
    assert!(!get("deployment/web", &ns.name).status.success());
    assert!(!get("secret/committed", &ns.name).status.success());
    assert!(get("configmap/fine", &ok_ns.name).status.success());

    // The human report and `diff` say the same.
    let out = driftless(&config, &["diff", "--stack", &bad_name]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("denied by policy driftless-image-references validation 2"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(SENTINEL));
    let out = driftless(&config, &["validate"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("invalid: 2 policy denials"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(SENTINEL));
}

#[test]
fn a_policy_cannot_print_a_secret_value() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    const SENTINEL: &str = "s3ntinel-leak-attempt";
    write(
        repo,
        "stack/app/stack.yaml",
        "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: app}\nspec: {namespace: app}\n",
    );
    write(
        repo,
        "stack/app/secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\nstringData: {{password: {SENTINEL}}}\ndata: {{token: czNudGluZWwtbGVhay1hdHRlbXB0}}\n"
        ),
    );
    write(
        repo,
        "policies/leak.yaml",
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: leak}
spec:
  matchConstraints:
    resourceRules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [secrets]}]
  validations:
    - expression: "false"
      messageExpression: "'values: ' + object.?stringData.?password.orValue('none') + ' ' + object.?data.?token.orValue('none')"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: leak}
spec: {policyName: leak, validationActions: [Deny]}
"#,
    );
    for args in [
        &["validate", "--path"][..],
        &["validate", "-o", "json", "--path"][..],
    ] {
        let mut args = args.to_vec();
        let path = repo.display().to_string();
        args.push(&path);
        let out = offline(&args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("values: none none"), "{}", text(&out));
        assert!(!text(&out).contains(SENTINEL), "{}", text(&out));
    }
}

/// A policy in a stack's own `policies/` blocks that stack only: `policy test` runs its
/// fixtures, and a sync applies the other stack while the first applies nothing.
#[tokio::test]
async fn a_stack_local_denial_blocks_only_its_stack() {
    let env = TestEnv::get();
    let (local_ns, other_ns) = (
        env.namespace("policy-local").await,
        env.namespace("policy-other").await,
    );
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let (guarded, open) = (unique_name("guarded"), unique_name("open"));
    for (path, name, ns) in [
        ("stack/team/guarded", &guarded, &local_ns.name),
        ("stack/team/open", &open, &other_ns.name),
    ] {
        write(
            &repo,
            &format!("{path}/stack.yaml"),
            &format!(
                "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: {name}}}\nspec: {{namespace: {ns}}}\n"
            ),
        );
        write(
            &repo,
            &format!("{path}/cm.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {LOG_LEVEL: debug}\n",
        );
    }
    write(
        &repo,
        "stack/team/guarded/policies/log-level.yaml",
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: guarded-log-level}
spec:
  matchConstraints:
    resourceRules: [{apiGroups: [""], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [configmaps]}]
  validations:
    - expression: "object.?data.?LOG_LEVEL.orValue('info') != 'debug'"
      messageExpression: "'ConfigMap ' + object.metadata.name + ' sets LOG_LEVEL=debug: not in this stack'"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: guarded-log-level}
spec: {policyName: guarded-log-level, validationActions: [Deny]}
"#,
    );
    write(
        &repo,
        "stack/team/guarded/policies/tests/log-level.yaml",
        r#"
apiVersion: driftless.dev/v1alpha1
kind: PolicyTest
policy: guarded-log-level
cases:
  - {name: info, expect: admit, object: {apiVersion: v1, kind: ConfigMap, metadata: {name: a}, data: {LOG_LEVEL: info}}}
  - {name: debug, expect: deny, validation: 1, message: "LOG_LEVEL=debug", object: {apiVersion: v1, kind: ConfigMap, metadata: {name: a}, data: {LOG_LEVEL: debug}}}
"#,
    );

    // Offline: the stack's fixtures run with `policy test`, and `validate` denies its stack only.
    let path = repo.display().to_string();
    let out = offline(&["policy", "test", "--path", &path]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("ok   guarded-log-level — debug (expect deny)"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("2 passed, 0 failed"), "{}", text(&out));

    let config = dir.path().join("driftless.yaml");
    std::fs::write(
        &config,
        format!(
            "instance: {}\nsource: {{path: {}}}\nstateDir: {}\n",
            unique_name("policy-local"),
            repo.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = driftless(&config, &["sync", "--no-wait", "-o", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json report");
    let stack = |name: &str| {
        report["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stack"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("stack {name} in {report}"))
    };
    let (blocked, applied) = (stack(&guarded), stack(&open));
    assert_eq!(blocked["applied"], false, "{blocked}");
    assert_eq!(applied["applied"], true, "{applied}");
    assert!(
        applied["policy"].as_array().is_none_or(Vec::is_empty),
        "{applied}"
    );
    let error = blocked["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "denied by policy guarded-log-level validation 1 (stack/team/guarded/policies/log-level.yaml, binding guarded-log-level): ConfigMap/{}/settings (stack/team/guarded/cm.yaml): ConfigMap settings sets LOG_LEVEL=debug: not in this stack",
            local_ns.name
        )),
        "{error}"
    );
    let finding = &blocked["policy"][0];
    assert_eq!(
        finding["policyFile"],
        "stack/team/guarded/policies/log-level.yaml"
    );
    let get = |ns: &str| {
        kubectl_cmd()
            .args(["get", "configmap/settings", "-n", ns, "-o", "name"])
            .output()
            .unwrap()
    };
    assert!(
        !get(&local_ns.name).status.success(),
        "the guarded stack applied nothing"
    );
    assert!(
        get(&other_ns.name).status.success(),
        "the other stack applied"
    );
}

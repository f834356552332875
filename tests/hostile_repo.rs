//! Hostile stack repositories against the real binary and the test cluster: a symlink loop is a
//! load error naming it (never a crash), and nothing of such a revision is applied. Then a
//! property test: generated trees of symlinks (loops, out of the repository, to files and
//! directories), deep nesting, huge and empty files and non-UTF-8 names never make loading
//! panic, abort or hang, and never make it read a file outside the repository.

mod support;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use proptest::prelude::*;
use support::{Repo, TestEnv, driftless, text};

const STACK: &str = "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: ID}\nspec: {namespace: ID}\n";

fn good_stack(repo: &Repo) {
    repo.write("stack/app/stack.yaml", STACK);
    repo.write(
        "stack/app/manifests.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ID}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {a: b}\n",
    );
}

#[test]
fn validate_reports_a_symlink_loop_as_a_load_error() {
    let repo = Repo::new("loop", "");
    good_stack(&repo);
    for i in 0..10 {
        symlink(".", repo.path().join(format!("stack/app/loop{i}"))).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_driftless"))
        .args(["validate", "--path"])
        .arg(repo.path())
        .output()
        .expect("run driftless");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "exit 2, not a crash: {t}");
    assert!(
        t.contains("stack/app/loop0: symlink loop: it leads back to stack/app"),
        "{t}"
    );
    assert!(
        !t.contains("stack overflow") && !t.contains("manifest files"),
        "{t}"
    );
}

#[tokio::test]
async fn sync_of_a_revision_with_a_symlink_loop_applies_nothing() {
    let repo = Repo::new("loop", "");
    good_stack(&repo);
    // A second stack, fine itself, beside the broken one: nothing of either is applied.
    repo.write(
        "stack/other/stack.yaml",
        &STACK.replace("name: ID", "name: ID-other"),
    );
    repo.write(
        "stack/other/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\n",
    );
    std::fs::create_dir_all(repo.path().join("stack/app/sub")).unwrap();
    symlink("..", repo.path().join("stack/app/sub/up")).unwrap();
    let out = driftless(&repo.config, &["sync"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("stack/app/sub/up: symlink loop"), "{t}");
    let client = TestEnv::get().kube_client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(
        namespaces.get_opt(&repo.id).await.unwrap().is_none(),
        "nothing applied"
    );
    let cms: Api<ConfigMap> = Api::namespaced(client, &repo.id);
    assert!(cms.get_opt("settings").await.unwrap().is_none());
    assert!(cms.get_opt("other").await.unwrap().is_none());
}

// ---- The property test ----

/// What the files outside the repository hold: it must never appear in what loading returns.
const SENTINEL: &str = "S3NTINEL_OUTSIDE_THE_REPOSITORY";

#[derive(Debug, Clone)]
enum Content {
    Empty,
    Manifest,
    Invalid,
    /// A sparse file over the size limit.
    Huge,
    NotUtf8,
}

#[derive(Debug, Clone)]
enum Target {
    /// `.`, `..`, `../..`, …: loops, and with enough levels a way out of the repository.
    Up(usize),
    OutsideFile,
    OutsideDir,
    Absolute,
    /// A name in the same directory (maybe a directory, a file, a link, or nothing).
    Sibling(String),
    /// A manifest and a directory of manifests elsewhere in the repository (absolute paths).
    SharedFile,
    SharedDir,
}

#[derive(Debug, Clone)]
enum Node {
    File(String, Content),
    Dir(String, Vec<Node>),
    Link(String, Target),
    /// `n` nested directories with a manifest at the bottom.
    Chain(usize),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b.yaml".to_owned()),
        Just("c.yml".to_owned()),
        Just("d.json".to_owned()),
        Just(".hidden".to_owned()),
        Just("policies".to_owned()),
        Just("tests".to_owned()),
        Just("charts".to_owned()),
        Just("templates".to_owned()),
        Just("kustomization.yaml".to_owned()),
    ]
}

fn node() -> impl Strategy<Value = Node> {
    let content = prop_oneof![
        Just(Content::Empty),
        Just(Content::Manifest),
        Just(Content::Manifest),
        Just(Content::Invalid),
        Just(Content::Huge),
        Just(Content::NotUtf8),
    ];
    let target = prop_oneof![
        2 => (0usize..6).prop_map(Target::Up),
        1 => Just(Target::OutsideFile),
        1 => Just(Target::OutsideDir),
        1 => Just(Target::Absolute),
        2 => name().prop_map(Target::Sibling),
        2 => Just(Target::SharedFile),
        2 => Just(Target::SharedDir),
    ];
    let leaf = prop_oneof![
        8 => (name(), content).prop_map(|(n, c)| Node::File(n, c)),
        3 => (name(), target).prop_map(|(n, t)| Node::Link(n, t)),
        1 => (1usize..40).prop_map(Node::Chain),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        (name(), prop::collection::vec(inner, 0..5)).prop_map(|(n, c)| Node::Dir(n, c))
    })
}

/// A generated repository: the nodes to place in the stack `s` (plain manifests), in the chart
/// of the stack `c`, in `policies/` and in `stack/` itself, and where to put a name that is not
/// UTF-8 (rarely: it fails any load that meets it).
#[derive(Debug, Clone)]
struct Tree {
    places: [Vec<Node>; 4],
    bad_name: Option<usize>,
}

fn tree() -> impl Strategy<Value = Tree> {
    let nodes = || prop::collection::vec(node(), 0..4);
    let bad_name = prop_oneof![9 => Just(None), 1 => (0usize..4).prop_map(Some)];
    (nodes(), nodes(), nodes(), nodes(), bad_name).prop_map(|(a, b, c, d, bad_name)| Tree {
        places: [a, b, c, d],
        bad_name,
    })
}

struct World {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    outside: PathBuf,
    renderer: PathBuf,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(outside.join("dir")).unwrap();
    let secret = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: outside}}\ndata: {{k: {SENTINEL}}}\n"
    );
    std::fs::write(outside.join("secret.yaml"), &secret).unwrap();
    std::fs::write(outside.join("dir/secret.yaml"), &secret).unwrap();
    // The chart's renderer reads nothing: it prints one object.
    let renderer = dir.path().join("renderer");
    std::fs::write(
        &renderer,
        "#!/bin/sh\nprintf -- '---\\n# Source: c/templates/x.yaml\\napiVersion: v1\\nkind: ConfigMap\\nmetadata: {name: rendered}\\n'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&renderer, std::fs::Permissions::from_mode(0o755)).unwrap();
    World {
        _dir: dir,
        repo,
        outside,
        renderer,
    }
}

fn materialize(w: &World, dir: &Path, nodes: &[Node], counter: &mut usize) {
    std::fs::create_dir_all(dir).unwrap();
    for n in nodes {
        *counter += 1;
        match n {
            Node::File(name, content) => {
                let path = dir.join(name);
                if path.symlink_metadata().is_ok() {
                    continue;
                }
                match content {
                    Content::Empty => std::fs::write(&path, "").unwrap(),
                    Content::Manifest => std::fs::write(
                        &path,
                        format!(
                            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{counter}}}\n"
                        ),
                    )
                    .unwrap(),
                    Content::Invalid => std::fs::write(&path, "a: [1, 2\n").unwrap(),
                    Content::Huge => std::fs::File::create(&path)
                        .unwrap()
                        .set_len(5 * 1024 * 1024 * 1024)
                        .unwrap(),
                    Content::NotUtf8 => std::fs::write(&path, b"\xff\xfe\x00").unwrap(),
                }
            }
            Node::Dir(name, children) => {
                let path = dir.join(name);
                if path.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                    continue;
                }
                materialize(w, &path, children, counter);
            }
            Node::Link(name, target) => {
                let path = dir.join(name);
                if path.symlink_metadata().is_ok() {
                    continue;
                }
                let to: PathBuf = match target {
                    Target::Up(0) => ".".into(),
                    Target::Up(k) => (0..*k).map(|_| "..").collect::<Vec<_>>().join("/").into(),
                    Target::OutsideFile => w.outside.join("secret.yaml"),
                    Target::OutsideDir => w.outside.join("dir"),
                    Target::Absolute => "/etc".into(),
                    Target::Sibling(s) => s.into(),
                    Target::SharedFile => w.repo.join("shared/cm.yaml"),
                    Target::SharedDir => w.repo.join("shared/dir"),
                };
                symlink(to, path).unwrap();
            }
            Node::Chain(levels) => {
                let mut path = dir.join(format!("chain{counter}"));
                for i in 0..*levels {
                    path = path.join(format!("l{i}"));
                }
                std::fs::create_dir_all(&path).unwrap();
                std::fs::write(
                    path.join("deep.yaml"),
                    format!(
                        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: deep-{counter}}}\n"
                    ),
                )
                .unwrap();
            }
        }
    }
}

/// Everything loading made of the repository at `root`, as text: the loaded and rendered stacks
/// (every file's text), the policy files, or the errors.
fn load_everything(root: &Path, renderer: &Path) -> String {
    let renderers = driftless::stack::Renderers {
        helm: renderer.to_owned(),
        kubectl: renderer.to_owned(),
        timeout: Duration::from_secs(10),
    };
    let mut seen = String::new();
    let loaded = driftless::stack::load_repo_with(
        root,
        None,
        driftless::stack::LoadLimits::default(),
        &renderers,
    );
    match &loaded {
        Ok(stacks) => {
            seen.push_str(&format!("{stacks:?}\n"));
            let creds = driftless::credentials::Credentials::in_dir(None);
            match driftless::stack::render_loaded(stacks, &creds, true) {
                Ok((rendered, _)) => {
                    seen.push_str(&format!("{rendered:?}\n"));
                    match driftless::policy::load_policies(root, &rendered) {
                        Ok(_) => {}
                        Err(e) => seen.push_str(&format!("error: {e}\n")),
                    }
                }
                Err(e) => seen.push_str(&format!("error: {e}\n")),
            }
        }
        Err(e) => seen.push_str(&format!("error: {e}\n")),
    }
    match driftless::policy::revision_policy_files(root) {
        Ok(files) => seen.push_str(&format!("{files:?}\n")),
        Err(e) => seen.push_str(&format!("error: {e}\n")),
    }
    match driftless::stack::load::stack_files(root) {
        Ok(files) => seen.push_str(&format!("{files:?}\n")),
        Err(e) => seen.push_str(&format!("error: {e}\n")),
    }
    seen
}

/// The path an error about leaving the repository names (`…: <path>: symlink leads outside`),
/// if it is a path in the repository.
fn named_path(root: &Path, error: &str) -> Option<PathBuf> {
    let before = &error[..error.find("leads outside")?];
    let before = before
        .trim_end_matches("symlink ")
        .trim_end_matches("path ")
        .trim_end_matches(": ");
    let path = before.rsplit_once(": ").map_or(before, |(_, p)| p);
    let path = root.join(path);
    path.symlink_metadata().ok().map(|_| path)
}

/// Whether `path` or a directory on the way to it (below `root`) is a symlink.
fn through_symlink(root: &Path, path: &Path) -> bool {
    path.ancestors()
        .take_while(|p| p.starts_with(root) && *p != root)
        .any(|p| {
            p.symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink())
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn loading_a_generated_tree_never_panics_hangs_or_reads_outside(tree in tree()) {
        let w = world();
        let places = ["stack/s", "stack/c/chart", "policies", "stack"];
        let mut counter = 0;
        std::fs::create_dir_all(w.repo.join("shared/dir")).unwrap();
        std::fs::write(
            w.repo.join("shared/cm.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shared}\n",
        )
        .unwrap();
        std::fs::write(
            w.repo.join("shared/dir/cm.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shared-dir}\n",
        )
        .unwrap();
        for (place, nodes) in places.iter().zip(&tree.places) {
            materialize(&w, &w.repo.join(place), nodes, &mut counter);
        }
        if let Some(i) = tree.bad_name {
            let bad = std::ffi::OsStr::from_bytes(b"bad-\xff.yaml");
            std::fs::write(w.repo.join(places[i]).join(bad), "").unwrap();
        }
        // Stack files last, over whatever the tree put there.
        let stack = |name: &str, extra: &str| {
            format!("apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {{name: {name}}}\nspec:\n  namespace: ns\n{extra}")
        };
        for (path, text) in [
            ("stack/s/stack.yaml", stack("s", "")),
            ("stack/s/base.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: base}\n".to_owned()),
            ("stack/c/stack.yaml", stack("c", "  helm: {chart: chart}\n")),
            ("stack/c/chart/Chart.yaml", "apiVersion: v2\nname: c\nversion: 0.1.0\n".to_owned()),
        ] {
            let p = w.repo.join(path);
            if p.symlink_metadata().is_ok_and(|m| !m.is_file()) {
                let _ = std::fs::remove_file(&p);
                let _ = std::fs::remove_dir_all(&p);
            }
            if p.parent().is_some_and(Path::is_dir) {
                std::fs::write(&p, text).unwrap();
            }
        }

        let (root, renderer) = (w.repo.clone(), w.renderer.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let _ = tx.send(load_everything(&root, &renderer));
        });
        let seen = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(seen) => seen,
            // The worker is left behind: joining a hung thread would hang the test.
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                return Err(TestCaseError::fail("loading hung (no result within 20 s)"));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(TestCaseError::fail(format!(
                    "loading panicked: {:?}",
                    worker.join().err()
                )));
            }
        };
        prop_assert!(!seen.contains(SENTINEL), "read outside the repository:\n{seen}");
        for line in seen.lines().filter_map(|l| l.strip_prefix("error: ")) {
            if line.contains("outside the repository") {
                let named = named_path(&w.repo, line);
                prop_assert!(
                    named.as_ref().is_some_and(|p| through_symlink(&w.repo, p)),
                    "an error about leaving the repository names a symlink: {line}"
                );
            }
        }
    }
}

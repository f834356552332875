//! `driftless init`: the starter repository validates, passes its policy fixtures and syncs to
//! healthy on the test cluster; completions and man pages come from the command definitions.

mod support;

use std::process::Command;

use support::{TestEnv, driftless, kubectl, text};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_driftless"))
}

#[test]
fn the_starter_repository_validates_and_syncs_to_healthy() {
    let env = TestEnv::get();
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let out = bin().arg("init").arg(&repo).output().expect("init");
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("driftless validate --path"), "{said}");

    // Never overwrites.
    let again = bin().arg("init").arg(&repo).output().expect("init again");
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(
        text(&again).contains("never overwrites"),
        "{}",
        text(&again)
    );

    let config = dir.path().join("driftless.yaml");
    std::fs::write(
        &config,
        format!(
            // A fixed instance: the starter's stack name is fixed, and a rerun must own it.
            "instance: init-test\nstateDir: {}\n",
            dir.path().join("state").display()
        ),
    )
    .expect("config");
    let repo_arg = repo.to_str().expect("utf-8 path");
    for profile in ["local", "prod"] {
        let out = driftless(
            &config,
            &["validate", "--path", repo_arg, "--profile", profile],
        );
        assert!(out.status.success(), "{profile}: {}", text(&out));
        assert!(
            text(&out).contains("valid: 1 stacks, 4 objects"),
            "{}",
            text(&out)
        );
    }
    let out = driftless(&config, &["policy", "test", "--path", repo_arg]);
    assert!(out.status.success(), "{}", text(&out));

    // The starter's namespace is fixed (`hello`): this is the only test that syncs it.
    let out = driftless(&config, &["sync", "--path", repo_arg, "--profile", "local"]);
    assert!(out.status.success(), "{}", text(&out));
    let ready = kubectl(&[
        "get",
        "deployment",
        "hello",
        "-n",
        "hello",
        "-o",
        "jsonpath={.status.availableReplicas}/{.spec.template.spec.containers[0].resources.limits.cpu}",
    ]);
    assert_eq!(ready, "1/100m", "the local profile's replicas and overlay");
    let greeting = kubectl(&[
        "get",
        "configmap",
        "hello",
        "-n",
        "hello",
        "-o",
        "jsonpath={.data.greeting}",
    ]);
    assert_eq!(greeting, "hello from a laptop");
    let _ = env;
}

#[test]
fn completions_and_manual_pages_come_from_the_command_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = bin().args(["completions", shell]).output().expect("run");
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        for sub in ["validate", "sync", "backup", "init"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let out = bin().arg("man").output().expect("run");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH driftless"),
        "{page}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bin()
        .args(["man", "--out-dir"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    for page in [
        "driftless.1",
        "driftless-sync.1",
        "driftless-backup-restore.1",
    ] {
        let p = dir.path().join(page);
        let roff = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(roff.contains(".TH"), "{page}");
    }
}

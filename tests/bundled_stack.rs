//! The bundled `stack/` validates offline and syncs to healthy on the test cluster.

mod support;

use support::{driftless, text};

use std::process::Command;

use support::TestEnv;

#[test]
fn bundled_stacks_validate_offline() {
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("absent.yaml");
    for profile in ["local", "prod"] {
        let out = driftless(
            &none,
            &[
                "validate",
                "--path",
                env!("CARGO_MANIFEST_DIR"),
                "--profile",
                profile,
            ],
        );
        assert!(out.status.success(), "{profile}: {}", text(&out));
        assert!(text(&out).contains("valid: 3 stacks"), "{}", text(&out));
    }
}

#[test]
fn bundled_stacks_sync_to_healthy_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    for (file, value) in [
        ("minio-root-user", "ducklake"),
        ("minio-root-password", "minio-demo-password"),
        ("postgres-password", "pg-demo-password"),
    ] {
        std::fs::write(creds.join(file), value).unwrap();
    }
    let config = dir.path().join("driftless.yaml");
    // A fixed instance name: a rerun against the same cluster converges instead of colliding.
    std::fs::write(
        &config,
        format!(
            "instance: bundled-stack-test\nsource: {{path: {}}}\nprofile: local\ncredentialsDir: {}\n",
            env!("CARGO_MANIFEST_DIR"),
            creds.display()
        ),
    )
    .unwrap();
    let out = driftless(&config, &["sync"]);
    assert!(out.status.success(), "sync: {}", text(&out));
    for stack in ["ducklake-base", "ducklake-storage", "ducklake-app"] {
        assert!(
            text(&out).contains(&format!("stack {stack}: applied")),
            "{stack}: {}",
            text(&out)
        );
    }
    assert!(!text(&out).contains("unhealthy"), "{}", text(&out));
    let env = TestEnv::get();
    let kubectl = |args: &[&str]| {
        support::run_ok(
            Command::new(env.var("KUBECTL"))
                .arg("--kubeconfig")
                .arg(env.var("KUBECONFIG"))
                .args(args),
        )
    };
    assert_eq!(
        kubectl(&[
            "get",
            "deploy",
            "ducklake-backend",
            "-n",
            "ducklake",
            "-o",
            "jsonpath={.status.availableReplicas}"
        ]),
        "2"
    );
    assert_eq!(
        kubectl(&[
            "get",
            "pvc",
            "docker-registry-data",
            "-n",
            "storage",
            "-o",
            "jsonpath={.status.phase}"
        ]),
        "Bound"
    );
    assert_eq!(
        kubectl(&[
            "get",
            "svc",
            "docker-registry",
            "-n",
            "storage",
            "-o",
            "jsonpath={.spec.ports[0].nodePort}"
        ]),
        "30500",
        "local overlay"
    );
    let out = driftless(&config, &["diff"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "second run has no changes: {}",
        text(&out)
    );
}

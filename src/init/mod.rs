//! `driftless init DIR`: a starter stack repository that `validate` accepts — one stack with a
//! profile, the shipped policies with their parameters and fixtures (verbatim: the parameters
//! name the bundled stacks' registries, and the fixtures test them), a `jobs.yaml` of commented
//! examples — and the next commands to run. It never overwrites: the directory must be empty or
//! absent.

use std::path::{Path, PathBuf};

/// Errors writing the starter repository.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} exists and is not an empty directory: driftless init never overwrites")]
    NotEmpty { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The files of the starter repository: path relative to its root, content.
const FILES: &[(&str, &str)] = &[
    ("README.md", include_str!("starter/README.md")),
    ("health/README.md", include_str!("starter/health/README.md")),
    (
        "policies/allowed-registries.yaml",
        include_str!("../../policies/allowed-registries.yaml"),
    ),
    (
        "policies/drop-all-capabilities.yaml",
        include_str!("../../policies/drop-all-capabilities.yaml"),
    ),
    (
        "policies/host-isolation.yaml",
        include_str!("../../policies/host-isolation.yaml"),
    ),
    (
        "policies/image-references.yaml",
        include_str!("../../policies/image-references.yaml"),
    ),
    (
        "policies/no-credentials-in-configmaps.yaml",
        include_str!("../../policies/no-credentials-in-configmaps.yaml"),
    ),
    (
        "policies/no-credentials-in-env.yaml",
        include_str!("../../policies/no-credentials-in-env.yaml"),
    ),
    (
        "policies/no-default-credentials.yaml",
        include_str!("../../policies/no-default-credentials.yaml"),
    ),
    (
        "policies/no-privilege-escalation.yaml",
        include_str!("../../policies/no-privilege-escalation.yaml"),
    ),
    (
        "policies/no-secrets-in-git.yaml",
        include_str!("../../policies/no-secrets-in-git.yaml"),
    ),
    (
        "policies/probes.yaml",
        include_str!("../../policies/probes.yaml"),
    ),
    (
        "policies/read-only-root-filesystem.yaml",
        include_str!("../../policies/read-only-root-filesystem.yaml"),
    ),
    (
        "policies/resources.yaml",
        include_str!("../../policies/resources.yaml"),
    ),
    (
        "policies/run-as-non-root.yaml",
        include_str!("../../policies/run-as-non-root.yaml"),
    ),
    (
        "policies/service-exposure.yaml",
        include_str!("../../policies/service-exposure.yaml"),
    ),
    (
        "policies/tests/allowed-registries.yaml",
        include_str!("../../policies/tests/allowed-registries.yaml"),
    ),
    (
        "policies/tests/drop-all-capabilities.yaml",
        include_str!("../../policies/tests/drop-all-capabilities.yaml"),
    ),
    (
        "policies/tests/host-isolation.yaml",
        include_str!("../../policies/tests/host-isolation.yaml"),
    ),
    (
        "policies/tests/image-references.yaml",
        include_str!("../../policies/tests/image-references.yaml"),
    ),
    (
        "policies/tests/no-credentials-in-configmaps.yaml",
        include_str!("../../policies/tests/no-credentials-in-configmaps.yaml"),
    ),
    (
        "policies/tests/no-credentials-in-env.yaml",
        include_str!("../../policies/tests/no-credentials-in-env.yaml"),
    ),
    (
        "policies/tests/no-default-credentials.yaml",
        include_str!("../../policies/tests/no-default-credentials.yaml"),
    ),
    (
        "policies/tests/no-privilege-escalation.yaml",
        include_str!("../../policies/tests/no-privilege-escalation.yaml"),
    ),
    (
        "policies/tests/no-secrets-in-git.yaml",
        include_str!("../../policies/tests/no-secrets-in-git.yaml"),
    ),
    (
        "policies/tests/probes.yaml",
        include_str!("../../policies/tests/probes.yaml"),
    ),
    (
        "policies/tests/read-only-root-filesystem.yaml",
        include_str!("../../policies/tests/read-only-root-filesystem.yaml"),
    ),
    (
        "policies/tests/resources.yaml",
        include_str!("../../policies/tests/resources.yaml"),
    ),
    (
        "policies/tests/run-as-non-root.yaml",
        include_str!("../../policies/tests/run-as-non-root.yaml"),
    ),
    (
        "policies/tests/service-exposure.yaml",
        include_str!("../../policies/tests/service-exposure.yaml"),
    ),
    (
        "stack/hello/jobs.yaml",
        include_str!("starter/stack/hello/jobs.yaml"),
    ),
    (
        "stack/hello/manifests/00-namespace.yaml",
        include_str!("starter/stack/hello/manifests/00-namespace.yaml"),
    ),
    (
        "stack/hello/manifests/10-config.yaml",
        include_str!("starter/stack/hello/manifests/10-config.yaml"),
    ),
    (
        "stack/hello/manifests/20-web.yaml",
        include_str!("starter/stack/hello/manifests/20-web.yaml"),
    ),
    (
        "stack/hello/overlays/local/replicas.yaml",
        include_str!("starter/stack/hello/overlays/local/replicas.yaml"),
    ),
    (
        "stack/hello/stack.yaml",
        include_str!("starter/stack/hello/stack.yaml"),
    ),
    (
        "policies/params.yaml",
        include_str!("../../policies/params.yaml"),
    ),
];

/// Writes the starter repository into `dir` (created when absent) and returns the paths
/// written, relative to `dir`.
pub fn write_starter(dir: &Path) -> Result<Vec<&'static str>, Error> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::NotEmpty {
                    path: dir.to_owned(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(Error::NotEmpty {
                path: dir.to_owned(),
            });
        }
        Err(e) => return Err(io(dir)(e)),
    }
    let mut written = Vec::new();
    for (rel, text) in FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        // create_new: a file that appeared meanwhile is never overwritten.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(text.as_bytes()).map_err(io(&path))?;
        written.push(*rel);
    }
    Ok(written)
}

/// What to run next, for the message `init` prints.
pub fn next_steps(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "Next:\n  driftless validate --path {d}            # load, render and check the policies offline\n  driftless diff --path {d} --profile local   # what a sync would change in your cluster\n  driftless sync --path {d} --profile local   # apply it\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_starter_and_never_overwrites() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("repo");
        let written = write_starter(&root).expect("written");
        assert!(written.contains(&"stack/hello/stack.yaml"));
        assert!(written.contains(&"policies/params.yaml"));
        assert!(root.join("policies/tests/no-secrets-in-git.yaml").is_file());
        // Again: refused, nothing changed.
        std::fs::write(root.join("stack/hello/stack.yaml"), "mine").expect("write");
        let err = write_starter(&root).expect_err("not empty");
        assert!(matches!(err, Error::NotEmpty { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(root.join("stack/hello/stack.yaml")).expect("read"),
            "mine"
        );
        // A file in the way is refused too.
        let file = d.path().join("file");
        std::fs::write(&file, "x").expect("write");
        assert!(matches!(write_starter(&file), Err(Error::NotEmpty { .. })));
    }

    #[test]
    fn the_starter_loads_renders_and_passes_its_policies() {
        let d = tempfile::tempdir().expect("tempdir");
        write_starter(d.path()).expect("written");
        for profile in [None, Some("local"), Some("prod")] {
            let loaded =
                crate::stack::load_repo(d.path(), profile, crate::stack::LoadLimits::default())
                    .expect("loads");
            let jobs = crate::jobs::model::load_jobs(&loaded).expect("jobs");
            assert!(jobs.is_empty());
            let (stacks, _) = crate::stack::render_loaded(
                &loaded,
                &crate::credentials::Credentials::default(),
                true,
            )
            .expect("renders");
            let policies = crate::policy::load_policies(d.path(), &stacks).expect("policies");
            let findings = policies.check_offline(&stacks);
            assert!(
                findings.iter().all(|(_, f)| f.is_empty()),
                "{profile:?}: {findings:?}"
            );
        }
    }
}

//! Where a local destination may lie on the ops host. The stack repository chooses
//! `destination.local.path`; the host configuration bounds it: it must resolve (symlinks and `..`
//! followed, as the kernel will) under `jobs.localBackupRoot`, and neither it nor the job's
//! directories in it may overlap the state, configuration or credentials directories, or be `/`.
//! A run removes files under the job's directory, so a destination there could delete driftless's
//! own state or secrets.

use std::path::{Component, Path, PathBuf};

/// What a local destination must stay clear of.
#[derive(Debug, Clone, Default)]
pub struct LocalRules {
    /// `jobs.localBackupRoot` (none: local destinations are refused).
    pub root: Option<PathBuf>,
    /// Directories no destination may overlap, with how messages name them.
    pub protected: Vec<(&'static str, PathBuf)>,
}

/// Why a local destination is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error(
        "{path}: local destinations need jobs.localBackupRoot in the host configuration (a directory under which jobs may write backups)"
    )]
    NoRoot { path: String },
    #[error("{path} resolves to /, the file system root")]
    FileSystemRoot { path: String },
    #[error("{path}{resolved}: inside the {what} {dir}")]
    Inside {
        path: String,
        /// ` (resolves to …)` when links or `..` lead elsewhere, else empty.
        resolved: String,
        what: &'static str,
        dir: String,
    },
    #[error("{path}: the job's directory {work} overlaps the {what} {dir}")]
    Overlaps {
        path: String,
        work: String,
        what: &'static str,
        dir: String,
    },
    #[error(
        "{path}{resolved}: outside jobs.localBackupRoot {root} (set in the host configuration)"
    )]
    OutsideRoot {
        path: String,
        resolved: String,
        root: String,
    },
    #[error("{path}: {link} is a symbolic link to nowhere")]
    DanglingLink { path: String, link: String },
}

/// Checks a local destination for `job` (which writes `<path>/<job>` and `<path>/<job>.drill`);
/// returns the resolved destination.
pub fn check_local(path: &Path, job: &str, rules: &LocalRules) -> Result<PathBuf, Refused> {
    let shown = path.display().to_string();
    let resolve = |p: &Path| {
        resolve(p).map_err(|link| Refused::DanglingLink {
            path: shown.clone(),
            link: link.display().to_string(),
        })
    };
    let dest = resolve(path)?;
    if dest.parent().is_none() {
        return Err(Refused::FileSystemRoot { path: shown });
    }
    let work = [
        resolve(&path.join(job))?,
        resolve(&path.join(format!("{job}.drill")))?,
    ];
    for (what, dir) in &rules.protected {
        let dir = resolve(dir)?;
        if dest.starts_with(&dir) {
            return Err(Refused::Inside {
                resolved: resolved_note(path, &dest),
                path: shown,
                what,
                dir: dir.display().to_string(),
            });
        }
        if let Some(w) = work
            .iter()
            .find(|w| w.starts_with(&dir) || dir.starts_with(w))
        {
            return Err(Refused::Overlaps {
                path: shown,
                work: w.display().to_string(),
                what,
                dir: dir.display().to_string(),
            });
        }
    }
    let Some(root) = &rules.root else {
        return Err(Refused::NoRoot { path: shown });
    };
    let root = resolve(root)?;
    if let Some(outside) = std::iter::once(&dest)
        .chain(&work)
        .find(|p| !p.starts_with(&root))
    {
        return Err(Refused::OutsideRoot {
            resolved: resolved_note(path, outside),
            path: shown,
            root: root.display().to_string(),
        });
    }
    Ok(dest)
}

/// ` (resolves to R)` when `resolved` is not what `path` says.
fn resolved_note(path: &Path, resolved: &Path) -> String {
    if path == resolved {
        String::new()
    } else {
        format!(" (resolves to {})", resolved.display())
    }
}

/// `path` made absolute with symbolic links and `..` resolved as the kernel would: every
/// existing prefix is canonicalised before the next component is added, so `..` after a link
/// leaves the link's target. The part that does not exist yet is added as written. Fails with the
/// link's path when a link points nowhere (creating through it would write who knows where).
pub fn resolve(path: &Path) -> Result<PathBuf, PathBuf> {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut out = PathBuf::from("/");
    for c in absolute.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => out = PathBuf::from("/"),
            Component::CurDir => {}
            // `out` is canonical here (or below a missing directory, which creating the path
            // would make): its parent is where `..` leads.
            Component::ParentDir => {
                out.pop();
            }
            // Checked at every step, also after a missing directory: `missing/../link` reaches
            // `link` once `missing` is created.
            Component::Normal(name) => {
                out.push(name);
                match std::fs::canonicalize(&out) {
                    Ok(real) => out = real,
                    Err(_) if std::fs::symlink_metadata(&out).is_ok() => return Err(out),
                    Err(_) => {}
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Host {
        _dir: tempfile::TempDir,
        base: PathBuf,
        rules: LocalRules,
    }

    fn host() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        for d in ["state", "etc", "credentials", "backups"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        let rules = LocalRules {
            root: Some(base.clone()),
            protected: vec![
                ("state directory", base.join("state")),
                ("configuration directory", base.join("etc")),
                ("credentials directory", base.join("credentials")),
            ],
        };
        Host {
            _dir: dir,
            base,
            rules,
        }
    }

    #[test]
    fn a_destination_under_the_root_is_accepted() {
        let h = host();
        assert_eq!(
            check_local(&h.base.join("backups/x/../pg"), "app", &h.rules),
            Ok(h.base.join("backups/pg"))
        );
    }

    #[test]
    fn links_and_dotdot_are_followed_before_comparing() {
        let h = host();
        std::os::unix::fs::symlink(h.base.join("credentials"), h.base.join("backups/link"))
            .unwrap();
        for (path, what) in [
            (h.base.join("state/backups"), "state directory"),
            (h.base.join("backups/../etc"), "configuration directory"),
            (h.base.join("backups/link/sub"), "credentials directory"),
            (
                h.base.join("backups/missing/../link/sub"),
                "credentials directory",
            ),
        ] {
            match check_local(&path, "app", &h.rules) {
                Err(Refused::Inside { what: w, .. }) => assert_eq!(w, what, "{}", path.display()),
                other => panic!("{}: {other:?}", path.display()),
            }
        }
    }

    #[test]
    fn a_job_directory_that_is_a_protected_directory_is_refused() {
        let h = host();
        // `<base>/state` is the state directory: a job named `state` would work in it.
        assert!(matches!(
            check_local(&h.base, "state", &h.rules),
            Err(Refused::Overlaps {
                what: "state directory",
                ..
            })
        ));
        // A job directory that links into the credentials directory.
        std::os::unix::fs::symlink(h.base.join("credentials"), h.base.join("backups/app")).unwrap();
        assert!(matches!(
            check_local(&h.base.join("backups"), "app", &h.rules),
            Err(Refused::Overlaps {
                what: "credentials directory",
                ..
            })
        ));
    }

    #[test]
    fn the_file_system_root_outside_paths_and_dangling_links_are_refused() {
        let h = host();
        assert!(matches!(
            check_local(Path::new("/"), "app", &h.rules),
            Err(Refused::FileSystemRoot { .. })
        ));
        assert!(matches!(
            check_local(Path::new("/tmp/../.."), "app", &h.rules),
            Err(Refused::FileSystemRoot { .. })
        ));
        assert!(matches!(
            check_local(Path::new("/var/backups/driftless"), "app", &h.rules),
            Err(Refused::OutsideRoot { .. })
        ));
        std::os::unix::fs::symlink("/nonexistent/elsewhere", h.base.join("backups/dangling"))
            .unwrap();
        assert!(matches!(
            check_local(&h.base.join("backups/dangling"), "app", &h.rules),
            Err(Refused::DanglingLink { .. })
        ));
        let no_root = LocalRules {
            root: None,
            ..h.rules.clone()
        };
        assert!(matches!(
            check_local(&h.base.join("backups"), "app", &no_root),
            Err(Refused::NoRoot { .. })
        ));
    }
}

//! Per-revision checkouts: a commit's tree written into `checkouts/<sha>` (bounded, never outside
//! it), and the removal of old ones.
//!
//! The tree comes from the remote and is untrusted: every entry name must be one plain path
//! component, every blob's size is read from the object header (without loading the blob) and
//! checked against the limit before anything is written, and the number of entries is bounded.
//! Files are created exclusively and never followed through symlinks, so a malformed tree with
//! duplicate names cannot write through a link. Files are written without execute permission.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use git2::{ObjectType, Repository};

/// The file that marks a checkout as complete (it holds the sha).
pub(crate) const COMPLETE_MARKER: &str = ".driftless-complete";

/// Temporary directories younger than this are left alone by cleanup: another process (a CLI
/// run on the same state directory) may be writing one.
const TMP_GRACE: Duration = Duration::from_secs(3600);

/// Why a checkout failed.
#[derive(Debug)]
pub(crate) enum Failure {
    Git(git2::Error),
    Io(PathBuf, std::io::Error),
    /// A blob over the size limit: its path in the tree and its size.
    TooLarge {
        path: String,
        size: u64,
    },
    /// An entry name that is not one plain path component (`..`, `a/b`, empty).
    BadName {
        path: String,
    },
    TooManyEntries,
}

/// Limits on what one checkout may hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub max_blob_bytes: u64,
    pub max_entries: usize,
}

/// Writes the commit's tree into `dest`: first into a temporary sibling directory, renamed into
/// place once complete (with its marker), so `dest` is either absent or whole.
pub(crate) fn materialise(
    repo: &Repository,
    commit: &git2::Commit<'_>,
    dest: &Path,
    bounds: Bounds,
) -> Result<(), Failure> {
    let tree = commit.tree().map_err(Failure::Git)?;
    let entries = check_tree(repo, &tree, bounds)?;
    let io = |p: &Path| {
        let p = p.to_owned();
        move |e| Failure::Io(p, e)
    };
    let parent = dest.parent().unwrap_or(dest);
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = parent.join(format!(".tmp-{}", commit.id()));
    if tmp.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    if let Err(e) = write_entries(repo, &entries, &tmp) {
        // Best effort: a leftover is removed by the next checkout of this commit or by cleanup.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let marker = tmp.join(COMPLETE_MARKER);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
        .and_then(|mut f| f.write_all(commit.id().to_string().as_bytes()))
        .map_err(io(&marker))?;
    if dest.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(dest).map_err(io(dest))?;
    }
    std::fs::rename(&tmp, dest).map_err(io(dest))?;
    Ok(())
}

/// Creates the planned entries under `root`, in order (parents first).
fn write_entries(repo: &Repository, entries: &[Planned], root: &Path) -> Result<(), Failure> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |e| Failure::Io(p, e)
    };
    for entry in entries {
        let path = root.join(&entry.path);
        match entry.kind {
            Kind::Dir => std::fs::create_dir(&path).map_err(io(&path))?,
            Kind::Link => {
                let blob = repo.find_blob(entry.id).map_err(Failure::Git)?;
                let target = std::ffi::OsStr::from_bytes(blob.content());
                std::os::unix::fs::symlink(target, &path).map_err(io(&path))?;
            }
            Kind::File => {
                let blob = repo.find_blob(entry.id).map_err(Failure::Git)?;
                // create_new: fails on anything already there, a symlink included.
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .and_then(|mut f| f.write_all(blob.content()))
                    .map_err(io(&path))?;
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Link,
}

struct Planned {
    path: PathBuf,
    kind: Kind,
    id: git2::Oid,
}

/// Walks the tree without loading any blob: names, sizes (object headers) and the entry count.
/// Iterative, so a deeply nested hostile tree cannot exhaust the stack; parents come before
/// their entries.
fn check_tree(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    bounds: Bounds,
) -> Result<Vec<Planned>, Failure> {
    let odb = repo.odb().map_err(Failure::Git)?;
    let mut planned = Vec::new();
    let mut pending = vec![(PathBuf::new(), tree.id())];
    while let Some((dir, id)) = pending.pop() {
        let tree = repo.find_tree(id).map_err(Failure::Git)?;
        for entry in tree.iter() {
            let name = entry.name_bytes();
            let path = dir.join(std::ffi::OsStr::from_bytes(name));
            let shown = || path.to_string_lossy().into_owned();
            // The marker's name at the top is ours: a link there would be written through.
            let reserved = dir.as_os_str().is_empty() && name == COMPLETE_MARKER.as_bytes();
            if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || reserved
            {
                return Err(Failure::BadName { path: shown() });
            }
            if planned.len() >= bounds.max_entries {
                return Err(Failure::TooManyEntries);
            }
            let kind = match entry.kind() {
                Some(ObjectType::Tree) => {
                    pending.push((path.clone(), entry.id()));
                    Kind::Dir
                }
                Some(ObjectType::Blob) => {
                    let (size, _) = odb.read_header(entry.id()).map_err(Failure::Git)?;
                    if size as u64 > bounds.max_blob_bytes {
                        return Err(Failure::TooLarge {
                            path: shown(),
                            size: size as u64,
                        });
                    }
                    if entry.filemode() == 0o120000 {
                        Kind::Link
                    } else {
                        Kind::File
                    }
                }
                // Submodules (commits) are not followed.
                _ => continue,
            };
            planned.push(Planned {
                path,
                kind,
                id: entry.id(),
            });
        }
    }
    Ok(planned)
}

/// Marks a checkout as just used (its marker's time), so cleanup keeps the recently used ones.
pub(crate) fn touch(checkout: &Path) {
    let marker = checkout.join(COMPLETE_MARKER);
    if let Ok(f) = std::fs::File::options().write(true).open(&marker) {
        // Best effort: a checkout whose time cannot be set is only removed sooner.
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Whether `name` is a commit id (40 or 64 lowercase hex digits): the only directory names
/// cleanup removes besides its own temporary directories.
pub(crate) fn is_sha(name: &str) -> bool {
    matches!(name.len(), 40 | 64) && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// One directory under `checkouts/` as cleanup sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub name: String,
    /// The marker's time for complete checkouts, the directory's for the others.
    pub time: SystemTime,
    pub complete: bool,
    /// A `.tmp-<sha>` directory.
    pub temporary: bool,
}

/// Which directories to remove: every complete checkout but `applied` and the `keep_newest`
/// newest; incomplete checkouts; temporary directories older than an hour. `applied` is never
/// removed, whatever its state. Pure.
pub(crate) fn to_remove(
    found: &[Found],
    applied: Option<&str>,
    keep_newest: usize,
    now: SystemTime,
) -> Vec<String> {
    let mut complete: Vec<&Found> = found
        .iter()
        .filter(|f| f.complete && !f.temporary)
        .collect();
    complete.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.name.cmp(&b.name)));
    let mut out: Vec<String> = complete
        .iter()
        .skip(keep_newest)
        .filter(|f| Some(f.name.as_str()) != applied)
        .map(|f| f.name.clone())
        .collect();
    for f in found {
        let old = now.duration_since(f.time).unwrap_or_default() > TMP_GRACE;
        let incomplete = !f.temporary && !f.complete && Some(f.name.as_str()) != applied;
        if (f.temporary && old) || incomplete {
            out.push(f.name.clone());
        }
    }
    out.sort();
    out
}

/// The directories under `dir` (`checkouts/`) that cleanup may consider.
pub(crate) fn scan(dir: &Path) -> std::io::Result<Vec<Found>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let temporary = name.strip_prefix(".tmp-").is_some_and(is_sha);
        if !(temporary || is_sha(&name)) || !entry.file_type()?.is_dir() {
            continue;
        }
        let marker = entry.path().join(COMPLETE_MARKER);
        let (complete, time) = match std::fs::symlink_metadata(&marker) {
            Ok(m) if m.is_file() => (true, m.modified()?),
            _ => (false, entry.metadata()?.modified()?),
        };
        found.push(Found {
            name,
            time,
            complete: complete && !temporary,
            temporary,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccc";
    const D: &str = "dddddddddddddddddddddddddddddddddddddddd";
    const E: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn found(name: &str, time: u64, complete: bool, temporary: bool) -> Found {
        Found {
            name: name.to_owned(),
            time: at(time),
            complete,
            temporary,
        }
    }

    #[test]
    fn keeps_the_applied_and_the_newest() {
        let all = vec![
            found(A, 100, true, false),
            found(B, 200, true, false),
            found(C, 300, true, false),
            found(D, 400, true, false),
            found(E, 500, true, false),
        ];
        let now = at(10_000);
        // Newest three: E, D, C; the applied A too.
        assert_eq!(to_remove(&all, Some(A), 3, now), vec![B.to_owned()]);
        assert_eq!(
            to_remove(&all, None, 3, now),
            vec![A.to_owned(), B.to_owned()]
        );
        // The applied among the newest: nothing extra kept.
        assert_eq!(
            to_remove(&all, Some(E), 3, now),
            vec![A.to_owned(), B.to_owned()]
        );
        assert_eq!(
            to_remove(&all, Some(A), 1, now),
            [B, C, D].map(str::to_owned).to_vec()
        );
        // Unknown applied sha: changes nothing.
        assert_eq!(to_remove(&all, Some("zz"), 5, now), Vec::<String>::new());
    }

    #[test]
    fn incomplete_and_stale_temporary_directories_go() {
        let now = at(10_000);
        let all = vec![
            found(A, 9_000, true, false),
            found(B, 9_900, false, false),
            found(&format!(".tmp-{C}"), 9_990, false, true),
            found(&format!(".tmp-{D}"), 100, false, true),
        ];
        assert_eq!(
            to_remove(&all, Some(A), 3, now),
            vec![format!(".tmp-{D}"), B.to_owned()]
        );
    }

    #[test]
    fn shas() {
        assert!(is_sha(A));
        assert!(is_sha(&"0".repeat(64)));
        assert!(!is_sha(&A.to_uppercase()));
        assert!(!is_sha("../aaaa"));
        assert!(!is_sha(&"a".repeat(41)));
    }

    /// A raw tree object (entries as given, unsorted and unchecked, as a hostile remote may send).
    fn raw_tree(repo: &Repository, entries: &[(&str, &[u8], git2::Oid)]) -> git2::Oid {
        let mut data = Vec::new();
        for (mode, name, id) in entries {
            data.extend_from_slice(mode.as_bytes());
            data.push(b' ');
            data.extend_from_slice(name);
            data.push(0);
            data.extend_from_slice(id.as_bytes());
        }
        repo.odb().unwrap().write(ObjectType::Tree, &data).unwrap()
    }

    fn commit_of(repo: &Repository, tree: git2::Oid) -> git2::Oid {
        let sig = git2::Signature::now("T", "t@driftless.invalid").unwrap();
        let tree = repo.find_tree(tree).unwrap();
        repo.commit(None, &sig, &sig, "hostile", &tree, &[])
            .unwrap()
    }

    const BOUNDS: Bounds = Bounds {
        max_blob_bytes: 1024,
        max_entries: 100,
    };

    #[test]
    fn hostile_trees_write_nothing_outside() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path().join("r.git")).unwrap();
        let blob = repo.blob(b"pwned").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let link = repo.blob(outside.to_str().unwrap().as_bytes()).unwrap();
        let victim = repo
            .blob(outside.join("victim").to_str().unwrap().as_bytes())
            .unwrap();
        let inner = raw_tree(&repo, &[("100644", b"evil", blob)]);
        let cases: Vec<(&str, git2::Oid)> = vec![
            ("dot-dot", raw_tree(&repo, &[("40000", b"..", inner)])),
            ("slash", raw_tree(&repo, &[("100644", b"a/evil", blob)])),
            // A symlink, then a directory of the same name: never written through.
            (
                "link-then-dir",
                raw_tree(&repo, &[("120000", b"a", link), ("40000", b"a", inner)]),
            ),
            // A link where the completion marker goes (it would be written through).
            (
                "marker",
                raw_tree(&repo, &[("120000", b".driftless-complete", victim)]),
            ),
            // A symlink, then a file of the same name.
            (
                "link-then-file",
                raw_tree(&repo, &[("120000", b"a", link), ("100644", b"a", blob)]),
            ),
        ];
        for (name, tree) in cases {
            let commit = repo.find_commit(commit_of(&repo, tree)).unwrap();
            let dest = dir.path().join("checkouts").join(commit.id().to_string());
            let result = materialise(&repo, &commit, &dest, BOUNDS);
            assert!(result.is_err(), "{name}: {result:?}");
            assert!(!dest.exists(), "{name}: no checkout");
            assert_eq!(
                std::fs::read_dir(&outside).unwrap().count(),
                0,
                "{name}: wrote outside"
            );
            assert!(!dir.path().join("checkouts/evil").exists(), "{name}");
            let left = std::fs::read_dir(dir.path().join("checkouts"))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(left, 0, "{name}: the temporary directory is removed");
        }
    }

    #[test]
    fn sizes_and_counts_are_checked_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path().join("r.git")).unwrap();
        let small = repo.blob(b"ok").unwrap();
        let big = repo.blob(&[b'x'; 1025]).unwrap();
        let tree = raw_tree(
            &repo,
            &[("100644", b"a.yaml", small), ("100644", b"b.yaml", big)],
        );
        let commit = repo.find_commit(commit_of(&repo, tree)).unwrap();
        let dest = dir.path().join("checkouts/x");
        match materialise(&repo, &commit, &dest, BOUNDS) {
            Err(Failure::TooLarge { path, size }) => {
                assert_eq!((path.as_str(), size), ("b.yaml", 1025));
            }
            other => panic!("{other:?}"),
        }
        assert!(!dir.path().join("checkouts").exists(), "nothing written");
        let many: Vec<(String, git2::Oid)> =
            (0..101).map(|i| (format!("f{i:03}"), small)).collect();
        let entries: Vec<(&str, &[u8], git2::Oid)> = many
            .iter()
            .map(|(n, id)| ("100644", n.as_bytes(), *id))
            .collect();
        let commit = repo
            .find_commit(commit_of(&repo, raw_tree(&repo, &entries)))
            .unwrap();
        assert!(matches!(
            materialise(&repo, &commit, &dest, BOUNDS),
            Err(Failure::TooManyEntries)
        ));
    }
}

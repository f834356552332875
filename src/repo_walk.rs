//! Walking and reading the files of a stack repository, with every bound a hostile commit could
//! try to break: the one way driftless reads repository files (stacks, manifests, overlays,
//! chart and Kustomize directories, policies).
//!
//! - **Iterative**: an explicit stack, never recursion whose depth the repository controls.
//! - **Each directory once**: directories entered are remembered by (device, inode); a symlink
//!   back to a directory that contains it is a *symlink loop*, any other second arrival at a
//!   directory (two links to it, a bind mount) is refused too, so no tree of links can make a
//!   walk exponential.
//! - **Bounded**: at most [`Limits::max_depth`] directory levels below the walk's start, at most
//!   [`Limits::max_entries`] directory entries per walk and [`Limits::max_total_entries`] in all
//!   the walks of one [`Repo`], files of at most [`Limits::max_file_bytes`].
//! - **Inside the repository**: every symlink is resolved and must stay below the root; so must
//!   every file read and every directory a walk starts in.
//! - **Names**: a name that is not UTF-8 is an error naming the path (paths appear in errors,
//!   objects' source places and status output; silently skipping one would silently drop
//!   manifests). Hidden names (a leading `.`) are skipped without reading them unless the walk
//!   includes them.
//! - **Regular files only** are read: a FIFO or a device would block or never end.
//!
//! Errors name the path relative to the repository root.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Bounds on what one load of a repository may make driftless read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest directory level below a walk's start (its entries are level 1): a directory
    /// nested deeper is an error.
    pub max_depth: usize,
    /// Most directory entries one walk reads.
    pub max_entries: usize,
    /// Most directory entries all the walks of one `Repo` read together.
    pub max_total_entries: usize,
    /// Largest file read, in bytes.
    pub max_file_bytes: u64,
}

/// Default [`Limits::max_depth`].
pub const MAX_DEPTH: usize = 32;
/// Default [`Limits::max_entries`].
pub const MAX_ENTRIES: usize = 100_000;
/// Default [`Limits::max_total_entries`].
pub const MAX_TOTAL_ENTRIES: usize = 1_000_000;
/// Default [`Limits::max_file_bytes`].
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: MAX_DEPTH,
            max_entries: MAX_ENTRIES,
            max_total_entries: MAX_TOTAL_ENTRIES,
            max_file_bytes: MAX_FILE_BYTES,
        }
    }
}

/// Why a walk or a read was refused; every variant names the path, relative to the root.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The I/O error is part of the message, not a `source`: callers print one line.
    #[error("{path}: {message}: {error}")]
    Io {
        path: PathBuf,
        message: &'static str,
        error: std::io::Error,
    },
    #[error("{path}: {reason} (the repository root is {root})")]
    OutsideRepository {
        path: PathBuf,
        root: PathBuf,
        reason: &'static str,
    },
    #[error("{path}: symlink loop: it leads back to {target}, which contains it")]
    SymlinkLoop { path: PathBuf, target: PathBuf },
    #[error(
        "{path}: leads to the directory {target}, which this walk already read as {first} (a directory is read once; remove one of the links)"
    )]
    ReachedTwice {
        path: PathBuf,
        target: PathBuf,
        first: PathBuf,
    },
    #[error(
        "{path}: more than {limit} directory levels below {start} (a symlink loop, or too deep a tree)"
    )]
    TooDeep {
        path: PathBuf,
        start: PathBuf,
        limit: usize,
    },
    #[error("{path}: more than {limit} directory entries below {start}")]
    TooManyEntries {
        path: PathBuf,
        start: PathBuf,
        limit: usize,
    },
    #[error("{path}: more than {limit} directory entries read from the repository in one load")]
    TooManyEntriesInRepository { path: PathBuf, limit: usize },
    #[error("{path}: the name is not UTF-8 (driftless reads UTF-8 names only)")]
    NotUtf8Name { path: PathBuf },
    #[error("{path}: not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: not a regular file (FIFOs, sockets and devices are never read)")]
    NotRegularFile { path: PathBuf },
    #[error(
        "{path}: file is {size} bytes, over the limit of {limit} bytes (split it or raise the limit)"
    )]
    FileTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{path}: not UTF-8 text")]
    NotText { path: PathBuf },
}

/// A convenient result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an entry is, after resolving a followed symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A regular file.
    File,
    /// A FIFO, socket or device; or a symlink the walk does not follow.
    Other,
}

/// One entry met by a walk.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The path as reached: the walk's start joined with the names below it (absolute).
    pub path: &'a Path,
    /// The canonical path (symlinks resolved; inside the repository). For a symlink the walk
    /// does not follow, the link itself.
    pub real: &'a Path,
    pub name: &'a str,
    /// 1 for the start's own entries.
    pub depth: usize,
    pub kind: Kind,
    /// Whether the entry itself is a symlink.
    pub symlink: bool,
}

/// What a walk does after visiting a directory entry (ignored for other entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Enter,
    Skip,
}

/// How a walk treats symlinks and hidden names.
#[derive(Debug, Clone, Copy, Default)]
pub struct Walk {
    /// Resolve symlinks (they must stay inside the repository) and walk what they lead to.
    /// Otherwise a symlink is reported as `Kind::Other` and never resolved.
    pub follow_symlinks: bool,
    /// Visit names with a leading `.` too.
    pub include_hidden: bool,
}

/// A repository checkout: its canonical root and the limits of one load.
#[derive(Debug)]
pub struct Repo {
    root: PathBuf,
    limits: Limits,
    entries_read: Cell<usize>,
}

impl Repo {
    /// Opens the repository at `root` (which must exist) for one load.
    pub fn open(root: &Path, limits: Limits) -> Result<Repo> {
        let canonical = root.canonicalize().map_err(|source| Error::Io {
            path: root.to_owned(),
            message: "cannot open the repository",
            error: source,
        })?;
        Ok(Repo {
            root: canonical,
            limits,
            entries_read: Cell::new(0),
        })
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The limits this load runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// `path` relative to the root, for messages (unchanged when it is not below the root).
    pub fn relative(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(&self.root) {
            Ok(rel) if rel.as_os_str().is_empty() => PathBuf::from("."),
            Ok(rel) => rel.to_owned(),
            Err(_) => path.to_owned(),
        }
    }

    /// Whether the canonical path `real` is the root or below it.
    pub fn contains(&self, real: &Path) -> bool {
        real.starts_with(&self.root)
    }

    /// Checks that `real` (what `path` resolved to) is inside the repository.
    pub fn check_inside(&self, path: &Path, real: &Path, reason: &'static str) -> Result<()> {
        if self.contains(real) {
            Ok(())
        } else {
            Err(Error::OutsideRepository {
                path: self.relative(path),
                root: self.root.clone(),
                reason,
            })
        }
    }

    /// Resolves `path` (symlinks, `..`) to its canonical form, which must exist and be inside
    /// the repository.
    pub fn resolve(&self, path: &Path) -> Result<PathBuf> {
        let real = path
            .canonicalize()
            .map_err(|source| self.resolve_error(path, source))?;
        self.check_inside(path, &real, "leads outside the repository")?;
        Ok(real)
    }

    fn resolve_error(&self, path: &Path, source: std::io::Error) -> Error {
        // ELOOP: a chain of symlinks that never ends (`a -> b`, `b -> a`).
        const ELOOP: i32 = 40;
        if source.raw_os_error() == Some(ELOOP) {
            Error::SymlinkLoop {
                path: self.relative(path),
                target: self.relative(path),
            }
        } else {
            Error::Io {
                path: self.relative(path),
                message: "cannot resolve",
                error: source,
            }
        }
    }

    /// Reads the text of the regular file at `path` (inside the repository, at most
    /// `max_file_bytes`, UTF-8).
    pub fn read_text(&self, path: &Path) -> Result<String> {
        let rel = self.relative(path);
        let real = self.resolve(path)?;
        let io = |source| Error::Io {
            path: rel.clone(),
            message: "cannot read",
            error: source,
        };
        let meta = std::fs::metadata(&real).map_err(io)?;
        if !meta.is_file() {
            return Err(Error::NotRegularFile { path: rel });
        }
        let limit = self.limits.max_file_bytes;
        if meta.len() > limit {
            return Err(Error::FileTooLarge {
                path: rel,
                size: meta.len(),
                limit,
            });
        }
        let file = std::fs::File::open(&real).map_err(io)?;
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // The file may grow between the check and the read: never read more than the limit.
        file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() as u64 > limit {
            return Err(Error::FileTooLarge {
                path: rel,
                size: bytes.len() as u64,
                limit,
            });
        }
        String::from_utf8(bytes).map_err(|_| Error::NotText { path: rel })
    }

    /// Walks the directory `start` (inside the repository) depth-first in sorted name order,
    /// calling `visit` for every entry; a directory is entered when `visit` says so. Every bound
    /// of the module applies; errors of `visit` end the walk.
    pub fn walk<E: From<Error>>(
        &self,
        start: &Path,
        how: Walk,
        mut visit: impl FnMut(&Entry<'_>) -> Result<Step, E>,
    ) -> Result<(), E> {
        let start_real = self.resolve(start)?;
        let start_meta = std::fs::metadata(&start_real).map_err(|source| Error::Io {
            path: self.relative(start),
            message: "cannot stat",
            error: source,
        })?;
        if !start_meta.is_dir() {
            return Err(Error::NotADirectory {
                path: self.relative(start),
            }
            .into());
        }
        let mut walk = Walker {
            repo: self,
            how,
            start: self.relative(start),
            visited: HashMap::new(),
            entries: 0,
            pending: Vec::new(),
        };
        walk.visited
            .insert((start_meta.dev(), start_meta.ino()), self.relative(start));
        walk.read_dir(start, &start_real, 0)?;
        while let Some(item) = walk.pending.pop() {
            let (kind, real) = walk.classify(&item)?;
            let entry = Entry {
                path: &item.path,
                real: &real,
                name: &item.name,
                depth: item.depth,
                kind,
                symlink: item.file_type.is_symlink(),
            };
            if visit(&entry)? == Step::Enter && kind == Kind::Dir {
                walk.enter(&item, &real)?;
            }
        }
        Ok(())
    }
}

/// A directory entry read but not visited yet.
struct Pending {
    path: PathBuf,
    /// The canonical path of the directory holding it.
    parent_real: PathBuf,
    name: String,
    depth: usize,
    /// The entry's own type (a symlink is not resolved).
    file_type: std::fs::FileType,
}

/// The state of one walk.
struct Walker<'r> {
    repo: &'r Repo,
    how: Walk,
    start: PathBuf,
    /// (device, inode) of every directory entered → the path it was entered as.
    visited: HashMap<(u64, u64), PathBuf>,
    entries: usize,
    pending: Vec<Pending>,
}

impl Walker<'_> {
    /// What `item` is, and its canonical path: a followed symlink is resolved and must stay
    /// inside the repository.
    fn classify(&self, item: &Pending) -> Result<(Kind, PathBuf)> {
        let repo = self.repo;
        if !item.file_type.is_symlink() {
            let kind = if item.file_type.is_dir() {
                Kind::Dir
            } else if item.file_type.is_file() {
                Kind::File
            } else {
                Kind::Other
            };
            return Ok((kind, item.parent_real.join(&item.name)));
        }
        if !self.how.follow_symlinks {
            return Ok((Kind::Other, item.path.clone()));
        }
        let real = item
            .path
            .canonicalize()
            .map_err(|source| repo.resolve_error(&item.path, source))?;
        repo.check_inside(&item.path, &real, "symlink leads outside the repository")?;
        let meta = std::fs::metadata(&real).map_err(|source| Error::Io {
            path: repo.relative(&item.path),
            message: "cannot stat the symlink's target",
            error: source,
        })?;
        let kind = if meta.is_dir() {
            Kind::Dir
        } else if meta.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        Ok((kind, real))
    }

    /// Enters the directory `item` (canonical `real`): bounds and the visited set first.
    fn enter(&mut self, item: &Pending, real: &Path) -> Result<()> {
        let repo = self.repo;
        // A directory nested deeper than `max_depth` levels is refused, not entered.
        if item.depth > repo.limits.max_depth {
            return Err(Error::TooDeep {
                path: repo.relative(&item.path),
                start: self.start.clone(),
                limit: repo.limits.max_depth,
            });
        }
        if item.file_type.is_symlink() && item.parent_real.starts_with(real) {
            return Err(Error::SymlinkLoop {
                path: repo.relative(&item.path),
                target: repo.relative(real),
            });
        }
        let meta = std::fs::metadata(real).map_err(|source| Error::Io {
            path: repo.relative(&item.path),
            message: "cannot stat",
            error: source,
        })?;
        let key = (meta.dev(), meta.ino());
        if let Some(first) = self.visited.get(&key) {
            return Err(Error::ReachedTwice {
                path: repo.relative(&item.path),
                target: repo.relative(real),
                first: first.clone(),
            });
        }
        self.visited.insert(key, repo.relative(&item.path));
        self.read_dir(&item.path, real, item.depth)
    }

    /// Reads the entries of `dir` (canonical `real`, at `depth`) onto the pending stack, so
    /// that they pop in sorted order.
    fn read_dir(&mut self, dir: &Path, real: &Path, depth: usize) -> Result<()> {
        let repo = self.repo;
        let io = |source| Error::Io {
            path: repo.relative(dir),
            message: "cannot read the directory",
            error: source,
        };
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(real).map_err(io)? {
            let entry = entry.map_err(io)?;
            self.entries += 1;
            if self.entries > repo.limits.max_entries {
                return Err(Error::TooManyEntries {
                    path: repo.relative(dir),
                    start: self.start.clone(),
                    limit: repo.limits.max_entries,
                });
            }
            let total = repo.entries_read.get() + 1;
            repo.entries_read.set(total);
            if total > repo.limits.max_total_entries {
                return Err(Error::TooManyEntriesInRepository {
                    path: repo.relative(dir),
                    limit: repo.limits.max_total_entries,
                });
            }
            let name = entry.file_name();
            if !self.how.include_hidden && name.as_bytes().first() == Some(&b'.') {
                continue;
            }
            let Some(name) = name.to_str() else {
                return Err(Error::NotUtf8Name {
                    path: repo.relative(&dir.join(&name)),
                });
            };
            let file_type = entry.file_type().map_err(io)?;
            entries.push((name.to_owned(), file_type));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, file_type) in entries.into_iter().rev() {
            self.pending.push(Pending {
                path: dir.join(&name),
                parent_real: real.to_owned(),
                name,
                depth: depth + 1,
                file_type,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        dir
    }

    const FOLLOW: Walk = Walk {
        follow_symlinks: true,
        include_hidden: false,
    };

    /// Every entry the walk visits (directories with a trailing `/`), entering every directory
    /// `enter` accepts.
    fn visit(
        repo: &Repo,
        start: &Path,
        how: Walk,
        enter: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        repo.walk(start, how, |e| {
            let rel = repo.relative(e.path).display().to_string();
            let slash = if e.kind == Kind::Dir { "/" } else { "" };
            out.push(format!("{rel}{slash}"));
            Ok::<_, Error>(if enter(&rel) { Step::Enter } else { Step::Skip })
        })?;
        Ok(out)
    }

    fn all(repo: &Repo, how: Walk) -> Result<Vec<String>> {
        visit(repo, repo.root(), how, |_| true)
    }

    #[test]
    fn walks_in_sorted_order_depth_first_skipping_hidden_names() {
        let t = tree(&[
            "a.yaml",
            "b/c.yaml",
            "b/.hidden/x.yaml",
            "c.yaml",
            ".git/config",
        ]);
        let repo = Repo::open(t.path(), Limits::default()).unwrap();
        assert_eq!(
            all(&repo, Walk::default()).unwrap(),
            ["a.yaml", "b/", "b/c.yaml", "c.yaml"]
        );
        let hidden = Walk {
            include_hidden: true,
            ..Walk::default()
        };
        assert!(all(&repo, hidden).unwrap().contains(&".git/config".into()));
    }

    #[test]
    fn symlinks_are_followed_inside_once_and_refused_outside() {
        let t = tree(&["real/a.yaml"]);
        symlink("real", t.path().join("link")).unwrap();
        let repo = Repo::open(t.path(), Limits::default()).unwrap();
        // Not followed: reported, never resolved.
        assert_eq!(
            all(&repo, Walk::default()).unwrap(),
            ["link", "real/", "real/a.yaml"]
        );
        // Followed: the link's directory is read under the link's name...
        assert_eq!(
            visit(&repo, repo.root(), FOLLOW, |p| p != "real").unwrap(),
            ["link/", "link/a.yaml", "real/"]
        );
        // ...and only once.
        let err = all(&repo, FOLLOW).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "real: leads to the directory real, which this walk already read as link"
            ),
            "{err}"
        );

        let outside = tree(&["secret.yaml"]);
        symlink(outside.path(), t.path().join("out")).unwrap();
        let err = all(&repo, FOLLOW).unwrap_err().to_string();
        assert!(
            err.starts_with("out: symlink leads outside the repository"),
            "{err}"
        );
        let err = repo
            .read_text(&t.path().join("out/secret.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("out/secret.yaml: leads outside"), "{err}");
        let err = visit(&repo, &t.path().join("out"), Walk::default(), |_| true)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("out: leads outside"), "{err}");
    }

    #[test]
    fn loops_are_errors_naming_the_link() {
        let t = tree(&["d/a.yaml"]);
        symlink("..", t.path().join("d/up")).unwrap();
        let repo = Repo::open(t.path(), Limits::default()).unwrap();
        let err = all(&repo, FOLLOW).unwrap_err().to_string();
        assert_eq!(
            err,
            "d/up: symlink loop: it leads back to ., which contains it"
        );
        let t = tree(&["x.yaml"]);
        symlink("b", t.path().join("a")).unwrap();
        symlink("a", t.path().join("b")).unwrap();
        let repo = Repo::open(t.path(), Limits::default()).unwrap();
        let err = all(&repo, FOLLOW).unwrap_err().to_string();
        assert!(err.starts_with("a: symlink loop"), "{err}");
    }

    #[test]
    fn depth_and_entries_are_bounded() {
        let t = tree(&["a/b/c/d/e.yaml", "f/1", "f/2", "f/3"]);
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        let repo = Repo::open(t.path(), limits).unwrap();
        let err = all(&repo, FOLLOW).unwrap_err().to_string();
        assert!(
            err.starts_with("a/b/c/d: more than 3 directory levels below "),
            "{err}"
        );
        let limits = Limits {
            max_entries: 4,
            ..Limits::default()
        };
        let repo = Repo::open(t.path(), limits).unwrap();
        let err = all(&repo, FOLLOW).unwrap_err().to_string();
        assert!(
            err.ends_with(": more than 4 directory entries below ."),
            "{err}"
        );
        // The repository-wide budget spans walks.
        let limits = Limits {
            max_total_entries: 12,
            ..Limits::default()
        };
        let repo = Repo::open(t.path(), limits).unwrap();
        all(&repo, FOLLOW).unwrap();
        let err = all(&repo, FOLLOW).unwrap_err().to_string();
        assert!(
            err.contains("more than 12 directory entries read from the repository"),
            "{err}"
        );
    }

    #[test]
    fn names_must_be_utf8_unless_hidden() {
        use std::os::unix::ffi::OsStrExt;
        let t = tree(&["a.yaml"]);
        std::fs::write(
            t.path().join(std::ffi::OsStr::from_bytes(b".hidden-\xff")),
            "",
        )
        .unwrap();
        let repo = Repo::open(t.path(), Limits::default()).unwrap();
        assert_eq!(all(&repo, FOLLOW).unwrap(), ["a.yaml"]);
        std::fs::write(
            t.path().join(std::ffi::OsStr::from_bytes(b"bad-\xff.yaml")),
            "",
        )
        .unwrap();
        let err = all(&repo, FOLLOW).unwrap_err().to_string();
        assert!(
            err.contains("bad-\u{fffd}.yaml: the name is not UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn only_bounded_regular_utf8_files_are_read() {
        let t = tree(&["ok.yaml"]);
        let repo = Repo::open(
            t.path(),
            Limits {
                max_file_bytes: 10,
                ..Limits::default()
            },
        )
        .unwrap();
        assert_eq!(
            repo.read_text(&t.path().join("ok.yaml")).unwrap(),
            "ok.yaml"
        );
        let big = std::fs::File::create(t.path().join("big.yaml")).unwrap();
        big.set_len(1 << 40).unwrap(); // sparse: costs no disk
        let err = repo.read_text(&t.path().join("big.yaml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "big.yaml: file is 1099511627776 bytes, over the limit of 10 bytes (split it or raise the limit)"
        );
        std::fs::write(t.path().join("bin.yaml"), b"\xff\xfe").unwrap();
        let err = repo.read_text(&t.path().join("bin.yaml")).unwrap_err();
        assert_eq!(err.to_string(), "bin.yaml: not UTF-8 text");
        let fifo = t.path().join("fifo.yaml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = repo.read_text(&fifo).unwrap_err();
        assert!(
            err.to_string().starts_with("fifo.yaml: not a regular file"),
            "{err}"
        );
    }
}

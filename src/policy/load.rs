//! Reading `policies/`: the only file I/O of the policy module.

use std::path::{Path, PathBuf};

use super::{Document, Error, PolicySet, Result};
use crate::stack::RenderedStack;

/// The directory, at the repository root, that holds policies, bindings and params.
pub const POLICY_DIR: &str = "policies";

/// Files larger than this are refused (as stack manifests are).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Loads and compiles `<root>/policies/` and the stack-local `policies/` beside each stack's
/// `stack.yaml` (every `.yaml`, `.yml` and `.json` file below them, in sorted path order, except
/// the `tests/` fixtures). A repository without the directories has no policies.
pub fn load_policies(root: &Path, stacks: &[RenderedStack]) -> Result<PolicySet> {
    load_with_stacks(
        root,
        stacks.iter().map(|s| (s.name.as_str(), s.file.as_path())),
    )
}

/// `load_policies` for stacks given as (name, `stack.yaml` relative to `root`).
pub fn load_with_stacks<'a>(
    root: &Path,
    stacks: impl IntoIterator<Item = (&'a str, &'a Path)>,
) -> Result<PolicySet> {
    let dir = root.join(POLICY_DIR);
    let global = if dir.is_dir() {
        load_dir(root, &dir, &["tests"])?
    } else {
        Vec::new()
    };
    let mut local = Vec::new();
    for (name, file) in stacks {
        let dir = stack_policy_dir(root, file);
        if dir.is_dir() {
            local.push((name.to_owned(), load_dir(root, &dir, &["tests"])?));
        }
    }
    PolicySet::from_scoped(global, local)
}

/// `<stack directory>/policies` of the stack whose `stack.yaml` is `file` (relative to `root`).
pub fn stack_policy_dir(root: &Path, file: &Path) -> PathBuf {
    root.join(file)
        .parent()
        .map_or_else(|| root.to_owned(), Path::to_owned)
        .join(POLICY_DIR)
}

/// Parses every manifest file below `dir` (skipping hidden entries and the directories named in
/// `skip`); file names in the documents are relative to `root`.
pub fn load_dir(root: &Path, dir: &Path, skip: &[&str]) -> Result<Vec<Document>> {
    let mut files = Vec::new();
    collect(dir, skip, &mut files)?;
    let mut documents = Vec::new();
    for path in files {
        let rel = path.strip_prefix(root).unwrap_or(&path).to_owned();
        let io = |source| Error::Io {
            path: rel.clone(),
            message: "cannot read".to_owned(),
            source,
        };
        let size = std::fs::metadata(&path).map_err(io)?.len();
        if size > MAX_FILE_BYTES {
            return Err(Error::Invalid {
                file: rel,
                document: 0,
                message: format!("file is {size} bytes, over the limit of {MAX_FILE_BYTES}"),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        let values = crate::yaml::parse_documents(&rel, &text)?;
        documents.extend(values.into_iter().filter(|v| !v.is_null()).enumerate().map(
            |(i, value)| Document {
                file: rel.clone(),
                document: i + 1,
                value,
            },
        ));
    }
    Ok(documents)
}

fn collect(dir: &Path, skip: &[&str], out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |source| Error::Io {
        path: dir.to_owned(),
        message: "cannot read directory".to_owned(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io)?;
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        // Symlinks are not followed: policies stay inside the repository.
        let meta = std::fs::symlink_metadata(&path).map_err(io)?;
        if meta.is_dir() {
            if !skip.contains(&name) {
                collect(&path, skip, out)?;
            }
        } else if meta.is_file()
            && (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
        {
            out.push(path);
        }
    }
    Ok(())
}

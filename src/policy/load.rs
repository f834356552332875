//! Reading `policies/`: the only file I/O of the policy module, through `repo_walk` (symlinks
//! stay inside the repository; loops, depth, entries and file size are bounded).

use std::path::{Path, PathBuf};

use super::{Document, Error, PolicySet, Result};
use crate::repo_walk::{Kind, Limits, Repo, Step, Walk};
use crate::stack::RenderedStack;

/// The directory, at the repository root, that holds policies, bindings and params.
pub const POLICY_DIR: &str = "policies";

/// Directories below a policies directory that hold fixtures, not policies.
const FIXTURES_DIR: &str = "tests";

/// One policy file of a revision: its path relative to the repository root and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    pub path: PathBuf,
    pub text: String,
}

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
    let (global, local) = policy_files(root, stacks)?;
    let local = local
        .into_iter()
        .map(|(name, files)| Ok((name, parse(&files)?)))
        .collect::<Result<Vec<_>>>()?;
    PolicySet::from_scoped(parse(&global)?, local)
}

/// The files `load_with_stacks` reads: those of `<root>/policies/`, and per stack (by name)
/// those of its own `policies/`, each in sorted path order. Stacks without the directory are
/// left out.
#[allow(clippy::type_complexity)]
pub fn policy_files<'a>(
    root: &Path,
    stacks: impl IntoIterator<Item = (&'a str, &'a Path)>,
) -> Result<(Vec<PolicyFile>, Vec<(String, Vec<PolicyFile>)>)> {
    let repo = Repo::open(root, Limits::default())?;
    let dir = repo.root().join(POLICY_DIR);
    let global = if dir.is_dir() {
        read_dir(&repo, &dir, &[FIXTURES_DIR])?
    } else {
        Vec::new()
    };
    let mut local = Vec::new();
    for (name, file) in stacks {
        let dir = stack_policy_dir(repo.root(), file);
        if dir.is_dir() {
            local.push((name.to_owned(), read_dir(&repo, &dir, &[FIXTURES_DIR])?));
        }
    }
    Ok((global, local))
}

/// Every policy file of the revision at `root`, its stacks found as the stack loader finds them:
/// exactly the files `load_policies` reads for that revision (the daemon's policy digest).
pub fn revision_policy_files(root: &Path) -> Result<Vec<PolicyFile>> {
    let stacks = crate::stack::load::stack_files(root).map_err(Box::new)?;
    let (mut files, local) =
        policy_files(root, stacks.iter().map(|(n, f)| (n.as_str(), f.as_path())))?;
    files.extend(local.into_iter().flat_map(|(_, files)| files));
    Ok(files)
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
    let repo = Repo::open(root, Limits::default())?;
    parse(&read_dir(&repo, dir, skip)?)
}

fn parse(files: &[PolicyFile]) -> Result<Vec<Document>> {
    let mut documents = Vec::new();
    for file in files {
        let values = crate::yaml::parse_documents(&file.path, &file.text)?;
        documents.extend(values.into_iter().filter(|v| !v.is_null()).enumerate().map(
            |(i, value)| Document {
                file: file.path.clone(),
                document: i + 1,
                value,
            },
        ));
    }
    Ok(documents)
}

/// The `.yaml`, `.yml` and `.json` files below `dir`, in sorted path order, skipping hidden
/// entries and directories named in `skip`.
fn read_dir(repo: &Repo, dir: &Path, skip: &[&str]) -> Result<Vec<PolicyFile>> {
    let mut out = Vec::new();
    let how = Walk {
        follow_symlinks: true,
        include_hidden: false,
    };
    repo.walk(dir, how, |e| {
        match e.kind {
            Kind::Dir if !skip.contains(&e.name) => return Ok::<_, Error>(Step::Enter),
            Kind::Dir | Kind::Other => return Ok(Step::Skip),
            Kind::File => {}
        }
        if [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| e.name.ends_with(ext))
        {
            out.push(PolicyFile {
                path: repo.relative(e.path),
                text: repo.read_text(e.path)?,
            });
        }
        Ok(Step::Skip)
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const POLICY: &str = "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata: {name: NAME}\nspec:\n  matchConstraints: {resourceRules: [{apiGroups: [''], apiVersions: [v1], operations: [CREATE], resources: [configmaps]}]}\n  validations: [{expression: 'true'}]\n";

    fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn the_revision_files_are_the_ones_loaded() {
        let r = repo(&[
            ("policies/a.yaml", &POLICY.replace("NAME", "a")),
            ("policies/tests/a.yaml", "fixtures: not policies"),
            ("policies/README.md", "not a policy"),
            (
                "stack/s/stack.yaml",
                "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: s}\n",
            ),
            ("stack/s/policies/b.yaml", &POLICY.replace("NAME", "b")),
        ]);
        let files: Vec<String> = revision_policy_files(r.path())
            .unwrap()
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
        assert_eq!(files, ["policies/a.yaml", "stack/s/policies/b.yaml"]);
        let set = load_with_stacks(r.path(), [("s", Path::new("stack/s/stack.yaml"))]).unwrap();
        let mut names = set.policy_names();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(set.policy_stack("b"), Some("s"));
    }

    #[test]
    fn loops_and_links_out_of_the_repository_are_errors() {
        let r = repo(&[("policies/a.yaml", &POLICY.replace("NAME", "a"))]);
        symlink(".", r.path().join("policies/loop")).unwrap();
        let err = revision_policy_files(r.path()).unwrap_err().to_string();
        assert!(err.starts_with("policies/loop: symlink loop"), "{err}");

        let outside = repo(&[("p.yaml", &POLICY.replace("NAME", "outside"))]);
        let r = repo(&[("README.md", "")]);
        symlink(outside.path(), r.path().join("policies")).unwrap();
        let err = revision_policy_files(r.path()).unwrap_err().to_string();
        assert!(
            err.starts_with("policies: leads outside the repository"),
            "{err}"
        );
    }
}

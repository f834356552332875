//! Stacks: loading a checkout (`load`, reading through `repo_walk`; `chart` and `kustomize`
//! check a renderer's inputs and run it through `external`) and rendering it into the desired
//! objects of each stack (`render`, `object`, `order`, `vars`: pure).

pub mod chart;
pub mod external;
pub mod kustomize;
pub mod load;
pub mod model;
pub mod object;
pub mod order;
pub mod render;
pub mod sops;
pub mod stored;
pub mod vars;

use std::fmt;
use std::path::PathBuf;

pub use external::Renderers;
pub use load::{
    HostSecrets, LoadLimits, LoadedStack, load_health_checks, load_repo, load_repo_with,
    placeholder_host_secrets, read_host_secrets,
};
pub use model::SourceFile;
pub use render::{DesiredObject, ObjectKey, RenderedHook, RenderedStack, render};
pub use stored::StoredRevision;

/// Everything that can be wrong with a stack repository, each naming the place to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Yaml(#[from] crate::yaml::Error),
    /// A walk or read of the repository refused (loop, depth, count, size, boundary, name).
    #[error(transparent)]
    Walk(#[from] crate::repo_walk::Error),
    /// A declared health check that does not load (see `health_checks`).
    #[error(transparent)]
    HealthChecks(#[from] crate::health_checks::Error),
    #[error("{file}: {field} of stack {stack}: {error}")]
    RendererInput {
        file: PathBuf,
        stack: String,
        field: &'static str,
        error: crate::repo_walk::Error,
    },
    #[error("{file}: {field} {entry:?}: {problem} (stack {stack}, spec.kustomize of {stack_file})")]
    KustomizeReference {
        file: PathBuf,
        field: String,
        entry: String,
        problem: String,
        stack: String,
        stack_file: PathBuf,
    },
    #[error(
        "{file}: dependencies[{index}] {name:?} comes from the chart repository {repository:?} and the chart's charts/ does not hold it: helm template runs offline; vendor it (`helm dependency build`) and commit charts/ (stack {stack}, spec.helm)"
    )]
    ChartDependency {
        file: PathBuf,
        stack: String,
        index: usize,
        name: String,
        repository: String,
    },
    #[error(
        "{file}: {pointer} {reference:?}: Helm would load it (a URL, or a file of the host: references resolve against file:///); renders are offline and read only the repository: keep the schema self-contained (`#/…` references) (stack {stack}, spec.helm)"
    )]
    ChartSchemaReference {
        file: PathBuf,
        pointer: String,
        reference: String,
        stack: String,
    },
    #[error("{path}: {message}")]
    Io {
        path: PathBuf,
        message: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no stacks found (expected stack/<name>/stack.yaml)")]
    NoStacks { path: PathBuf },
    #[error("{file}: {message}")]
    StackFile { file: PathBuf, message: String },
    #[error("{file}: stack name {name:?} is also used by {other}")]
    DuplicateStack {
        file: PathBuf,
        name: String,
        other: PathBuf,
    },
    #[error("{path}: more than {limit} manifest files in stack {stack}")]
    TooManyFiles {
        path: PathBuf,
        stack: String,
        limit: usize,
    },
    #[error("stack {stack}: no profile {profile:?} (defined: {defined})")]
    UnknownProfile {
        stack: String,
        profile: String,
        defined: String,
    },
    #[error(
        "{file}:{line}: undefined variable ${{{name}}} in stack {stack} (defined: {defined}); write $${{{name}}} for a literal"
    )]
    UndefinedVariable {
        stack: String,
        file: PathBuf,
        line: usize,
        name: String,
        defined: String,
    },
    #[error("{file}:{line}: malformed variable reference: {message}")]
    MalformedVariable {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{place}: {message}")]
    InvalidObject { place: Place, message: String },
    #[error("{place}: {key} is also defined at {other}")]
    DuplicateObject {
        place: Place,
        key: String,
        other: Place,
    },
    #[error("{file}: stack {stack}: secret {secret:?}: {source}")]
    HostSecret {
        file: PathBuf,
        stack: String,
        secret: String,
        #[source]
        source: crate::credentials::Error,
    },
    #[error(
        "{file}: stack {stack}: secret {secret:?} key {key:?}: host file {credential:?} was not read from the credentials directory"
    )]
    HostSecretNotRead {
        file: PathBuf,
        stack: String,
        secret: String,
        key: String,
        credential: String,
    },
    #[error(
        "stack {stack}: secrets come from host files but no credentials directory is set (systemd's $CREDENTIALS_DIRECTORY or `credentialsDir` in the host configuration)"
    )]
    NoCredentialsDir { stack: String },
    #[error("{file}: overlay patch {index} targets {target}, which stack {stack} does not render")]
    OverlayTargetsNothing {
        stack: String,
        file: PathBuf,
        index: usize,
        target: String,
    },
    #[error("{file}: overlay patch {index} on {target}: {message}")]
    OverlayPatch {
        file: PathBuf,
        index: usize,
        target: String,
        message: String,
    },
    #[error(
        "stack {stack}: renders no objects; refusing an empty render (it would prune everything)"
    )]
    EmptyRender { stack: String },
    #[error("stack {stack}: dependsOn names unknown stack {missing:?}")]
    UnknownDependency { stack: String, missing: String },
    #[error("{file}: {field} of stack {stack} needs {program:?}, which was not found: {hint}")]
    RendererMissing {
        file: PathBuf,
        stack: String,
        field: &'static str,
        program: String,
        hint: &'static str,
    },
    #[error("{file}: {field} of stack {stack}: `{command}` failed: {message}")]
    RenderFailed {
        file: PathBuf,
        stack: String,
        field: &'static str,
        command: String,
        message: String,
    },
    #[error("dependsOn cycle: {cycle}")]
    DependencyCycle { cycle: String },
    /// A SOPS-encrypted manifest that does not decrypt or holds decrypted values where they
    /// would be shown. The message never holds a value.
    #[error("{file}: stack {stack}: SOPS: {}{error}", document.map(|d| format!("document {d}: ")).unwrap_or_default())]
    Sops {
        file: PathBuf,
        stack: String,
        /// 1-based, when the error is about one document's content.
        document: Option<usize>,
        #[source]
        error: sops::Error,
    },
    /// The age identity (`sops.ageKeyFile`) cannot be read or parsed.
    #[error("{file}: stack {stack}: SOPS: sops.ageKeyFile {error}")]
    SopsKey {
        file: PathBuf,
        stack: String,
        error: String,
    },
}

/// Loads and renders every stack of the checkout at `root` for `profile`. Host secrets are read
/// through `credentials`; with `placeholders` and no credentials directory, empty stand-ins are
/// used (offline validation). Returns the stacks in dependency order and whether host secrets
/// were read.
pub fn load_and_render(
    root: &std::path::Path,
    profile: Option<&str>,
    credentials: &crate::credentials::Credentials,
    placeholders: bool,
    renderers: &Renderers,
) -> Result<(Vec<RenderedStack>, bool)> {
    let loaded = load_repo_with(root, profile, LoadLimits::default(), renderers)?;
    render_loaded(&loaded, credentials, placeholders)
}

/// Renders already loaded stacks, reading host secrets as `load_and_render` does.
pub fn render_loaded(
    loaded: &[LoadedStack],
    credentials: &crate::credentials::Credentials,
    placeholders: bool,
) -> Result<(Vec<RenderedStack>, bool)> {
    render_loaded_with(loaded, credentials, placeholders, None)
}

/// `render_loaded`, parsing through `cache` (see `yaml::ParseCache`).
pub fn render_loaded_with(
    loaded: &[LoadedStack],
    credentials: &crate::credentials::Credentials,
    placeholders: bool,
    cache: Option<&crate::yaml::ParseCache>,
) -> Result<(Vec<RenderedStack>, bool)> {
    let (secrets, checked) = if placeholders && !credentials.has_dir() {
        (placeholder_host_secrets(loaded, credentials)?, false)
    } else {
        (read_host_secrets(loaded, credentials)?, true)
    };
    let decryption = sops_decryption(loaded, credentials, !checked)?;
    Ok((
        render::render_decrypting(loaded, &secrets, &decryption, cache)?,
        checked,
    ))
}

/// How SOPS files are read: with the age identity of `sops.ageKeyFile` (read only when a stack
/// has a SOPS file), as placeholders for offline validation without credentials.
fn sops_decryption(
    loaded: &[LoadedStack],
    credentials: &crate::credentials::Credentials,
    placeholders: bool,
) -> Result<sops::Decryption> {
    let first = loaded.iter().find_map(|s| {
        s.manifests
            .iter()
            .find(|f| sops::is_sops(&f.text))
            .map(|f| (s, f))
    });
    let Some((stack, file)) = first else {
        return Ok(sops::Decryption::Unavailable(
            "no SOPS file was expected".to_owned(),
        ));
    };
    if placeholders {
        return Ok(sops::Decryption::Placeholder);
    }
    let fail = |error: String| Error::SopsKey {
        file: file.path.clone(),
        stack: stack.name.clone(),
        error,
    };
    match credentials.sops_age_key() {
        None => Ok(sops::Decryption::Unavailable(
            "the host configuration sets no sops.ageKeyFile (the age identity to decrypt it with)"
                .to_owned(),
        )),
        Some(Err(e)) => Err(fail(e.to_string())),
        Some(Ok(text)) => sops::AgeIdentity::parse(&text)
            .map(sops::Decryption::Key)
            .map_err(|e| fail(e.to_string())),
    }
}

/// A convenient result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where an object came from: the stack, the file and the document within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub stack: String,
    pub file: PathBuf,
    /// 1-based index of the (non-empty) document within the file.
    pub document: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (document {}, stack {})",
            self.file.display(),
            self.document,
            self.stack
        )
    }
}

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;

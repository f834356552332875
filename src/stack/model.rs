//! The `Stack` and `Overlay` kinds as they are written in a stack repository (DESIGN.md §2), and
//! `SourceFile`, the text of a file they render from.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// A file's text and its path relative to the repository root: a manifest, an overlay, a hook,
/// `jobs.yaml`, or one template of a renderer's output.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: std::path::PathBuf,
    pub text: String,
}

/// API version of driftless' own kinds.
pub const API_VERSION: &str = "driftless.dev/v1alpha1";

/// `stack/<name>/stack.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StackFile {
    pub api_version: String,
    pub kind: String,
    pub metadata: StackMetadata,
    #[serde(default)]
    pub spec: StackSpec,
}

/// `metadata` of a Stack: its name is the stack's identity (inventory, labels, `--stack`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackMetadata {
    pub name: String,
}

/// `spec` of a Stack. Every field has a default, so `spec: {}` is a valid stack of the manifests
/// beside `stack.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StackSpec {
    /// Namespace given to namespaced objects that name none.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Manifest directory relative to `stack.yaml` (default: the stack's own directory). Not
    /// with `helm` or `kustomize`.
    #[serde(default)]
    pub path: Option<String>,
    /// Render a local Helm chart with `helm template` instead of reading plain manifests.
    #[serde(default)]
    pub helm: Option<HelmSpec>,
    /// Render a Kustomize directory with `kubectl kustomize` instead of reading plain manifests.
    #[serde(default)]
    pub kustomize: Option<KustomizeSpec>,
    /// Stacks that must be applied and healthy first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Delete objects that left the stack (default true).
    #[serde(default = "yes")]
    pub prune: bool,
    /// Take over fields other field managers own (default true: GitOps owns what it declares).
    #[serde(default = "yes")]
    pub force: bool,
    /// Revert live changes to fields driftless owns as soon as the daemon sees them (default
    /// true). With false, drift is only reported; a new revision is still applied.
    #[serde(default = "yes")]
    pub self_heal: bool,
    /// Health wait.
    #[serde(default)]
    pub wait: WaitSpec,
    /// Variables for every profile; a profile's own `vars` override these.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Profiles selected by the host configuration's `profile`.
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileSpec>,
    /// Secrets whose data come from files on the ops host, never from Git.
    #[serde(default)]
    pub secrets: Vec<HostSecretSpec>,
    /// Jobs run at points of the stack's sync (`postSync`: after it is applied and healthy).
    #[serde(default)]
    pub hooks: HooksSpec,
}

impl Default for StackSpec {
    fn default() -> Self {
        StackSpec {
            namespace: None,
            path: None,
            helm: None,
            kustomize: None,
            depends_on: Vec::new(),
            prune: true,
            force: true,
            self_heal: true,
            wait: WaitSpec::default(),
            vars: BTreeMap::new(),
            profiles: BTreeMap::new(),
            secrets: Vec::new(),
            hooks: HooksSpec::default(),
        }
    }
}

fn yes() -> bool {
    true
}

/// `spec.wait`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitSpec {
    /// How long to wait for the stack's objects to become healthy (e.g. `90s`, `5m`).
    #[serde(default = "default_timeout", with = "duration_text")]
    pub timeout: Duration,
}

impl Default for WaitSpec {
    fn default() -> Self {
        WaitSpec {
            timeout: default_timeout(),
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(300)
}

/// `spec.profiles.<name>`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// Overlay directories relative to `stack.yaml`, applied in order.
    #[serde(default)]
    pub overlays: Vec<String>,
    /// Variables of this profile.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Helm values files of this profile, after the stack's own.
    #[serde(default)]
    pub helm: Option<ProfileHelmSpec>,
    /// The Kustomize directory of this profile, instead of the stack's own.
    #[serde(default)]
    pub kustomize: Option<KustomizeSpec>,
}

/// `spec.helm`: a chart in the repository, rendered with `helm template`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HelmSpec {
    /// The chart directory, relative to `stack.yaml`.
    pub chart: String,
    /// The release name (default: the stack's name).
    #[serde(default)]
    pub release_name: Option<String>,
    /// Values files relative to `stack.yaml`, in order (later ones win).
    #[serde(default)]
    pub values_files: Vec<String>,
}

/// `spec.profiles.<name>.helm`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProfileHelmSpec {
    /// Values files relative to `stack.yaml`, applied after `spec.helm.valuesFiles`.
    #[serde(default)]
    pub values_files: Vec<String>,
}

/// `spec.kustomize` (and a profile's): a directory holding a `kustomization.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KustomizeSpec {
    /// The directory, relative to `stack.yaml`.
    pub path: String,
}

/// `spec.hooks`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HooksSpec {
    /// Jobs run in order after the stack is applied and healthy, before its dependents.
    #[serde(default)]
    pub post_sync: Vec<HookSpec>,
}

/// One hook: a file holding one `batch/v1` Job, rendered like the stack's manifests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HookSpec {
    /// The Job's file, relative to `stack.yaml`; never read as a manifest.
    pub file: String,
    /// How long the Job may take to complete (default 5m).
    #[serde(default = "default_timeout", with = "duration_text")]
    pub timeout: Duration,
    /// When the finished Job is deleted (default `OnSuccess`: a failed one stays to be looked at).
    #[serde(default)]
    pub delete_policy: HookDeletePolicy,
}

/// `spec.hooks.*[].deletePolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum HookDeletePolicy {
    /// Delete the Job when it succeeded; keep a failed one for inspection.
    #[default]
    OnSuccess,
    /// Delete the Job when it finished, whatever the outcome.
    Always,
    /// Keep the Job (it is replaced when the hook runs again).
    Never,
}

/// `spec.secrets[]`: a Secret built from host files in the credentials directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostSecretSpec {
    pub name: String,
    /// Default: the stack's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Secret `type` (default `Opaque`).
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// Secret key → file name in the credentials directory.
    pub from_files: BTreeMap<String, String>,
}

/// A document of `kind: Overlay` in an overlay directory: patches that target objects.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OverlayFile {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    pub patches: Vec<PatchSpec>,
}

/// One patch: a target and either an RFC 7386 merge patch or an RFC 6902 JSON patch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchSpec {
    pub target: PatchTarget,
    /// RFC 7386 JSON merge patch.
    #[serde(default)]
    pub merge: Option<serde_json::Value>,
    /// RFC 6902 JSON patch operations.
    #[serde(default)]
    pub json: Option<serde_json::Value>,
}

/// Which objects a patch applies to: `kind` and `name` required, `namespace` and `apiVersion`
/// narrow further. A patch that matches no object is an error (a typo must not pass silently).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PatchTarget {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub api_version: Option<String>,
}

/// `90s`, `5m`, `1h30m`, `2h`: the duration format of driftless files.
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Parses `1h30m`, `90s`, `250ms`; a bare number is seconds.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        if let Ok(secs) = text.parse::<u64>() {
            return Ok(Duration::from_secs(secs));
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        if rest.is_empty() {
            return Err("empty duration".to_owned());
        }
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!(
                    "invalid duration {text:?} (expected e.g. 90s, 5m, 1h30m)"
                ));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("invalid duration {text:?}"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let one = match unit {
                "ms" => Duration::from_millis(1),
                "s" => Duration::from_secs(1),
                "m" => Duration::from_secs(60),
                "h" => Duration::from_secs(3600),
                "d" => Duration::from_secs(86400),
                _ => {
                    return Err(format!(
                        "invalid duration {text:?}: unknown unit {unit:?} (ms, s, m, h, d)"
                    ));
                }
            };
            total += one * u32::try_from(n).map_err(|_| format!("duration {text:?} too large"))?;
        }
        Ok(total)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn durations() {
            assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
            assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
            assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
            assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
            assert_eq!(parse("42"), Ok(Duration::from_secs(42)));
            assert!(parse("5 minutes").is_err());
            assert!(parse("m").is_err());
            assert!(parse("").is_err());
        }
    }
}

//! External renderers: `helm template` for a stack's local chart and `kubectl kustomize` for a
//! Kustomize directory. The only part of rendering that runs programs: their output becomes
//! source files of the stack (`chart`, `kustomize`), which then go through the same parsing,
//! checks and plan as plain manifests (`render`).
//!
//! A renderer runs with a minimal environment: nothing of driftless' own environment passes
//! (no credentials, tokens, proxy settings or `KUBECONFIG`) but `PATH` — the host's, which named
//! the program and holds no secret — and `HOME`, the XDG directories and Helm's cache,
//! configuration and data directories, all in a fresh empty directory removed afterwards.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Error, Result};

/// Which programs render charts and Kustomize directories, and how long they may take.
#[derive(Debug, Clone)]
pub struct Renderers {
    /// `helm` (a name looked up in `PATH`, or a path).
    pub helm: PathBuf,
    /// `kubectl`, for `kubectl kustomize`.
    pub kubectl: PathBuf,
    /// Longest a single render may run.
    pub timeout: Duration,
}

/// Default `renderers.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest rendered output accepted from one renderer run.
const MAX_OUTPUT: usize = 64 * 1024 * 1024;

impl Default for Renderers {
    /// `$DRIFTLESS_HELM` / `$DRIFTLESS_KUBECTL` when set, else `helm` / `kubectl` from `PATH`.
    fn default() -> Self {
        let from_env = |var: &str, name: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(name))
        };
        Renderers {
            helm: from_env("DRIFTLESS_HELM", "helm"),
            kubectl: from_env("DRIFTLESS_KUBECTL", "kubectl"),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// What one render is: the stack it is for, the tool and its arguments.
pub struct Invocation<'a> {
    pub stack: &'a str,
    /// The stack's `stack.yaml`, relative to the repository root (for errors).
    pub file: &'a Path,
    /// `spec.helm` or `spec.kustomize` (for errors).
    pub field: &'static str,
    pub program: &'a Path,
    pub args: Vec<OsString>,
    /// Working directory: the repository root.
    pub cwd: &'a Path,
    /// Advice when the program is missing.
    pub install_hint: &'static str,
}

/// Runs a renderer and returns its standard output as text. A missing program, a non-zero exit,
/// a timeout, oversized or non-UTF-8 output are errors naming the stack and the command.
pub fn run(inv: &Invocation<'_>, timeout: Duration) -> Result<String> {
    let command_line = || {
        let mut line = inv.program.display().to_string();
        for a in &inv.args {
            line.push(' ');
            line.push_str(&a.to_string_lossy());
        }
        line
    };
    let failed = |message: String| Error::RenderFailed {
        file: inv.file.to_owned(),
        stack: inv.stack.to_owned(),
        field: inv.field,
        command: command_line(),
        message,
    };
    // A private (0700), empty home for this run alone, removed when `scratch` drops.
    let scratch = tempfile::Builder::new()
        .prefix("driftless-render-")
        .tempdir()
        .map_err(|e| failed(format!("cannot create its scratch directory: {e}")))?;
    let mut command = Command::new(inv.program);
    command.env_clear();
    for (name, value) in minimal_env(scratch.path()) {
        command.env(name, value);
    }
    let mut child = command
        .args(&inv.args)
        .current_dir(inv.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::RendererMissing {
                    file: inv.file.to_owned(),
                    stack: inv.stack.to_owned(),
                    field: inv.field,
                    program: inv.program.display().to_string(),
                    hint: inv.install_hint,
                }
            } else {
                failed(format!("cannot start: {e}"))
            }
        })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || read_capped(stdout, MAX_OUTPUT));
    let err_reader = std::thread::spawn(move || read_capped(stderr, 64 * 1024));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                return Err(failed(format!("cannot wait for it: {e}")));
            }
        }
    };
    drop(scratch);
    let Some(status) = status else {
        // The readers are left to finish on their own: a child the renderer started may still
        // hold the pipes open.
        return Err(failed(format!(
            "did not finish within {:?} (renderers.timeout in the host configuration)",
            timeout
        )));
    };
    let (out, out_overflow) = out_reader.join().unwrap_or_default();
    let (err, _) = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(failed(format!("{status}: {}", tail(&err, 20))));
    }
    if out_overflow {
        return Err(failed(format!(
            "rendered more than {} MiB",
            MAX_OUTPUT / 1024 / 1024
        )));
    }
    String::from_utf8(out).map_err(|_| failed("rendered output is not UTF-8".to_owned()))
}

/// Reads a pipe to its end, keeping at most `cap` bytes; says whether more came.
fn read_capped(pipe: Option<impl Read>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut overflow = false;
    let mut buf = [0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if kept.len() + n > cap {
                    overflow = true;
                } else {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
    (kept, overflow)
}

/// The last `lines` non-empty lines of a program's error output.
fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = all.len().saturating_sub(lines);
    let joined = all[start..].join("\n");
    if joined.is_empty() {
        "no error output".to_owned()
    } else {
        joined
    }
}

/// The whole environment of a renderer: the host's `PATH`, and `HOME`, the XDG base directories
/// and Helm's directories inside the empty directory `home`.
fn minimal_env(home: &Path) -> Vec<(&'static str, OsString)> {
    let mut env: Vec<(&'static str, OsString)> = vec![
        ("HOME", home.into()),
        ("XDG_CONFIG_HOME", home.join(".config").into()),
        ("XDG_CACHE_HOME", home.join(".cache").into()),
        ("XDG_DATA_HOME", home.join(".local/share").into()),
        ("XDG_STATE_HOME", home.join(".local/state").into()),
        ("HELM_CONFIG_HOME", home.join(".config/helm").into()),
        ("HELM_CACHE_HOME", home.join(".cache/helm").into()),
        ("HELM_DATA_HOME", home.join(".local/share/helm").into()),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        env.push(("PATH", path));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_named_with_advice() {
        let inv = Invocation {
            stack: "web",
            file: Path::new("stack/web/stack.yaml"),
            field: "spec.helm",
            program: Path::new("/nonexistent/helm"),
            args: vec![],
            cwd: Path::new("/"),
            install_hint: "install Helm",
        };
        let err = run(&inv, Duration::from_secs(5)).unwrap_err().to_string();
        assert!(err.contains("stack/web/stack.yaml"), "{err}");
        assert!(err.contains("/nonexistent/helm"), "{err}");
        assert!(err.contains("install Helm"), "{err}");
    }

    #[test]
    fn failures_and_timeouts_name_the_command() {
        let sh = Path::new("/bin/sh");
        let mut inv = Invocation {
            stack: "web",
            file: Path::new("stack/web/stack.yaml"),
            field: "spec.kustomize",
            program: sh,
            args: vec![
                "-c".into(),
                "echo 'Error: no kustomization' >&2; exit 3".into(),
            ],
            cwd: Path::new("/"),
            install_hint: "",
        };
        let err = run(&inv, Duration::from_secs(5)).unwrap_err().to_string();
        assert!(err.contains("no kustomization"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        inv.args = vec!["-c".into(), "sleep 5".into()];
        let t = Instant::now();
        let err = run(&inv, Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not finish within"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(3));
        inv.args = vec!["-c".into(), "printf 'kind: A\\n'".into()];
        assert_eq!(run(&inv, Duration::from_secs(5)).unwrap(), "kind: A\n");
    }

    #[test]
    fn renderers_see_a_minimal_environment_and_an_empty_home() {
        // The test process has CARGO_* and more in its environment: none of it may pass.
        assert!(std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("CARGO")));
        let inv = Invocation {
            stack: "web",
            file: Path::new("stack/web/stack.yaml"),
            field: "spec.helm",
            program: Path::new("/bin/sh"),
            args: vec![
                "-c".into(),
                "env; ls -A \"$HOME\" | wc -l; test -d \"$HOME\" && echo home-is-a-directory"
                    .into(),
            ],
            cwd: Path::new("/"),
            install_hint: "",
        };
        let out = run(&inv, Duration::from_secs(5)).unwrap();
        let allowed = [
            "PATH",
            "HOME",
            "TMPDIR",
            "XDG_CONFIG_HOME",
            "XDG_CACHE_HOME",
            "XDG_DATA_HOME",
            "XDG_STATE_HOME",
            "HELM_CACHE_HOME",
            "HELM_CONFIG_HOME",
            "HELM_DATA_HOME",
            // Set by the shell itself.
            "PWD",
            "OLDPWD",
            "SHLVL",
            "_",
        ];
        let mut vars = std::collections::BTreeMap::new();
        for line in out.lines() {
            if let Some((k, v)) = line.split_once('=') {
                assert!(allowed.contains(&k), "{k} passed to the renderer: {out}");
                vars.insert(k.to_owned(), v.to_owned());
            }
        }
        assert_eq!(
            vars.get("PATH").map(|p| p.as_str()),
            std::env::var("PATH").ok().as_deref(),
            "PATH is the host's"
        );
        let home = vars.get("HOME").expect("HOME is set");
        assert_ne!(
            Some(home.as_str()),
            std::env::var("HOME").ok().as_deref(),
            "HOME is not the host's"
        );
        assert!(
            out.contains("\n0\nhome-is-a-directory"),
            "HOME is empty: {out}"
        );
        for (k, v) in &vars {
            if k.starts_with("XDG_") || k.starts_with("HELM_") || k == "TMPDIR" {
                assert!(v.starts_with(home.as_str()), "{k}={v} outside HOME {home}");
            }
        }
        assert!(
            !Path::new(home).exists(),
            "the scratch HOME is removed after the run"
        );
        // Each run has its own.
        let again = run(&inv, Duration::from_secs(5)).unwrap();
        assert!(!again.contains(&format!("HOME={home}\n")), "{again}");
    }
}

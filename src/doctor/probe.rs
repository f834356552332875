//! The facts `driftless doctor` judges: files, the Git source, the cluster, programs, ports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Check, FileFacts, Report, ServedKind, credential_verdict, required_access};
use crate::config::HostConfig;
use crate::credentials::Credentials;

/// How long the Git and cluster checks may take each.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs every check of the host configuration at `config_path`.
pub async fn run(config_path: &Path) -> Report {
    let mut report = Report::default();
    let config = match HostConfig::load(config_path, true) {
        Ok(c) => {
            report.checks.push(Check::ok(
                "configuration",
                format!("{} parses", config_path.display()),
            ));
            c
        }
        Err(e) => {
            report.checks.push(Check::error(
                "configuration",
                e.to_string(),
                "fix the file (README \"Host configuration\"); nothing else can be checked",
            ));
            return report;
        }
    };
    let credentials = config.credentials();
    check_credential_files(&config, &credentials, &mut report);
    check_state_dir(&config, &mut report);
    let root = check_source(&config, &credentials, &mut report).await;
    check_renderers(&config, &mut report);
    // Each target: its stacks rendered with its profile, its cluster and the rights they need
    // there (checks named `… (target NAME)` when several are configured).
    let targets = crate::targets::of(&config);
    for target in &targets {
        let narrowed = crate::targets::narrow(&config, target);
        let first = report.checks.len();
        let objects = match &root {
            Some(root) => revision_objects(&narrowed, root.path(), target, &mut report),
            None => Vec::new(),
        };
        check_cluster(&narrowed, &objects, &mut report).await;
        if targets.len() > 1 {
            for c in &mut report.checks[first..] {
                c.check = format!("{} (target {})", c.check, target.name);
            }
        }
    }
    check_endpoint(&config, &mut report).await;
    report
}

fn check_credential_files(config: &HostConfig, credentials: &Credentials, report: &mut Report) {
    let files = config.own_credential_files();
    let Some(dir) = credentials.dir() else {
        if files.is_empty() {
            report.checks.push(Check::ok(
                "credentials directory",
                "none set, and the configuration names no credential files",
            ));
        } else {
            report.checks.push(Check::error(
                "credentials directory",
                format!(
                    "none set, and the configuration names {} credential files",
                    files.len()
                ),
                "run under the systemd unit (LoadCredential=), or set credentialsDir",
            ));
        }
        return;
    };
    report.checks.push(Check::ok(
        "credentials directory",
        format!("{}", dir.display()),
    ));
    for (field, file) in files {
        if crate::credentials::plain_name(&file).is_none() {
            report.checks.push(Check::error(
                format!("credential {file}"),
                format!("{field}: not a plain file name in the credentials directory"),
                "name a file in the credentials directory, without a directory part",
            ));
            continue;
        }
        let facts = file_facts(&dir.join(&file));
        report
            .checks
            .push(credential_verdict(&field, &file, &facts));
    }
    for (field, path) in config.own_credential_paths() {
        let facts = file_facts(&path);
        let mut check = credential_verdict(&field, &path.display().to_string(), &facts);
        check.check = format!("file {}", path.display());
        report.checks.push(check);
    }
}

fn file_facts(path: &Path) -> FileFacts {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileFacts::Missing,
        Err(e) => FileFacts::Unreadable(e.to_string()),
        Ok(m) if !m.is_file() => FileFacts::NotRegular,
        Ok(m) => match std::fs::File::open(path) {
            Ok(_) => FileFacts::Regular {
                mode: m.permissions().mode(),
            },
            Err(e) => FileFacts::Unreadable(e.to_string()),
        },
    }
}

fn check_state_dir(config: &HostConfig, report: &mut Report) {
    let dir = config.state_dir();
    let check = format!("state directory {}", dir.display());
    if !dir.exists() {
        report.checks.push(Check::warn(
            check,
            "does not exist yet",
            "the unit's StateDirectory= creates it; otherwise create it, owned by the user driftless runs as",
        ));
        return;
    }
    match tempfile::NamedTempFile::new_in(&dir) {
        Ok(_) => report.checks.push(Check::ok(check, "writable")),
        Err(e) => report.checks.push(Check::error(
            check,
            format!("not writable: {e}"),
            "give the user driftless runs as write access (the unit's StateDirectory= does)",
        )),
    }
}

/// Where the revision was found: a configured directory, or a fresh fetch into a temporary one.
enum Root {
    Path(PathBuf),
    /// The scratch directory lives as long as the checkout in it is read.
    Fetched {
        _scratch: tempfile::TempDir,
        checkout: PathBuf,
    },
}

impl Root {
    fn path(&self) -> &Path {
        match self {
            Root::Path(p) | Root::Fetched { checkout: p, .. } => p,
        }
    }
}

async fn check_source(
    config: &HostConfig,
    credentials: &Credentials,
    report: &mut Report,
) -> Option<Root> {
    let Some(source) = &config.source else {
        report.checks.push(Check::warn(
            "source",
            "no source configured",
            "set source.git (or source.path) in the host configuration",
        ));
        return None;
    };
    if let Some(path) = &source.path {
        return if path.join("stack").is_dir() {
            report.checks.push(Check::ok(
                "source",
                format!("{} holds stack/", path.display()),
            ));
            Some(Root::Path(path.clone()))
        } else {
            report.checks.push(Check::error(
                "source",
                format!("{} holds no stack/ directory", path.display()),
                "point source.path at a stack repository's checkout",
            ));
            None
        };
    }
    let git = source.git.as_ref()?;
    let check = format!("git {}", git.url);
    // A fetch exactly as the daemon does it (credentials, host keys, the ref), into a scratch
    // directory: the state directory's mirror is left alone.
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            report.checks.push(Check::error(
                check,
                format!("no scratch directory: {e}"),
                "",
            ));
            return None;
        }
    };
    let source = match crate::source::GitSource::from_config(git, credentials, scratch.path()) {
        Ok(s) => s,
        Err(e) => {
            report.checks.push(Check::error(
                check,
                e.to_string(),
                "fix source.git in the host configuration",
            ));
            return None;
        }
    };
    let reference = source.reference.to_string();
    let fetched = tokio::time::timeout(
        PROBE_TIMEOUT,
        tokio::task::spawn_blocking(move || source.fetch(None)),
    )
    .await;
    match fetched {
        Ok(Ok(Ok(f))) => {
            report.checks.push(Check::ok(
                check,
                format!(
                    "reachable; {reference} is at {} ({})",
                    &f.revision.sha[..f.revision.sha.len().min(12)],
                    f.revision.subject
                ),
            ));
            Some(Root::Fetched {
                _scratch: scratch,
                checkout: f.checkout,
            })
        }
        Ok(Ok(Err(e))) => {
            let hint = match &e {
                crate::source::Error::RefNotFound { .. } => {
                    "the followed branch or tag does not exist on the remote: fix source.git.branch/tag, or push it"
                }
                _ => "check the URL, the credentials (auth.*) and, for SSH, auth.knownHostsFile",
            };
            report.checks.push(Check::error(check, e.to_string(), hint));
            None
        }
        Ok(Err(e)) => {
            report
                .checks
                .push(Check::error(check, format!("fetch task failed: {e}"), ""));
            None
        }
        Err(_) => {
            report.checks.push(Check::error(
                check,
                format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
                "check that the host can reach the Git server (firewall, proxy)",
            ));
            None
        }
    }
}

/// The revision's objects as (apiVersion, kind, namespace), rendered without host secrets.
fn revision_objects(
    config: &HostConfig,
    root: &Path,
    target: &crate::targets::Target,
    report: &mut Report,
) -> Vec<(String, String, Option<String>)> {
    let loaded = match crate::stack::load_repo_with(
        root,
        config.profile.as_deref(),
        crate::stack::LoadLimits::default(),
        &config.renderers.renderers(),
    ) {
        Ok(l) => l,
        Err(e) => {
            report.checks.push(Check::error(
                "revision",
                e.to_string(),
                "run `driftless validate --path <checkout>` and fix what it says",
            ));
            return Vec::new();
        }
    };
    match crate::stack::render_loaded(&loaded, &Credentials::default(), true) {
        Ok((stacks, _)) => {
            let stacks: Vec<_> = stacks.iter().filter(|s| target.takes(&s.name)).collect();
            let objects: Vec<_> = stacks
                .iter()
                .flat_map(|s| &s.objects)
                .map(|o| {
                    (
                        o.api_version.clone(),
                        o.key.kind.clone(),
                        o.key.namespace.clone(),
                    )
                })
                .collect();
            report.checks.push(Check::ok(
                "revision",
                format!("{} stacks, {} objects", stacks.len(), objects.len()),
            ));
            objects
        }
        Err(e) => {
            report.checks.push(Check::error(
                "revision",
                e.to_string(),
                "run `driftless validate --path <checkout>` and fix what it says",
            ));
            Vec::new()
        }
    }
}

fn check_renderers(config: &HostConfig, report: &mut Report) {
    let renderers = config.renderers.renderers();
    for (name, program, args) in [
        ("helm", &renderers.helm, &["version", "--short"][..]),
        ("kubectl", &renderers.kubectl, &["version", "--client"][..]),
    ] {
        let check = format!("renderer {name}");
        match std::process::Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output()
        {
            Ok(out) if out.status.success() => {
                let version = String::from_utf8_lossy(&out.stdout);
                report.checks.push(Check::ok(
                    check,
                    format!(
                        "{}: {}",
                        program.display(),
                        version.lines().next().unwrap_or("").trim()
                    ),
                ));
            }
            Ok(out) => report.checks.push(Check::warn(
                check,
                format!("{} exited with {}", program.display(), out.status),
                format!("needed only by stacks with spec.{name}; fix or reinstall it"),
            )),
            Err(e) => report.checks.push(Check::warn(
                check,
                format!("{}: {e}", program.display()),
                format!(
                    "needed only by chart (helm) and Kustomize (kubectl) stacks: install it, or set renderers.{name}"
                ),
            )),
        }
    }
}

async fn check_cluster(
    config: &HostConfig,
    objects: &[(String, String, Option<String>)],
    report: &mut Report,
) {
    let target = crate::cluster::Target {
        kubeconfig: config.cluster.kubeconfig.clone(),
        context: config.cluster.context.clone(),
    };
    let check = "cluster";
    let client = match crate::cluster::connect(&target).await {
        Ok(c) => c,
        Err(e) => {
            report.checks.push(Check::error(
                check,
                e.to_string(),
                "check cluster.kubeconfig and cluster.context",
            ));
            return;
        }
    };
    let version = match tokio::time::timeout(
        PROBE_TIMEOUT,
        crate::cluster::access::server_version(&client),
    )
    .await
    {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            report.checks.push(Check::error(
                check,
                e.to_string(),
                "check that the API server is up and reachable from this host",
            ));
            return;
        }
        Err(_) => {
            report.checks.push(Check::error(
                check,
                format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
                "check that the API server is up and reachable from this host",
            ));
            return;
        }
    };
    report
        .checks
        .push(Check::ok(check, format!("reachable, Kubernetes {version}")));
    let kinds = match crate::cluster::discovery::Kinds::discover(&client).await {
        Ok(k) => k,
        Err(e) => {
            report
                .checks
                .push(Check::error("cluster permissions", e.to_string(), ""));
            return;
        }
    };
    let mut served = Vec::new();
    let mut pending = 0usize;
    for (api_version, kind, namespace) in objects {
        match kinds.resolve(api_version, kind) {
            Some(r) => served.push((
                ServedKind {
                    group: r.resource.group.clone(),
                    resource: r.resource.plural.clone(),
                    namespaced: r.namespaced,
                },
                namespace.clone(),
            )),
            // A kind whose CRD this revision brings: its rights follow from the CRD's.
            None => pending += 1,
        }
    }
    let needed = required_access(&served);
    let mut denied = Vec::new();
    for access in &needed {
        match crate::cluster::access::allowed(&client, access).await {
            Ok((true, _)) => {}
            Ok((false, reason)) => denied.push(match reason {
                Some(r) => format!("{access} ({r})"),
                None => access.to_string(),
            }),
            Err(e) => {
                report
                    .checks
                    .push(Check::error("cluster permissions", e.to_string(), ""));
                return;
            }
        }
    }
    let note = if pending > 0 {
        format!(" ({pending} objects of kinds this revision's CRDs define are not checked)")
    } else {
        String::new()
    };
    if denied.is_empty() {
        report.checks.push(Check::ok(
            "cluster permissions",
            format!("{} rights checked, all allowed{note}", needed.len()),
        ));
    } else {
        let shown: Vec<&str> = denied.iter().take(10).map(String::as_str).collect();
        report.checks.push(Check::error(
            "cluster permissions",
            format!(
                "{} of {} rights denied: {}{}{note}",
                denied.len(),
                needed.len(),
                shown.join("; "),
                if denied.len() > shown.len() { "; …" } else { "" }
            ),
            "bind the identity of cluster.kubeconfig to a role that allows these (README \"Running as a service\")",
        ));
    }
}

async fn check_endpoint(config: &HostConfig, report: &mut Report) {
    let addr = config.daemon.listen;
    let check = format!("endpoint {addr}");
    match tokio::net::TcpListener::bind(addr).await {
        Ok(_) => report.checks.push(Check::ok(check, "the address is free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let url = format!("http://{addr}/healthz");
            let answer = reqwest::Client::new()
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            let driftless = match answer {
                Ok(r) => {
                    let header = r.headers().contains_key("x-driftless-version");
                    let body = r.text().await.unwrap_or_default();
                    header || body == "ok\n"
                }
                Err(_) => false,
            };
            if driftless {
                report
                    .checks
                    .push(Check::ok(check, "held by a running driftless"));
            } else {
                report.checks.push(Check::error(
                    check,
                    "held by another program",
                    "stop it, or set daemon.listen to a free address",
                ));
            }
        }
        Err(e) => report.checks.push(Check::error(
            check,
            format!("cannot bind: {e}"),
            "set daemon.listen to an address of this host",
        )),
    }
}

//! Pushing to the test registries through their HTTP API, as `docker push` does. A base URL
//! may carry `user:password@` for the registry behind basic auth.

use serde_json::json;
use sha2::{Digest, Sha256};

/// One HTTP client per thread for every push: building a client loads the system's root
/// certificates, which costs more than the request itself. Per thread, not per process: each
/// `#[tokio::test]` has its own runtime on its own thread, and pooled connections belong to the
/// runtime that opened them.
pub fn http() -> reqwest::Client {
    thread_local! {
        static CLIENT: reqwest::Client = reqwest::Client::new();
    }
    CLIENT.with(Clone::clone)
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", super::hex(&Sha256::digest(bytes)))
}

/// Monolithic blob upload (POST then PUT with the digest), as `docker push` does for small blobs.
pub async fn push_blob(http: &reqwest::Client, base: &str, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    let resp = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("start upload");
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED, "start upload");
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    // Keep the base's credentials: an absolute Location names the host without them.
    let location = match location.find("/v2/") {
        Some(i) => format!("{base}{}", &location[i..]),
        None => format!("{base}{location}"),
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = http
        .put(format!("{location}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .expect("finish upload");
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED, "finish upload");
    digest
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Pushes a small image (config with `created`, one layer) and tags it; returns the manifest
/// digest and its bytes.
pub async fn push_image(
    base: &str,
    repo: &str,
    tag: &str,
    created: &str,
    salt: &str,
) -> (String, Vec<u8>) {
    let http = http();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "created": created,
        "rootfs": {"type": "layers", "diff_ids": []}, "config": {"Labels": {"salt": salt}}
    }))
    .unwrap();
    let layer = format!("layer of {repo}:{tag} {salt}").into_bytes();
    let config_digest = push_blob(&http, base, repo, &config).await;
    let layer_digest = push_blob(&http, base, repo, &layer).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]
    }))
    .unwrap();
    put_manifest(base, repo, tag, OCI_MANIFEST, &manifest).await;
    (sha256_digest(&manifest), manifest)
}

/// PUTs a manifest (or index) under `reference`.
pub async fn put_manifest(base: &str, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
    let resp = http()
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        reqwest::StatusCode::CREATED,
        "put manifest {repo}:{reference}"
    );
}

/// The referrers tag schema's and cosign's tag for `digest`: `sha256-<hex><suffix>`.
pub fn accessory_tag(digest: &str, suffix: &str) -> String {
    format!("{}{suffix}", digest.replace(':', "-"))
}

/// Pushes a cosign-style signature of `subject` (an image manifest whose layer is the
/// simple-signing payload naming the subject) under `sha256-<hex>.sig`; returns its digest.
pub async fn push_cosign_signature(base: &str, repo: &str, subject: &str) -> String {
    let http = http();
    let payload = serde_json::to_vec(&json!({
        "critical": {"identity": {"docker-reference": repo}, "image": {"docker-manifest-digest": subject},
            "type": "cosign container image signature"},
        "optional": null
    }))
    .unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&payload)]}
    }))
    .unwrap();
    let cd = push_blob(&http, base, repo, &config).await;
    let pd = push_blob(&http, base, repo, &payload).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": pd,
            "size": payload.len(), "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ…"}}]
    }))
    .unwrap();
    put_manifest(
        base,
        repo,
        &accessory_tag(subject, ".sig"),
        OCI_MANIFEST,
        &manifest,
    )
    .await;
    sha256_digest(&manifest)
}

/// Pushes an OCI 1.1 referrer of `subject` (an artifact manifest with `subject` and
/// `artifactType`), untagged; returns its digest and size.
pub async fn push_referrer(
    base: &str,
    repo: &str,
    subject: (&str, &str, usize),
    artifact_type: &str,
    salt: &str,
) -> (String, usize) {
    let http = http();
    let empty = b"{}".to_vec();
    let blob = format!("{{\"artifact\":\"{salt}\"}}").into_bytes();
    let ed = push_blob(&http, base, repo, &empty).await;
    let bd = push_blob(&http, base, repo, &blob).await;
    let (subject_digest, subject_type, subject_size) = subject;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": ed, "size": 2},
        "layers": [{"mediaType": artifact_type, "digest": bd, "size": blob.len()}],
        "subject": {"mediaType": subject_type, "digest": subject_digest, "size": subject_size}
    }))
    .unwrap();
    let digest = sha256_digest(&manifest);
    put_manifest(base, repo, &digest, OCI_MANIFEST, &manifest).await;
    (digest, manifest.len())
}

/// The referrers tag schema (OCI distribution 1.1, for registries without the referrers API):
/// an index of `referrers` (digest, size, artifact type) tagged `sha256-<hex of subject>`, as
/// clients such as oras and cosign maintain it. Returns its digest.
pub async fn push_referrers_index(
    base: &str,
    repo: &str,
    subject: &str,
    referrers: &[(String, usize, &str)],
) -> String {
    let manifests: Vec<serde_json::Value> = referrers
        .iter()
        .map(|(d, size, artifact_type)| {
            json!({"mediaType": OCI_MANIFEST, "digest": d, "size": size, "artifactType": artifact_type})
        })
        .collect();
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests
    }))
    .unwrap();
    put_manifest(base, repo, &accessory_tag(subject, ""), OCI_INDEX, &body).await;
    sha256_digest(&body)
}

/// A registry process of one test or benchmark's own (`REGISTRY_BIN` of the environment), with
/// its own storage directory, listening on a loopback port the kernel chose (read back from
/// `/proc`, so no port is picked before it is bound). Stopped and removed on drop. Use it for
/// work that would disturb the shared registry (garbage collection, tens of thousands of tags
/// that every other test's catalog scan would then walk).
pub struct PrivateRegistry {
    pub url: String,
    /// Its configuration file (for `registry garbage-collect`).
    pub config: std::path::PathBuf,
    pub pid: u32,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl PrivateRegistry {
    /// Starts `bin serve` with deletes enabled (the shared registry's settings) and waits until
    /// `/v2/` answers.
    pub async fn start(bin: &str) -> PrivateRegistry {
        let dir = tempfile::tempdir().expect("tempdir for the registry");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\n  maintenance:\n    uploadpurging: {{enabled: false}}\nhttp:\n  addr: 127.0.0.1:0\n",
                dir.path().join("data").display()
            ),
        )
        .expect("write registry config");
        let child = std::process::Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let pid = child.id();
        let port = super::eventually(
            "the private registry listens",
            std::time::Duration::from_secs(30),
            || async move { listening_port(pid) },
        )
        .await;
        let url = format!("http://127.0.0.1:{port}");
        super::eventually(
            "the private registry answers /v2/",
            std::time::Duration::from_secs(30),
            || {
                let url = url.clone();
                async move {
                    reqwest::get(format!("{url}/v2/"))
                        .await
                        .ok()
                        .filter(|r| r.status().is_success())
                }
            },
        )
        .await;
        PrivateRegistry {
            url,
            config,
            pid,
            child,
            _dir: dir,
        }
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The loopback TCP port process `pid` listens on (its first listening socket), from
/// `/proc/<pid>/fd` and `/proc/<pid>/net/tcp`.
fn listening_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local_address is f[1] ("0100007F:1F90"), st f[3] (0A: LISTEN), inode f[9].
        if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
            u16::from_str_radix(f[1].split_once(':')?.1, 16).ok()
        } else {
            None
        }
    })
}

/// CPU time (user + system) process `pid` has used so far, in seconds, from `/proc/<pid>/stat`;
/// `None` when the process is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses: state is the first,
    // utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux unless told otherwise).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

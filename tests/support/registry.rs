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
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
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

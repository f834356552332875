//! Docker Registry HTTP API v2 client (distribution v3): catalog and tag listing with pagination,
//! manifest resolution that never mistakes an index for one of its children, manifest and config
//! reads, the OCI 1.1 referrers API (bounded: its answer is untrusted), deletion by digest.
//! Retries 5xx and 429 with backoff; connections are kept alive and reused. Digests it reads
//! from a registry are checked before they go into a URL, and every manifest and config it reads
//! is bounded in size and checked against its digest (so facts read once can be kept by digest).
//! The only module that talks to a registry.

mod paging;
mod referrers;
mod wire;

use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderMap, HeaderValue, IF_NONE_MATCH, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use wire::parse_challenge;
pub use wire::{digest_of, index_children, is_digest, manifest_digest};

/// The manifest media types driftless accepts, all at once: with only some of them a registry may
/// answer an index request with one child's manifest, and the digest would be the child's.
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Bounds on a referrers response: bytes of one page, descriptors in all (more are left out:
/// a referrer never seen is never deleted).
pub const REFERRERS_MAX_BYTES: usize = 4 << 20;
pub const REFERRERS_MAX: usize = 1000;

/// Bound on a manifest (the OCI distribution specification asks registries to accept 4 MiB).
pub const MANIFEST_MAX_BYTES: usize = 4 << 20;

/// Bound on an image config blob read for its build date.
pub const CONFIG_MAX_BYTES: usize = 8 << 20;
/// Largest token response read from a challenge's realm (a registry token is a few KiB).
pub const TOKEN_MAX_BYTES: usize = 1 << 20;
/// Largest error answer read for its message.
pub const ERROR_BODY_MAX_BYTES: usize = 64 << 10;

/// Errors talking to a registry, naming the request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("registry {url}: {message}")]
    Http { url: String, message: String },
    #[error("registry {url}: HTTP {status}{detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("registry {url}: unreadable response: {message}")]
    Body { url: String, message: String },
}

impl Error {
    /// Whether the registry answered 404: the repository, manifest or blob does not exist (any
    /// more).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Status { status: 404, .. })
    }
}

/// Credentials for a registry.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<SecretString>,
}

/// A client for one registry.
pub struct Client {
    base: String,
    http: reqwest::Client,
    credentials: Credentials,
    /// A bearer token from the token flow, reused until the registry rejects it.
    token: tokio::sync::Mutex<Option<SecretString>>,
    /// Retries of a request answered 429 or 5xx (or failing to connect).
    pub retries: u32,
    /// Requests sent, retries and token fetches included (for reports and benchmarks).
    requests: std::sync::atomic::AtomicU64,
}

/// What deleting a tag (not its digest) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagDeletion {
    Deleted,
    /// The tag was already gone.
    Gone,
    /// The registry does not delete tags (only whole manifests by digest).
    Unsupported,
}

/// A manifest as resolved by `HEAD`/`GET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub digest: String,
    pub media_type: String,
}

/// A manifest as read with `GET`: its digest (checked against the bytes) and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub bytes: bytes::Bytes,
}

/// What a conditional manifest read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// No such tag or digest.
    Gone,
    /// The tag still resolves to the digest named in the request (`304 Not Modified`).
    Unchanged,
    Manifest(Manifest),
}

impl Manifest {
    /// The manifest's JSON.
    pub fn json(&self) -> Result<Value, Error> {
        serde_json::from_slice(&self.bytes).map_err(|e| Error::Body {
            url: self.digest.clone(),
            message: format!("manifest: {e}"),
        })
    }
}

/// One referrer as the referrers API lists it (claims only: the referrer's own manifest says
/// what it refers to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub digest: String,
    pub artifact_type: Option<String>,
}

/// The referrers of one digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Referrers {
    pub referrers: Vec<Referrer>,
    /// More than `REFERRERS_MAX` were listed; the rest are left out.
    pub truncated: bool,
}

impl Client {
    /// A client for `base` (e.g. `https://registry.example.internal`).
    pub fn new(base: &str, credentials: Credentials) -> Result<Client, Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Http {
                url: base.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            http,
            credentials,
            token: tokio::sync::Mutex::new(None),
            retries: 4,
            requests: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends a request with auth, following the bearer-token challenge once, retrying 429/5xx.
    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, Error> {
        let mut attempt = 0;
        let mut challenged = false;
        loop {
            let mut req = self
                .http
                .request(method.clone(), url)
                .headers(headers.clone());
            if let Some(token) = self.token.lock().await.as_ref() {
                req = req.bearer_auth(token.expose_secret());
            } else {
                req = self.with_basic_auth(req);
            }
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let result = req.send().await;
            let retryable = match &result {
                Ok(r) => {
                    r.status() == StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error()
                }
                Err(e) => e.is_connect() || e.is_timeout(),
            };
            if retryable && attempt < self.retries {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * (1 << attempt))).await;
                continue;
            }
            let resp = result.map_err(|e| Error::Http {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
            if resp.status() == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                if let Some(challenge) = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    && challenge.to_ascii_lowercase().starts_with("bearer ")
                {
                    let token = self.fetch_token(challenge).await?;
                    *self.token.lock().await = Some(token);
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    fn with_basic_auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials.username {
            Some(user) => req.basic_auth(
                user,
                self.credentials
                    .password
                    .as_ref()
                    .map(|p| p.expose_secret().to_owned()),
            ),
            None => req,
        }
    }

    /// The token flow: `Bearer realm=…,service=…,scope=…` → GET realm with basic auth → token.
    async fn fetch_token(&self, challenge: &str) -> Result<SecretString, Error> {
        let params = parse_challenge(&challenge["bearer ".len()..]);
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| Error::Http {
                url: self.base.clone(),
                message: "bearer challenge without a realm".to_owned(),
            })?;
        let query: Vec<(&str, &str)> = params
            .iter()
            .filter(|(k, _)| k == "service" || k == "scope")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let url = reqwest::Url::parse_with_params(&realm, &query).map_err(|e| Error::Http {
            url: realm.clone(),
            message: format!("bad token realm: {e}"),
        })?;
        let req = self.with_basic_auth(self.http.get(url));
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resp = req.send().await.map_err(|e| Error::Http {
            url: realm.clone(),
            message: e.to_string(),
        })?;
        let resp = check(&realm, resp).await?;
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        // The realm is named by the registry's challenge: its answer is read only so far.
        let bytes = read_limited(&realm, resp, TOKEN_MAX_BYTES).await?;
        let t: Token = serde_json::from_slice(&bytes).map_err(|e| Error::Body {
            url: realm.clone(),
            message: e.to_string(),
        })?;
        t.token
            .or(t.access_token)
            .map(SecretString::from)
            .ok_or_else(|| Error::Body {
                url: realm,
                message: "token response without a token".to_owned(),
            })
    }

    /// Every repository (`/v2/_catalog`), following `Link: rel="next"` pages of `page_size`.
    pub async fn catalog(&self, page_size: usize) -> Result<Vec<String>, Error> {
        self.paged(
            &format!("{}/v2/_catalog?n={page_size}", self.base),
            "repositories",
        )
        .await
    }

    /// Every tag of `repository`, following pagination.
    pub async fn tags(&self, repository: &str, page_size: usize) -> Result<Vec<String>, Error> {
        self.paged(
            &format!("{}/v2/{repository}/tags/list?n={page_size}", self.base),
            "tags",
        )
        .await
    }

    /// Resolves a tag or digest with `HEAD` and every manifest type accepted; `None` if absent.
    pub async fn resolve(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Resolved>, Error> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
        let resp = self.send(Method::HEAD, &url, accept_all()).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check(&url, resp).await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let digest = header("docker-content-digest").ok_or_else(|| Error::Body {
            url: url.clone(),
            message: "no Docker-Content-Digest header".to_owned(),
        })?;
        if !is_digest(&digest) {
            return Err(Error::Body {
                url,
                message: "malformed Docker-Content-Digest header".to_owned(),
            });
        }
        Ok(Some(Resolved {
            digest,
            media_type: header("content-type").unwrap_or_default(),
        }))
    }

    /// Reads a manifest by tag or digest with one `GET`, every manifest type accepted: its digest
    /// (the `Docker-Content-Digest` header, or the bytes' sha256 without one) and content; `None`
    /// if absent. The body is bounded (`MANIFEST_MAX_BYTES`) and must hash to the digest, and a
    /// manifest read by digest must be that digest: a registry cannot make driftless keep facts
    /// under a digest they do not belong to.
    pub async fn fetch_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, Error> {
        Ok(
            match self
                .fetch_manifest_unless(repository, reference, None)
                .await?
            {
                Fetched::Manifest(m) => Some(m),
                // Without `If-None-Match` a 304 is no answer to this request.
                Fetched::Gone | Fetched::Unchanged => None,
            },
        )
    }

    /// `fetch_manifest`, asking the registry (`If-None-Match: "<digest>"`) to answer `304 Not
    /// Modified` instead of the content when the tag still resolves to `unless`, a digest whose
    /// content driftless read and checked before: then nothing is read (distribution compares
    /// the tag's digest before it loads the manifest, so this costs it less than half a `GET`).
    /// A registry that ignores the header answers with the manifest, checked as always.
    pub async fn fetch_manifest_unless(
        &self,
        repository: &str,
        reference: &str,
        unless: Option<&str>,
    ) -> Result<Fetched, Error> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
        let mut headers = accept_all();
        // Only a well-formed digest is asked about (it is plain ASCII then), and only a question
        // actually asked takes a `304` as its answer: anything else is an error below.
        let asked = unless
            .filter(|d| is_digest(d))
            .and_then(|d| HeaderValue::from_str(&format!("\"{d}\"")).ok());
        let asked = match asked {
            Some(v) => {
                headers.insert(IF_NONE_MATCH, v);
                true
            }
            None => false,
        };
        let resp = self.send(Method::GET, &url, headers).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Ok(Fetched::Gone),
            StatusCode::NOT_MODIFIED if asked => return Ok(Fetched::Unchanged),
            _ => {}
        }
        let resp = check(&url, resp).await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (claimed, media_type) = (header("docker-content-digest"), header("content-type"));
        let bytes = read_limited(&url, resp, MANIFEST_MAX_BYTES).await?;
        let expected =
            manifest_digest(reference, claimed.as_deref(), &bytes).map_err(|e| Error::Body {
                url: url.clone(),
                message: e.to_string(),
            })?;
        Ok(Fetched::Manifest(Manifest {
            digest: expected,
            media_type: media_type.unwrap_or_default(),
            bytes: bytes.into(),
        }))
    }

    /// A manifest's JSON (index or image manifest), read and checked as `fetch_manifest` does.
    pub async fn manifest(&self, repository: &str, reference: &str) -> Result<Value, Error> {
        match self.fetch_manifest(repository, reference).await? {
            Some(m) => m.json(),
            None => Err(Error::Status {
                url: format!("{}/v2/{repository}/manifests/{reference}", self.base),
                status: 404,
                detail: String::new(),
            }),
        }
    }

    /// The `created` time of an image manifest's config blob, if it has one.
    pub async fn created(
        &self,
        repository: &str,
        manifest: &Value,
    ) -> Result<Option<String>, Error> {
        match manifest.pointer("/config/digest").and_then(Value::as_str) {
            Some(digest) => self.config_created(repository, digest).await,
            None => Ok(None),
        }
    }

    /// The `created` time in the config blob `digest` (bounded by `CONFIG_MAX_BYTES`, checked
    /// against its digest). A malformed digest is never put into a URL: no date.
    pub async fn config_created(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<String>, Error> {
        if !is_digest(digest) {
            return Ok(None);
        }
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base);
        let resp = check(&url, self.send(Method::GET, &url, HeaderMap::new()).await?).await?;
        let bytes = read_limited(&url, resp, CONFIG_MAX_BYTES).await?;
        let algorithm = digest.split_once(':').map_or("", |(a, _)| a);
        if digest_of(algorithm, &bytes).as_deref() != Some(digest) {
            return Err(Error::Body {
                url,
                message: "the config blob does not match its digest".to_owned(),
            });
        }
        let config: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Body {
            url,
            message: e.to_string(),
        })?;
        Ok(config
            .get("created")
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    /// Deletes a manifest by digest (every tag on it goes with it). `false` when already gone.
    pub async fn delete(&self, repository: &str, digest: &str) -> Result<bool, Error> {
        let url = format!("{}/v2/{repository}/manifests/{digest}", self.base);
        let resp = self.send(Method::DELETE, &url, HeaderMap::new()).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        check(&url, resp).await?;
        Ok(true)
    }

    /// Deletes one tag, leaving its manifest and other tags (OCI distribution 1.1; distribution
    /// v3 supports it). Registries without it answer 400/405 `UNSUPPORTED`.
    pub async fn delete_tag(&self, repository: &str, tag: &str) -> Result<TagDeletion, Error> {
        let url = format!("{}/v2/{repository}/manifests/{tag}", self.base);
        let resp = self.send(Method::DELETE, &url, HeaderMap::new()).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(TagDeletion::Gone),
            StatusCode::METHOD_NOT_ALLOWED | StatusCode::BAD_REQUEST => {
                Ok(TagDeletion::Unsupported)
            }
            _ => {
                check(&url, resp).await?;
                Ok(TagDeletion::Deleted)
            }
        }
    }
}

/// A response body of at most `limit` bytes (a larger one is an error, read no further).
pub(super) async fn read_limited(
    url: &str,
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, Error> {
    let too_large = || Error::Body {
        url: url.to_owned(),
        message: format!("response larger than {limit} bytes"),
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| Error::Body {
        url: url.to_owned(),
        message: e.to_string(),
    })? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn accept_all() -> HeaderMap {
    let mut h = HeaderMap::new();
    // The joined constant is plain ASCII: from_str cannot fail.
    if let Ok(v) = HeaderValue::from_str(&MANIFEST_TYPES.join(", ")) {
        h.insert(ACCEPT, v);
    }
    h
}

pub(super) async fn check(url: &str, resp: reqwest::Response) -> Result<reqwest::Response, Error> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    // Read only for its message, and only so far: the registry's answer is untrusted.
    let body = read_limited(url, resp, ERROR_BODY_MAX_BYTES)
        .await
        .unwrap_or_default();
    let detail = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/errors/0/message")
                .and_then(Value::as_str)
                .map(|m| format!(": {m}"))
        })
        .unwrap_or_default();
    Err(Error::Status {
        url: url.to_owned(),
        status,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::wire::next_link;
    use super::*;

    #[test]
    fn manifest_digests_come_from_the_bytes() {
        let body = br#"{"schemaVersion":2}"#;
        let sha256 = digest_of("sha256", body).unwrap();
        let sha512 = digest_of("sha512", body).unwrap();
        let other = digest_of("sha256", b"other").unwrap();
        // No header: computed (sha256, or the reference's algorithm).
        assert_eq!(manifest_digest("v1", None, body), Ok(sha256.clone()));
        assert_eq!(manifest_digest(&sha512, None, body), Ok(sha512.clone()));
        // A header that agrees names the algorithm.
        assert_eq!(
            manifest_digest("v1", Some(&sha256), body),
            Ok(sha256.clone())
        );
        assert_eq!(
            manifest_digest("v1", Some(&sha512), body),
            Ok(sha512.clone())
        );
        assert_eq!(
            manifest_digest(&sha256, Some(&sha256), body),
            Ok(sha256.clone())
        );
        // A header that disagrees, a malformed header, another digest than asked for,
        // an unsupported algorithm: errors.
        for (reference, claimed) in [
            ("v1", Some(other.as_str())),
            (sha256.as_str(), Some(other.as_str())),
            ("v1", Some("sha256:abc")),
            ("v1", Some("md5:0123")),
            (other.as_str(), None),
            (other.as_str(), Some(sha256.as_str())),
        ] {
            assert!(
                manifest_digest(reference, claimed, body).is_err(),
                "{reference} {claimed:?}"
            );
        }
    }

    #[test]
    fn link_and_challenge_parsing() {
        assert_eq!(
            next_link(r#"</v2/_catalog?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/_catalog?last=b&n=2")
        );
        assert_eq!(next_link(r#"<https://r/x>; rel="prev""#), None);
        let c = parse_challenge(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,delete""#,
        );
        assert_eq!(
            c,
            vec![
                ("realm".to_owned(), "https://auth.example/token".to_owned()),
                ("service".to_owned(), "registry.example".to_owned()),
                ("scope".to_owned(), "repository:a/b:pull,delete".to_owned()),
            ]
        );
    }

    const HEX: &str = "3b4c0f1c5e7a9d2b8f6e4a1c0d9b7e5f3a2c1b0e9d8f7a6b5c4d3e2f1a0b9c8d";

    #[test]
    fn index_children_are_listed_and_malformed_digests_left_out() {
        let (a, b) = (format!("sha256:{HEX}"), format!("sha512:{HEX}{HEX}"));
        let index = serde_json::json!({"manifests": [
            {"digest": a}, {"digest": "sha256:../../other/manifests/x"}, {"digest": b}]});
        assert_eq!(index_children(&index), [a, b]);
        assert!(index_children(&serde_json::json!({"config": {}})).is_empty());
    }

    #[test]
    fn digests_that_could_steer_a_url_are_refused() {
        assert!(is_digest(&format!("sha256:{HEX}")));
        assert!(is_digest(&format!("sha512:{HEX}{HEX}")));
        for bad in [
            format!("sha256:{}", &HEX[..63]),
            format!("sha256:{HEX}/../../other/manifests/x"),
            format!("sha256:../{}", &HEX[3..]),
            format!("sha256:{}%2f", &HEX[..61]),
            format!("SHA256:{HEX}"),
            format!("sha256:{}", HEX.to_uppercase()),
            format!("sha1:{}", &HEX[..40]),
            "sha256:".to_owned(),
            String::new(),
        ] {
            assert!(!is_digest(&bad), "{bad}");
        }
    }
    /// The head of the next request on a mock registry's connection (requests without a body,
    /// one at a time); `None` once the client closed it.
    async fn next_request(conn: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let mut request = Vec::new();
        let mut buf = vec![0u8; 8192];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        Some(request)
    }

    /// Failure injection: a registry whose tag list links its next page to another host. The
    /// other host gets no request (it would carry the registry's credentials), and the listing
    /// fails naming the link instead of returning part of the tags.
    #[tokio::test]
    async fn a_next_page_on_another_host_is_not_followed() {
        use tokio::io::AsyncWriteExt;
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let elsewhere_addr = elsewhere.local_addr().unwrap();
        let visits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = visits.clone();
        tokio::spawn(async move {
            while let Ok((_conn, _)) = elsewhere.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    while let Some(_request) = next_request(&mut conn).await {
                        let body = r#"{"name":"app","tags":["v1"]}"#;
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nlink: <http://{elsewhere_addr}/v2/app/tags/list?last=v1>; rel=\"next\"\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let credentials = Credentials {
            username: Some("robot".to_owned()),
            password: Some(SecretString::from("sentinel-password".to_owned())),
        };
        let client = Client::new(&base, credentials).unwrap();
        let error = client.tags("app", 100).await.unwrap_err().to_string();
        assert!(error.contains("leads away from the registry"), "{error}");
        assert!(!error.contains("sentinel-password"), "{error}");
        assert_eq!(visits.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    /// Failure injection: a registry whose answers have bodies that never end (no length,
    /// 64 MiB each): its token realm (`/token`) answers 200, repository `broken` 500, any other
    /// request asks for a token. Returns its address and how many body bytes it got to send.
    async fn endless_registry() -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = sent.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Some(request) = next_request(&mut conn).await else {
                        return;
                    };
                    let head = if request.starts_with(b"GET /token") {
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{\"token\":\"".to_owned()
                    } else if request.starts_with(b"GET /v2/broken/") {
                        "HTTP/1.1 500 Internal Server Error\r\nconnection: close\r\n\r\n{\"errors\":[{\"message\":\"".to_owned()
                    } else {
                        let reply = format!(
                            "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"http://{addr}/token\",service=\"r\"\r\ncontent-length: 0\r\n\r\n"
                        );
                        let _ = conn.write_all(reply.as_bytes()).await;
                        return;
                    };
                    if conn.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = vec![b'a'; 64 * 1024];
                    for _ in 0..1024 {
                        if conn.write_all(&chunk).await.is_err() {
                            return;
                        }
                        counted.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
                    }
                });
            }
        });
        (addr, sent)
    }

    fn robot() -> Credentials {
        Credentials {
            username: Some("robot".to_owned()),
            password: Some(SecretString::from("sentinel-password".to_owned())),
        }
    }

    /// The token is read up to `TOKEN_MAX_BYTES` and the job fails naming the realm, instead of
    /// reading the whole body into memory.
    #[tokio::test]
    async fn an_endless_token_response_is_not_read_to_its_end() {
        let (addr, sent) = endless_registry().await;
        let client = Client::new(&format!("http://{addr}"), robot()).unwrap();
        let error = client.tags("app", 100).await.unwrap_err().to_string();
        assert!(error.contains(&format!("http://{addr}/token")), "{error}");
        assert!(
            error.contains(&format!("larger than {TOKEN_MAX_BYTES} bytes")),
            "{error}"
        );
        assert!(!error.contains("sentinel-password"), "{error}");
        // The client stopped reading: the server could not send the whole 64 MiB.
        assert!(sent.load(std::sync::atomic::Ordering::SeqCst) < 64 << 20);
    }

    /// An error answer's body is read only for its message, up to `ERROR_BODY_MAX_BYTES`: the
    /// error names the status without it.
    #[tokio::test]
    async fn an_endless_error_body_is_not_read_to_its_end() {
        let (addr, sent) = endless_registry().await;
        let client = Client::new(&format!("http://{addr}"), robot()).unwrap();
        let error = client.tags("broken", 100).await.unwrap_err().to_string();
        assert!(error.contains("500"), "{error}");
        assert!(error.contains("/v2/broken/tags/list"), "{error}");
        assert!(sent.load(std::sync::atomic::Ordering::SeqCst) < 64 << 20);
    }

    /// Failure injection: a registry that answers every request `304 Not Modified`. Only a
    /// question driftless asked (a well-formed digest in `If-None-Match`) takes it as "unchanged";
    /// with a malformed digest (from a tampered facts file) nothing is asked and the `304` is an
    /// error, so no digest that was never checked reaches the plan.
    #[tokio::test]
    async fn a_304_counts_only_as_the_answer_to_a_question_asked() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    while let Some(request) = next_request(&mut conn).await {
                        record
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&request).to_lowercase());
                        let reply = b"HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n";
                        if conn.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let client = Client::new(&base, Credentials::default()).unwrap();
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            client
                .fetch_manifest_unless("app", "v1", Some(&digest))
                .await
                .unwrap(),
            Fetched::Unchanged
        );
        for bad in [Some("sha256:../../x"), None] {
            let answer = client.fetch_manifest_unless("app", "v1", bad).await;
            assert!(answer.is_err(), "{bad:?}: {answer:?}");
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen[0].contains(&format!("if-none-match: \"{digest}\"")),
            "{}",
            seen[0]
        );
        assert!(
            seen[1..].iter().all(|r| !r.contains("if-none-match")),
            "{seen:?}"
        );
    }
}

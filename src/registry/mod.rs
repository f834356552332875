//! Docker Registry HTTP API v2 client (distribution v3): catalog and tag listing with pagination,
//! manifest resolution that never mistakes an index for one of its children, manifest and config
//! reads, deletion by digest. Retries 5xx and 429 with backoff. The only module that talks to a
//! registry.

use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderMap, HeaderValue, LINK, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

/// The manifest media types driftless accepts, all at once: with only some of them a registry may
/// answer an index request with one child's manifest, and the digest would be the child's.
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

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
        let t: Token = resp.json().await.map_err(|e| Error::Body {
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

    async fn paged(&self, first: &str, field: &str) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        let mut next = Some(first.to_owned());
        while let Some(url) = next.take() {
            let resp = check(&url, self.send(Method::GET, &url, HeaderMap::new()).await?).await?;
            next = resp
                .headers()
                .get(LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .map(|l| {
                    if l.starts_with("http") {
                        l
                    } else {
                        format!("{}{l}", self.base)
                    }
                });
            let body: Value = resp.json().await.map_err(|e| Error::Body {
                url: url.clone(),
                message: e.to_string(),
            })?;
            if let Some(items) = body.get(field).and_then(Value::as_array) {
                out.extend(items.iter().filter_map(Value::as_str).map(str::to_owned));
            }
        }
        Ok(out)
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
        Ok(Some(Resolved {
            digest,
            media_type: header("content-type").unwrap_or_default(),
        }))
    }

    /// A manifest's JSON (index or image manifest).
    pub async fn manifest(&self, repository: &str, reference: &str) -> Result<Value, Error> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
        let resp = check(&url, self.send(Method::GET, &url, accept_all()).await?).await?;
        resp.json().await.map_err(|e| Error::Body {
            url,
            message: e.to_string(),
        })
    }

    /// The `created` time of an image manifest's config blob, if it has one.
    pub async fn created(
        &self,
        repository: &str,
        manifest: &Value,
    ) -> Result<Option<String>, Error> {
        let Some(digest) = manifest.pointer("/config/digest").and_then(Value::as_str) else {
            return Ok(None);
        };
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base);
        let resp = check(&url, self.send(Method::GET, &url, HeaderMap::new()).await?).await?;
        let config: Value = resp.json().await.map_err(|e| Error::Body {
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

/// The children of an index (their digests), empty for an image manifest.
pub fn index_children(manifest: &Value) -> Vec<String> {
    manifest
        .get("manifests")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(|c| c.get("digest")?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn accept_all() -> HeaderMap {
    let mut h = HeaderMap::new();
    // The joined constant is plain ASCII: from_str cannot fail.
    if let Ok(v) = HeaderValue::from_str(&MANIFEST_TYPES.join(", ")) {
        h.insert(ACCEPT, v);
    }
    h
}

async fn check(url: &str, resp: reqwest::Response) -> Result<reqwest::Response, Error> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<Value>(&body)
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

/// The target of `Link: </v2/_catalog?last=x&n=2>; rel="next"`.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

/// `realm="https://auth",service="registry",scope="repository:a:pull"` → pairs.
fn parse_challenge(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.split_once('"') {
                Some((v, r)) => (v.to_owned(), r),
                None => (quoted.to_owned(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, r)) => (v.trim().to_owned(), r),
                None => (after.trim().to_owned(), ""),
            }
        };
        out.push((key, value));
        rest = remaining.trim_start_matches(',').trim();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn index_children_are_listed() {
        let index =
            serde_json::json!({"manifests": [{"digest": "sha256:a"}, {"digest": "sha256:b"}]});
        assert_eq!(index_children(&index), ["sha256:a", "sha256:b"]);
        assert!(index_children(&serde_json::json!({"config": {}})).is_empty());
    }
}

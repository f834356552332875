//! The OCI 1.1 referrers API (`GET /v2/<repository>/referrers/<digest>`): its answer is
//! untrusted, so bounded and checked.

use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{
    Client, Error, REFERRERS_MAX, REFERRERS_MAX_BYTES, Referrer, Referrers, check, is_digest,
    read_limited,
};

impl Client {
    /// The referrers of `digest` (`GET /v2/<repository>/referrers/<digest>`, OCI distribution
    /// 1.1), following `Link` pages; `None` when the registry does not serve the API (404, as
    /// the specification asks of such registries). The answer is bounded
    /// (`REFERRERS_MAX_BYTES` per page, `REFERRERS_MAX` descriptors) and descriptors whose digest
    /// is malformed are dropped.
    pub async fn referrers(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<Referrers>, Error> {
        let mut out = Referrers::default();
        let mut next = Some(format!("{}/v2/{repository}/referrers/{digest}", self.base));
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            let mut accept = HeaderMap::new();
            accept.insert(
                ACCEPT,
                HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
            );
            let resp = self.send(Method::GET, &url, accept).await?;
            if resp.status() == StatusCode::NOT_FOUND && pages == 1 {
                return Ok(None);
            }
            let resp = check(&url, resp).await?;
            next = self.next_page(&url, &resp)?;
            let body = read_limited(&url, resp, REFERRERS_MAX_BYTES).await?;
            let index: Value = serde_json::from_slice(&body).map_err(|e| Error::Body {
                url: url.clone(),
                message: format!("referrers: {e}"),
            })?;
            for m in index
                .get("manifests")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(d) = m
                    .get("digest")
                    .and_then(Value::as_str)
                    .filter(|d| is_digest(d))
                else {
                    continue;
                };
                if out.referrers.len() == REFERRERS_MAX {
                    out.truncated = true;
                    return Ok(Some(out));
                }
                out.referrers.push(Referrer {
                    digest: d.to_owned(),
                    artifact_type: m
                        .get("artifactType")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                });
            }
            // A registry that pages forever is cut off like one that lists too many.
            if next.is_some() && pages >= 100 {
                out.truncated = true;
                break;
            }
        }
        Ok(Some(out))
    }
}

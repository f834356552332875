//! Paginated listings (`Link: rel="next"`): the catalog, tag lists and referrers follow their
//! pages here. The registry's links are untrusted: followed only on the registry itself, and
//! bounded.

use reqwest::Method;
use reqwest::header::{HeaderMap, LINK};
use serde_json::Value;

use super::wire::next_link;
use super::{Client, Error, check, read_limited};

/// Largest page of a catalog or tag list read (a page of 1,000 names is ~100 KiB).
pub const PAGE_MAX_BYTES: usize = 16 << 20;
/// Most pages of one catalog or tag list followed (at `n=1000`, 100 million names).
pub const PAGES_MAX: usize = 100_000;

impl Client {
    /// The next page's URL from the `Link` header of the response to `url`, resolved against
    /// `url`. The header is the registry's word, not ours: a link that leaves this registry (another
    /// host, port or scheme) is refused, since every request carries its credentials.
    pub(super) fn next_page(
        &self,
        url: &str,
        resp: &reqwest::Response,
    ) -> Result<Option<String>, Error> {
        let Some(link) = resp
            .headers()
            .get(LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_link)
        else {
            return Ok(None);
        };
        same_registry(&self.base, url, &link)
            .map(Some)
            .map_err(|message| Error::Body {
                url: url.to_owned(),
                message,
            })
    }

    pub(super) async fn paged(&self, first: &str, field: &str) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        let mut next = Some(first.to_owned());
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > PAGES_MAX {
                return Err(Error::Body {
                    url,
                    message: format!(
                        "more than {PAGES_MAX} pages: the registry's links do not end"
                    ),
                });
            }
            let resp = check(&url, self.send(Method::GET, &url, HeaderMap::new()).await?).await?;
            next = self.next_page(&url, &resp)?;
            let bytes = read_limited(&url, resp, PAGE_MAX_BYTES).await?;
            let body: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Body {
                url: url.clone(),
                message: e.to_string(),
            })?;
            if let Some(items) = body.get(field).and_then(Value::as_array) {
                out.extend(items.iter().filter_map(Value::as_str).map(str::to_owned));
            }
        }
        Ok(out)
    }
}

/// `link` resolved against `current` (the URL it came with), when it stays on the registry at
/// `base` (same scheme, host and port); otherwise why not.
fn same_registry(base: &str, current: &str, link: &str) -> Result<String, String> {
    let origin = |u: &reqwest::Url| {
        (
            u.scheme().to_owned(),
            u.host_str().map(str::to_owned),
            u.port_or_known_default(),
        )
    };
    let base = reqwest::Url::parse(base).map_err(|e| format!("registry URL: {e}"))?;
    let next = reqwest::Url::parse(current)
        .and_then(|c| c.join(link))
        .map_err(|e| format!("next page link {link:?}: {e}"))?;
    if origin(&next) != origin(&base) || !next.username().is_empty() || next.password().is_some() {
        return Err(format!(
            "next page link {link:?} leads away from the registry: not followed (it would carry the registry's credentials)"
        ));
    }
    Ok(next.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_page_links_stay_on_the_registry() {
        let base = "http://127.0.0.1:5000";
        let current = "http://127.0.0.1:5000/v2/_catalog?n=100";
        for (link, want) in [
            (
                "/v2/_catalog?last=b&n=100",
                "http://127.0.0.1:5000/v2/_catalog?last=b&n=100",
            ),
            (
                "http://127.0.0.1:5000/v2/_catalog?last=b",
                "http://127.0.0.1:5000/v2/_catalog?last=b",
            ),
            ("?last=b", "http://127.0.0.1:5000/v2/_catalog?last=b"),
            // Joined as a path, not read as credentials for another host.
            (
                "@evil.example/x",
                "http://127.0.0.1:5000/v2/@evil.example/x",
            ),
        ] {
            assert_eq!(
                same_registry(base, current, link).as_deref(),
                Ok(want),
                "{link}"
            );
        }
        for link in [
            "http://evil.example/v2/_catalog?last=b",
            "//evil.example/v2/_catalog",
            "https://127.0.0.1:5000/v2/_catalog",
            "http://127.0.0.1:5001/v2/_catalog",
            "http://user:pass@127.0.0.1:5000/v2/_catalog",
            "http://127.0.0.1:5000@evil.example/v2/_catalog",
        ] {
            let refused = same_registry(base, current, link).unwrap_err();
            assert!(
                refused.contains("leads away from the registry"),
                "{link}: {refused}"
            );
        }
    }
}

//! The pure part of the registry protocol: which digests go into a URL, a manifest's digest
//! from the bytes received, an index's children, `Link` pagination and `WWW-Authenticate`
//! challenges. No I/O.

use serde_json::Value;

/// Whether `text` is a digest driftless puts in a URL: `sha256:` and 64 lowercase hex digits,
/// or `sha512:` and 128. Anything else (`../`, `%2f`, uppercase) is refused, so a manifest or a
/// referrers response cannot steer a request (a DELETE) to another path.
pub fn is_digest(text: &str) -> bool {
    let hex_of = |len: usize, hex: &str| {
        hex.len() == len
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match text.split_once(':') {
        Some(("sha256", hex)) => hex_of(64, hex),
        Some(("sha512", hex)) => hex_of(128, hex),
        _ => false,
    }
}

/// The children of an index (their digests), empty for an image manifest. Malformed digests are
/// left out (they could not be children in the registry anyway).
pub fn index_children(manifest: &Value) -> Vec<String> {
    manifest
        .get("manifests")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(|c| c.get("digest")?.as_str().filter(|d| is_digest(d)))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The digest of a manifest read by `reference` (pure): always computed from the exact `bytes`
/// received. A `Docker-Content-Digest` header (`claimed`) names the algorithm and must equal the
/// computed digest; without one, a digest reference does, else sha256. A manifest read by digest
/// Why a manifest's bytes are not taken: nothing is decided (or deleted) from them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("malformed Docker-Content-Digest header")]
    MalformedHeader,
    #[error("unsupported digest algorithm {0:?}")]
    Algorithm(String),
    #[error("the manifest's content is {computed}, the Docker-Content-Digest header says {header}")]
    HeaderDisagrees { computed: String, header: String },
    #[error("asked for {asked}, got {computed}")]
    NotAsked { asked: String, computed: String },
}

/// must be that digest. Any disagreement is an error: nothing is decided (or deleted) from it.
pub fn manifest_digest(
    reference: &str,
    claimed: Option<&str>,
    bytes: &[u8],
) -> Result<String, DigestError> {
    let algorithm = match claimed {
        Some(d) if !is_digest(d) => return Err(DigestError::MalformedHeader),
        Some(d) => d,
        None if is_digest(reference) => reference,
        None => "sha256:",
    }
    .split_once(':')
    .map_or("", |(a, _)| a);
    let computed =
        digest_of(algorithm, bytes).ok_or_else(|| DigestError::Algorithm(algorithm.to_owned()))?;
    if let Some(d) = claimed
        && d != computed
    {
        return Err(DigestError::HeaderDisagrees {
            computed,
            header: d.to_owned(),
        });
    }
    if is_digest(reference) && reference != computed {
        return Err(DigestError::NotAsked {
            asked: reference.to_owned(),
            computed,
        });
    }
    Ok(computed)
}

/// `<algorithm>:<hex>` of `bytes` for sha256 and sha512; `None` for another algorithm.
pub fn digest_of(algorithm: &str, bytes: &[u8]) -> Option<String> {
    use sha2::Digest;
    let hash: Vec<u8> = match algorithm {
        "sha256" => sha2::Sha256::digest(bytes).to_vec(),
        "sha512" => sha2::Sha512::digest(bytes).to_vec(),
        _ => return None,
    };
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("{algorithm}:{hex}"))
}

/// The target of `Link: </v2/_catalog?last=x&n=2>; rel="next"`.
pub(super) fn next_link(header: &str) -> Option<String> {
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
pub(super) fn parse_challenge(text: &str) -> Vec<(String, String)> {
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

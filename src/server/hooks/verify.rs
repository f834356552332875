//! Is a webhook request authentic: HMAC-SHA256 signatures of the raw body (GitHub, Gitea and
//! Forgejo, generic) or GitLab's shared token, checked in constant time.

use axum::http::HeaderMap;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::{
    Error, FORGEJO_SIGNATURE, GENERIC_SIGNATURE, GITEA_SIGNATURE, GITLAB_TOKEN, HUB_SIGNATURE,
    Provider, SHA256_PREFIX,
};
use crate::server::auth::constant_time_eq;

type HmacSha256 = Hmac<Sha256>;

/// Checks the request's authenticity in constant time.
///
/// GitHub, Gitea and generic routes check an HMAC-SHA256 of the raw body; GitLab compares its
/// shared token. Call this on the exact bytes received, before any parsing.
pub fn verify(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    secret: &SecretString,
) -> Result<(), Error> {
    let secret = secret.expose_secret().as_bytes();
    if secret.is_empty() {
        return Err(Error::EmptySecret);
    }
    match provider {
        Provider::Github => verify_hmac(headers, HUB_SIGNATURE, true, body, secret),
        Provider::Generic => verify_hmac(headers, GENERIC_SIGNATURE, true, body, secret),
        Provider::Gitea => {
            // Forgejo sends its own header besides Gitea's, and both send GitHub's; any one
            // proves the same thing, so the first present decides.
            let candidates = [
                (FORGEJO_SIGNATURE, false),
                (GITEA_SIGNATURE, false),
                (HUB_SIGNATURE, true),
            ];
            match candidates
                .into_iter()
                .find(|(name, _)| headers.contains_key(*name))
            {
                Some((name, prefixed)) => verify_hmac(headers, name, prefixed, body, secret),
                None => Err(Error::MissingCredential {
                    header: "X-Gitea-Signature (or X-Forgejo-Signature, X-Hub-Signature-256)",
                }),
            }
        }
        Provider::Gitlab => {
            let token = headers.get(GITLAB_TOKEN).ok_or(Error::MissingCredential {
                header: GITLAB_TOKEN,
            })?;
            if constant_time_eq(token.as_bytes(), secret) {
                Ok(())
            } else {
                Err(Error::TokenMismatch)
            }
        }
    }
}

/// Checks `header` holds the HMAC-SHA256 of `body`, as hex, after `sha256=` when `prefixed`.
fn verify_hmac(
    headers: &HeaderMap,
    header: &'static str,
    prefixed: bool,
    body: &[u8],
    secret: &[u8],
) -> Result<(), Error> {
    let value = headers
        .get(header)
        .ok_or(Error::MissingCredential { header })?;
    let malformed = |reason| Error::MalformedSignature { header, reason };
    let value = value
        .to_str()
        .map_err(|_| malformed("not visible ASCII"))?
        .trim();
    let hex = if prefixed {
        value
            .strip_prefix(SHA256_PREFIX)
            .ok_or_else(|| malformed("expected sha256=<64 hex digits>"))?
    } else {
        value
    };
    let tag = decode_hex(hex).ok_or_else(|| malformed("expected 64 hex digits"))?;
    if tag.len() != 32 {
        return Err(malformed("expected 64 hex digits"));
    }
    // HMAC takes keys of any length, so this cannot fail; no panic path is kept for it anyway.
    let mac = HmacSha256::new_from_slice(secret).map_err(|_| Error::EmptySecret)?;
    mac.chain_update(body)
        .verify_slice(&tag)
        .map_err(|_| Error::SignatureMismatch { header })
}

/// Decodes hex of either case; `None` on an odd length or a non-hex digit.
fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let bytes = hex.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16);
    bytes
        .chunks_exact(2)
        .map(|pair| Some((nibble(pair[0])? * 16 + nibble(pair[1])?) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn github_valid_signature() {
        let body = GITHUB_PUSH.as_bytes();
        let sig = format!("sha256={}", sign(body, SECRET));
        let h = headers(&[("X-Hub-Signature-256", &sig)]);
        verify(Provider::Github, &h, body, &secret()).unwrap();
    }

    #[test]
    fn github_uppercase_hex_is_accepted() {
        let body = b"{}";
        let sig = format!("sha256={}", sign(body, SECRET).to_ascii_uppercase());
        let h = headers(&[("x-hub-signature-256", &sig)]);
        verify(Provider::Github, &h, body, &secret()).unwrap();
    }

    #[test]
    fn github_wrong_secret_is_a_mismatch() {
        let body = b"{}";
        let sig = format!("sha256={}", sign(body, "another-secret"));
        let h = headers(&[("X-Hub-Signature-256", &sig)]);
        let err = verify(Provider::Github, &h, body, &secret()).unwrap_err();
        assert!(matches!(err, Error::SignatureMismatch { .. }), "{err:?}");
        assert_eq!(err.status(), 401);
    }

    #[test]
    fn github_signature_of_another_body_is_a_mismatch() {
        let sig = format!("sha256={}", sign(b"{\"ref\":\"refs/heads/dev\"}", SECRET));
        let h = headers(&[("X-Hub-Signature-256", &sig)]);
        let err = verify(
            Provider::Github,
            &h,
            b"{\"ref\":\"refs/heads/main\"}",
            &secret(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::SignatureMismatch { .. }), "{err:?}");
    }

    #[test]
    fn github_missing_signature() {
        // The legacy SHA-1 header alone is not enough.
        let h = headers(&[("X-Hub-Signature", "sha1=0000"), ("X-GitHub-Event", "push")]);
        let err = verify(Provider::Github, &h, b"{}", &secret()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::MissingCredential {
                    header: "X-Hub-Signature-256"
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.status(), 401);
    }

    #[test]
    fn github_wrong_prefix_is_malformed() {
        let body = b"{}";
        for sig in [
            format!("sha1={}", sign(body, SECRET)),
            sign(body, SECRET),
            format!("SHA256={}", sign(body, SECRET)),
        ] {
            let h = headers(&[("X-Hub-Signature-256", &sig)]);
            let err = verify(Provider::Github, &h, body, &secret()).unwrap_err();
            assert!(matches!(err, Error::MalformedSignature { .. }), "{err:?}");
            assert_eq!(err.status(), 401);
        }
    }

    #[test]
    fn github_non_hex_or_short_signature_is_malformed() {
        let body = b"{}";
        let good = sign(body, SECRET);
        for sig in [
            format!("sha256={}", "z".repeat(64)),
            format!("sha256={}", &good[..62]),
            format!("sha256={}", &good[..63]),
            format!("sha256={good}00"),
            "sha256=".to_owned(),
        ] {
            let h = headers(&[("X-Hub-Signature-256", &sig)]);
            let err = verify(Provider::Github, &h, body, &secret()).unwrap_err();
            assert!(
                matches!(err, Error::MalformedSignature { .. }),
                "{sig}: {err:?}"
            );
        }
    }

    #[test]
    fn empty_secret_is_refused() {
        let body = b"{}";
        let sig = format!("sha256={}", sign(body, ""));
        let h = headers(&[("X-Hub-Signature-256", &sig), ("X-Gitlab-Token", "")]);
        for provider in [Provider::Github, Provider::Gitlab] {
            let err = verify(provider, &h, body, &SecretString::from("")).unwrap_err();
            assert!(matches!(err, Error::EmptySecret), "{err:?}");
            assert_eq!(err.status(), 500);
        }
    }

    #[test]
    fn gitea_accepts_each_of_its_headers() {
        let body = GITEA_PUSH.as_bytes();
        let hex = sign(body, SECRET);
        let prefixed = format!("sha256={hex}");
        for h in [
            headers(&[("X-Gitea-Signature", &hex)]),
            headers(&[("X-Forgejo-Signature", &hex)]),
            headers(&[("X-Hub-Signature-256", &prefixed)]),
            headers(&[
                ("X-Gitea-Signature", &hex),
                ("X-Hub-Signature-256", &prefixed),
            ]),
        ] {
            verify(Provider::Gitea, &h, body, &secret()).unwrap();
        }
    }

    #[test]
    fn gitea_invalid_signature() {
        let body = GITEA_PUSH.as_bytes();
        let h = headers(&[("X-Gitea-Signature", &sign(body, "wrong"))]);
        let err = verify(Provider::Gitea, &h, body, &secret()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SignatureMismatch {
                    header: "X-Gitea-Signature"
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn gitea_signature_has_no_prefix() {
        let body = b"{}";
        let h = headers(&[(
            "X-Gitea-Signature",
            &format!("sha256={}", sign(body, SECRET)),
        )]);
        let err = verify(Provider::Gitea, &h, body, &secret()).unwrap_err();
        assert!(matches!(err, Error::MalformedSignature { .. }), "{err:?}");
    }

    #[test]
    fn gitea_missing_signature() {
        let h = headers(&[("X-Gitea-Event", "push")]);
        let err = verify(Provider::Gitea, &h, b"{}", &secret()).unwrap_err();
        assert!(matches!(err, Error::MissingCredential { .. }), "{err:?}");
        assert_eq!(err.status(), 401);
    }

    #[test]
    fn gitlab_valid_token() {
        let h = headers(&[("X-Gitlab-Token", SECRET)]);
        verify(Provider::Gitlab, &h, GITLAB_PUSH.as_bytes(), &secret()).unwrap();
    }

    #[test]
    fn gitlab_wrong_token() {
        for token in [
            "s3cret-sentinel-7f3b",
            "s3cret-sentinel-7f3",
            "s3cret-sentinel-7f3aa",
            "",
        ] {
            let h = headers(&[("X-Gitlab-Token", token)]);
            let err = verify(Provider::Gitlab, &h, b"{}", &secret()).unwrap_err();
            assert!(matches!(err, Error::TokenMismatch), "{token}: {err:?}");
            assert_eq!(err.status(), 401);
        }
    }

    #[test]
    fn gitlab_missing_token() {
        // A GitHub-style signature does not stand in for the token.
        let sig = format!("sha256={}", sign(b"{}", SECRET));
        let h = headers(&[("X-Hub-Signature-256", &sig)]);
        let err = verify(Provider::Gitlab, &h, b"{}", &secret()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::MissingCredential {
                    header: "X-Gitlab-Token"
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn generic_signature() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = format!("sha256={}", sign(body, SECRET));
        verify(
            Provider::Generic,
            &headers(&[("X-Driftless-Signature", &good)]),
            body,
            &secret(),
        )
        .unwrap();

        let bad = format!("sha256={}", sign(body, "nope"));
        let err = verify(
            Provider::Generic,
            &headers(&[("X-Driftless-Signature", &bad)]),
            body,
            &secret(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::SignatureMismatch { .. }), "{err:?}");

        let err = verify(Provider::Generic, &HeaderMap::new(), body, &secret()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::MissingCredential {
                    header: "X-Driftless-Signature"
                }
            ),
            "{err:?}"
        );

        let unprefixed = sign(body, SECRET);
        let err = verify(
            Provider::Generic,
            &headers(&[("X-Driftless-Signature", &unprefixed)]),
            body,
            &secret(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::MalformedSignature { .. }), "{err:?}");
    }

    #[test]
    fn generic_empty_body_is_signed_too() {
        let good = format!("sha256={}", sign(b"", SECRET));
        let h = headers(&[("X-Driftless-Signature", &good)]);
        verify(Provider::Generic, &h, b"", &secret()).unwrap();
    }
}

//! Who may ask: the status token's rules and the one constant-time comparison of secrets.

use axum::http::{HeaderMap, header};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Compares two secrets without a data-dependent early exit and without revealing their
/// lengths: both sides are hashed to fixed-length digests first, which `subtle` compares in
/// constant time.
pub fn constant_time_eq(provided: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(provided), Sha256::digest(expected));
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// Whether `headers` carry `Authorization: Bearer <token>`.
pub fn bearer_matches(headers: &HeaderMap, token: &SecretString) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), token.expose_secret().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc", b""));
    }

    #[test]
    fn only_the_exact_bearer_token_matches() {
        let token = SecretString::from("a-status-token-of-32-characters!");
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            h
        };
        assert!(bearer_matches(
            &with("Bearer a-status-token-of-32-characters!"),
            &token
        ));
        for wrong in [
            "Bearer a-status-token-of-32-characters",
            "bearer a-status-token-of-32-characters!",
            "Basic a-status-token-of-32-characters!",
            "a-status-token-of-32-characters!",
            "Bearer ",
        ] {
            assert!(!bearer_matches(&with(wrong), &token), "{wrong}");
        }
        assert!(!bearer_matches(&HeaderMap::new(), &token));
    }
}

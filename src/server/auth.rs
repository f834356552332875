//! Who may ask: the status token's rules and the one constant-time comparison of secrets.

use axum::http::{HeaderMap, header};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest status token accepted, in bytes.
pub const MIN_TOKEN_BYTES: usize = 16;

/// What is wrong with a configured status token (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeakToken {
    /// Nothing but white space: anyone would match it.
    Empty,
    /// Shorter than [`MIN_TOKEN_BYTES`].
    Short(usize),
    /// White space or control characters, which an `Authorization` header cannot carry.
    Unprintable,
}

impl std::fmt::Display for WeakToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeakToken::Empty => f.write_str("is empty"),
            WeakToken::Short(n) => write!(
                f,
                "is {n} bytes long: at least {MIN_TOKEN_BYTES} are needed"
            ),
            WeakToken::Unprintable => f.write_str(
                "holds whitespace or control characters, which an Authorization header cannot carry",
            ),
        }
    }
}

/// Checks a status token: not empty, at least [`MIN_TOKEN_BYTES`], visible ASCII or other
/// non-space characters only (its trailing line break is already gone).
pub fn check_token(token: &SecretString) -> Result<(), WeakToken> {
    let t = token.expose_secret();
    if t.trim().is_empty() {
        Err(WeakToken::Empty)
    } else if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(WeakToken::Unprintable)
    } else if t.len() < MIN_TOKEN_BYTES {
        Err(WeakToken::Short(t.len()))
    } else {
        Ok(())
    }
}

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
    fn weak_tokens_are_named_without_their_value() {
        let check = |t: &str| check_token(&SecretString::from(t));
        assert_eq!(check(""), Err(WeakToken::Empty));
        assert_eq!(check("   "), Err(WeakToken::Empty));
        assert_eq!(check("short-sentinel"), Err(WeakToken::Short(14)));
        assert_eq!(
            check("sixteen-bytes-ok with space"),
            Err(WeakToken::Unprintable)
        );
        assert_eq!(
            check("tab\tinside-a-long-token"),
            Err(WeakToken::Unprintable)
        );
        assert_eq!(check("0123456789abcdef"), Ok(()));
        for weak in [
            WeakToken::Empty,
            WeakToken::Short(14),
            WeakToken::Unprintable,
        ] {
            assert!(!weak.to_string().contains("sentinel"));
        }
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

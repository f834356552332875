//! Test support shared by the webhook tests: the secret, signing, headers, and real payloads
//! (as the providers document them) from `testdata/webhooks/`.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::SecretString;

pub const SECRET: &str = "s3cret-sentinel-7f3a";

pub const GITHUB_PUSH: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/testdata/webhooks/github-push.json"
));
pub const GITHUB_PING: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/testdata/webhooks/github-ping.json"
));
pub const GITEA_PUSH: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/testdata/webhooks/gitea-push.json"
));
pub const GITLAB_PUSH: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/testdata/webhooks/gitlab-push.json"
));

pub fn secret() -> SecretString {
    SecretString::from(SECRET)
}

/// The hex HMAC-SHA256 of `body` under `key`.
pub fn sign(body: &[u8], key: &str) -> String {
    let mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
        .unwrap()
        .chain_update(body);
    crate::hex::encode(&mac.finalize().into_bytes())
}

pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

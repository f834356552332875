//! Fixtures written by `sops` 3.13.3 (`fixtures/`, encrypted to the test-only age key
//! `fixtures/key.txt`; `other-key.txt` is a second, unrelated key).

use super::*;
use serde_json::json;

const KEY: &str = include_str!("fixtures/key.txt");
const OTHER_KEY: &str = include_str!("fixtures/other-key.txt");
const SECRET: &str = include_str!("fixtures/secret.enc.yaml");
const SECRET_REGEX: &str = include_str!("fixtures/secret.regex.enc.yaml");
const SECRET_SUFFIX: &str = include_str!("fixtures/secret.suffix.enc.yaml");
const CONFIG_JSON: &str = include_str!("fixtures/config.enc.json");
const TYPED: &str = include_str!("fixtures/typed.enc.yaml");

fn key() -> AgeIdentity {
    AgeIdentity::parse(&SecretString::from(KEY.to_owned())).unwrap()
}

fn one(text: &str, json: bool) -> Decrypted {
    let mut docs = decrypt(text, json, &key()).unwrap();
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

#[test]
fn decrypts_what_sops_wrote() {
    for text in [SECRET, SECRET_REGEX] {
        assert!(is_sops(text));
        let d = one(text, false);
        assert_eq!(d.value["stringData"]["password"], "s3cr3t-SENTINEL");
        assert_eq!(d.value["stringData"]["port"], "5432");
        assert_eq!(d.value["data"]["token"], "dG9rZW4=");
        assert_eq!(d.value["metadata"]["name"], "db");
        assert!(d.value.get("sops").is_none());
        assert!(
            d.encrypted
                .contains(&vec!["stringData".into(), "password".into()])
        );
    }
    // Everything is encrypted by default; only data and stringData with the regex.
    assert!(one(SECRET, false).encrypted.contains(&vec!["kind".into()]));
    assert_eq!(one(SECRET_REGEX, false).encrypted.len(), 3);
}

#[test]
fn suffix_rules_and_mac_only_encrypted() {
    let d = one(SECRET_SUFFIX, false);
    assert_eq!(d.value["stringData"]["password"], "s3cr3t-SENTINEL");
    // `encrypted_suffix: Data` leaves `data` in clear.
    assert_eq!(d.value["data"]["token"], "dG9rZW4=");
    assert!(!d.encrypted.contains(&vec!["data".into(), "token".into()]));
    let c = one(CONFIG_JSON, true);
    assert_eq!(c.value["data"]["url"], "postgres://u:p@db/x");
    assert_eq!(c.value["data"]["replicas_unencrypted"], "3");
    assert!(!is_sops(r#"{"kind": "ConfigMap", "data": {"sops": "x"}}"#));
}

#[test]
fn typed_values() {
    let d = one(TYPED, false);
    assert_eq!(
        d.value,
        json!({"n": 42, "f": 1.5, "b": true, "list": ["a", 1, false], "empty": "",
               "nested": {"k": "v", "plain_unencrypted": "keep"}})
    );
}

#[test]
fn wrong_key_fails() {
    let other = AgeIdentity::parse(&SecretString::from(OTHER_KEY.to_owned())).unwrap();
    let e = decrypt(SECRET, false, &other).unwrap_err();
    assert!(e.contains("age recipient"), "{e}");
}

#[test]
fn tampering_fails() {
    // A value in clear changed: only the MAC can tell.
    let e = decrypt(&SECRET_REGEX.replace("name: db", "name: dc"), false, &key()).unwrap_err();
    assert!(e.contains("MAC mismatch"), "{e}");
    // An encrypted value swapped for another key's: its associated data (the path) differs.
    let lines: Vec<&str> = SECRET_REGEX.lines().collect();
    let enc = |key: &str| {
        lines
            .iter()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split_once(": "))
            .map(|(_, v)| v.to_owned())
            .unwrap()
    };
    let (password, port) = (enc("password:"), enc("port:"));
    let swapped = SECRET_REGEX
        .replace(&password, "PLACEHOLDER")
        .replace(&port, &password)
        .replace("PLACEHOLDER", &port);
    let e = decrypt(&swapped, false, &key()).unwrap_err();
    assert!(e.contains("stringData.password: does not decrypt"), "{e}");
    // The MAC itself changed.
    let mac_line = lines.iter().find(|l| l.contains("mac: ENC[")).unwrap();
    let bad_mac = SECRET_REGEX.replace(*mac_line, &mac_line.replacen("data:", "data:AAAA", 1));
    let e = decrypt(&bad_mac, false, &key()).unwrap_err();
    assert!(e.contains("MAC"), "{e}");
    // lastmodified edited: the MAC no longer decrypts.
    let e = decrypt(
        &SECRET_REGEX.replace("lastmodified: \"2026", "lastmodified: \"2025"),
        false,
        &key(),
    )
    .unwrap_err();
    assert!(e.contains("MAC does not decrypt"), "{e}");
    // A value put in clear where the rule encrypts.
    let e = decrypt(&SECRET_REGEX.replace(&password, "hunter2"), false, &key()).unwrap_err();
    assert!(e.contains("stringData.password"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    // The rule changed so an encrypted value would be read in clear.
    let e = decrypt(
        &SECRET_REGEX.replace(
            "encrypted_regex: ^(data|stringData)$",
            "encrypted_regex: ^(data)$",
        ),
        false,
        &key(),
    )
    .unwrap_err();
    assert!(e.contains("MAC"), "{e}");
    // Metadata removed.
    let cut = SECRET_REGEX.split("sops:").next().unwrap();
    assert!(decrypt(cut, false, &key()).is_err());
}

#[test]
fn errors_never_show_values() {
    let other = AgeIdentity::parse(&SecretString::from(OTHER_KEY.to_owned())).unwrap();
    let e = decrypt(SECRET, false, &other).unwrap_err();
    assert!(!e.contains("s3cr3t"));
    let bad =
        AgeIdentity::parse(&SecretString::from("AGE-SECRET-KEY-1NOTAKEY".to_owned())).unwrap_err();
    assert!(!bad.contains("NOTAKEY"), "{bad}");
}

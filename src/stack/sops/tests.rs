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
    let e = decrypt(SECRET, false, &other).unwrap_err().to_string();
    assert!(e.contains("age recipient"), "{e}");
}

#[test]
fn tampering_fails() {
    // A value in clear changed: only the MAC can tell.
    let e = decrypt(&SECRET_REGEX.replace("name: db", "name: dc"), false, &key())
        .unwrap_err()
        .to_string();
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
    let e = decrypt(&swapped, false, &key()).unwrap_err().to_string();
    assert!(e.contains("stringData.password: does not decrypt"), "{e}");
    // The MAC itself changed.
    let mac_line = lines.iter().find(|l| l.contains("mac: ENC[")).unwrap();
    let bad_mac = SECRET_REGEX.replace(*mac_line, &mac_line.replacen("data:", "data:AAAA", 1));
    let e = decrypt(&bad_mac, false, &key()).unwrap_err().to_string();
    assert!(e.contains("MAC"), "{e}");
    // lastmodified edited: the MAC no longer decrypts.
    let e = decrypt(
        &SECRET_REGEX.replace("lastmodified: \"2026", "lastmodified: \"2025"),
        false,
        &key(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("MAC does not decrypt"), "{e}");
    // A value put in clear where the rule encrypts.
    let e = decrypt(&SECRET_REGEX.replace(&password, "hunter2"), false, &key())
        .unwrap_err()
        .to_string();
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
    .unwrap_err()
    .to_string();
    assert!(e.contains("MAC"), "{e}");
    // Metadata removed.
    let cut = SECRET_REGEX.split("sops:").next().unwrap();
    assert!(decrypt(cut, false, &key()).is_err());
}

#[test]
fn errors_never_show_values() {
    let other = AgeIdentity::parse(&SecretString::from(OTHER_KEY.to_owned())).unwrap();
    let e = decrypt(SECRET, false, &other).unwrap_err().to_string();
    assert!(!e.contains("s3cr3t"));
    let bad = AgeIdentity::parse(&SecretString::from("AGE-SECRET-KEY-1NOTAKEY".to_owned()))
        .unwrap_err()
        .to_string();
    assert!(!bad.contains("NOTAKEY"), "{bad}");
}

#[test]
fn placement_rules() {
    let p = |s: &str| s.split('.').map(str::to_owned).collect::<Vec<_>>();
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                        "data": {"a": "x"}, "stringData": {"b": "y"}});
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                    "data": {"a": "x", "b": "y"}});
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                        "spec": {"replicas": 1}});
    type Case<'a> = (&'a Value, Vec<Vec<String>>, Result<bool, &'a str>);
    let cases: Vec<Case> = vec![
        (&secret, vec![p("data.a"), p("stringData.b")], Ok(true)),
        (
            &secret,
            vec![
                p("data.a"),
                p("stringData.b"),
                p("kind"),
                p("metadata.name"),
            ],
            Ok(true),
        ),
        (
            &secret,
            vec![p("data.a")],
            Err("stringData.b of the Secret is in clear"),
        ),
        (&secret, vec![], Err("in clear")),
        (&cm, vec![p("data.a")], Ok(true)),
        (&cm, vec![], Ok(false)),
        (&deploy, vec![], Ok(false)),
        (&deploy, vec![p("kind")], Ok(false)),
        (
            &deploy,
            vec![p("spec.replicas")],
            Err("spec.replicas is encrypted"),
        ),
        (
            &cm,
            vec![p("binaryData.a")],
            Err("binaryData.a is encrypted"),
        ),
    ];
    for (value, encrypted, expected) in cases {
        let got = check_placement(value, &encrypted);
        match (&got, expected) {
            (Ok(a), Ok(b)) => assert_eq!(*a, b, "{encrypted:?}"),
            (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{e}"),
            _ => panic!("{encrypted:?}: {got:?} vs {expected:?}"),
        }
    }
}

/// A stack with a SOPS Secret and ConfigMap, rendered with the host's identity.
mod render {
    use super::{KEY, OTHER_KEY};
    use crate::credentials::Credentials;
    use crate::stack::render::SOPS_LABEL;
    use crate::stack::{Error, LoadLimits, load_repo, render_loaded};
    use secrecy::ExposeSecret;

    const STACK: &str = "apiVersion: driftless.dev/v1alpha1\nkind: Stack\nmetadata: {name: app}\nspec:\n  namespace: app\n  path: manifests\n";

    fn repo(files: &[(&str, &str)], key: &str) -> (tempfile::TempDir, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("stack/app/manifests")).unwrap();
        std::fs::write(dir.path().join("stack/app/stack.yaml"), STACK).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join("stack/app/manifests").join(name), text).unwrap();
        }
        let creds = tempfile::tempdir().unwrap();
        std::fs::write(creds.path().join("age.key"), key).unwrap();
        (dir, creds)
    }

    fn render(
        files: &[(&str, &str)],
        key: &str,
    ) -> crate::stack::Result<Vec<crate::stack::RenderedStack>> {
        let (dir, creds) = repo(files, key);
        let loaded = load_repo(dir.path(), None, LoadLimits::default())?;
        let c = Credentials::in_dir(Some(creds.path().to_owned())).with_sops_age_key("age.key");
        render_loaded(&loaded, &c, false).map(|(s, _)| s)
    }

    #[test]
    fn decrypted_data_is_held_apart_and_labelled() {
        let stacks = render(
            &[
                ("secret.yaml", super::SECRET),
                ("config.json", super::CONFIG_JSON),
            ],
            KEY,
        )
        .unwrap();
        let objects = &stacks[0].objects;
        let secret = objects.iter().find(|o| o.key.kind == "Secret").unwrap();
        let cm = objects.iter().find(|o| o.key.kind == "ConfigMap").unwrap();
        let data = &secret.secret_data.as_ref().unwrap().0;
        assert_eq!(data["password"].expose_secret(), b"s3cr3t-SENTINEL");
        assert_eq!(data["token"].expose_secret(), b"token");
        let cm_data = cm.secret_data.as_ref().unwrap();
        assert_eq!(cm_data.0["url"].expose_secret(), b"postgres://u:p@db/x");
        assert_eq!(cm_data.to_api_data()["url"], "postgres://u:p@db/x");
        for o in [secret, cm] {
            assert_eq!(o.object["metadata"]["labels"][SOPS_LABEL], "true");
            let printed = format!("{o:?} {}", o.object);
            assert!(
                !printed.contains("SENTINEL") && !printed.contains("u:p@db"),
                "{printed}"
            );
        }
    }

    #[test]
    fn failures_fail_the_load_naming_the_file() {
        let wrong = render(&[("secret.yaml", super::SECRET)], OTHER_KEY).unwrap_err();
        assert!(matches!(wrong, Error::Sops { .. }), "{wrong}");
        let text = wrong.to_string();
        assert!(
            text.contains("secret.yaml") && text.contains("age recipient"),
            "{text}"
        );
        let tampered = super::SECRET_REGEX.replace("name: db", "name: dc");
        let e = render(&[("secret.yaml", &tampered)], KEY)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("secret.yaml") && e.contains("MAC mismatch"),
            "{e}"
        );
        // `data` in clear (encrypted_suffix Data) in a SOPS Secret.
        let e = render(&[("secret.yaml", super::SECRET_SUFFIX)], KEY)
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.token of the Secret is in clear"), "{e}");
        // A plain manifest may not claim the label.
        let fake = "apiVersion: v1\nkind: Secret\nmetadata: {name: x, labels: {driftless.dev/sops-encrypted: 'true'}}\nstringData: {a: b}\n";
        let e = render(&[("fake.yaml", fake)], KEY).unwrap_err().to_string();
        assert!(
            e.contains("reserved for objects decrypted from SOPS files"),
            "{e}"
        );
        // No identity configured.
        let (dir, _creds) = repo(&[("secret.yaml", super::SECRET)], KEY);
        let loaded = load_repo(dir.path(), None, LoadLimits::default()).unwrap();
        let e = render_loaded(&loaded, &Credentials::in_dir(None), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sops.ageKeyFile"), "{e}");
        for msg in [text, e] {
            assert!(!msg.contains("s3cr3t"), "{msg}");
        }
    }

    #[test]
    fn offline_validation_uses_placeholders() {
        let (dir, _creds) = repo(&[("secret.yaml", super::SECRET_REGEX)], KEY);
        let loaded = load_repo(dir.path(), None, LoadLimits::default()).unwrap();
        let (stacks, checked) = render_loaded(&loaded, &Credentials::in_dir(None), true).unwrap();
        assert!(!checked);
        let secret = &stacks[0].objects[0];
        assert_eq!(secret.key.name, "db");
        assert_eq!(
            secret.secret_data.as_ref().unwrap().0["password"].expose_secret(),
            b""
        );
    }
}

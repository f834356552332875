//! YAML as kubectl reads it: YAML 1.1 scalars (`yes`/`on` are booleans, `0644` is octal 420,
//! `1_000` is 1000), several documents per file, duplicate keys refused.
//!
//! Built on serde-saphyr (see README.md, "Choices"). Error messages carry the line and column but
//! never a snippet of the input: a manifest may hold a Secret, and its values must not reach a log.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A YAML document that did not parse.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: invalid YAML: {message}", location_suffix(*line, *column))]
pub struct Error {
    /// The file the text came from (as given by the caller, usually relative to the repository).
    pub file: PathBuf,
    /// 1-based line of the error, when the parser knows it.
    pub line: Option<u64>,
    /// 1-based column of the error, when the parser knows it.
    pub column: Option<u64>,
    /// What is wrong, without any of the input's text.
    pub message: String,
}

fn location_suffix(line: Option<u64>, column: Option<u64>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

fn options() -> serde_saphyr::Options {
    // `Options` is non-exhaustive: start from the defaults and set what differs.
    let mut options = serde_saphyr::Options::default();
    options.legacy_octal_numbers = true;
    options.with_snippet = false;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options
}

/// Parses every non-empty document of `text` (documents separated by `---`) into JSON values.
/// Empty and `null` documents are skipped, as kubectl skips them.
pub fn parse_documents(file: &Path, text: &str) -> Result<Vec<Value>, Error> {
    serde_saphyr::from_multiple_with_options::<Value>(text, options())
        .map_err(|e| to_error(file, &e))
}

/// Parses every document of `text` into `T` (`null` documents included), with the same YAML
/// rules as `parse_documents` (used by `stack::sops`, which needs keys in file order).
pub fn parse_documents_as<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
) -> Result<Vec<T>, Error> {
    serde_saphyr::from_multiple_with_options::<T>(text, options()).map_err(|e| to_error(file, &e))
}

/// Documents parsed before, by the SHA-256 of their text, kept as compact JSON: the daemon renders
/// every new revision whole, and most of its files are as they were. A hit costs a JSON parse,
/// several times cheaper than YAML (which is ~85 % of rendering). Only texts seen in the current
/// or the previous `begin` round are kept, so the cache holds about one revision's manifests.
#[derive(Default)]
pub struct ParseCache {
    rounds: std::sync::Mutex<CacheRounds>,
}

type CachedDocs = std::sync::Arc<[Box<str>]>;

#[derive(Default)]
struct CacheRounds {
    current: std::collections::HashMap<[u8; 32], CachedDocs>,
    previous: std::collections::HashMap<[u8; 32], CachedDocs>,
}

impl ParseCache {
    /// Starts a round (one render of a revision): texts not seen since the last round's start
    /// are forgotten.
    pub fn begin(&self) {
        if let Ok(mut r) = self.rounds.lock() {
            r.previous = std::mem::take(&mut r.current);
        }
    }

    fn get(&self, key: &[u8; 32]) -> Option<CachedDocs> {
        let mut r = self.rounds.lock().ok()?;
        if let Some(docs) = r.current.get(key) {
            return Some(docs.clone());
        }
        let docs = r.previous.remove(key)?;
        r.current.insert(*key, docs.clone());
        Some(docs)
    }

    fn put(&self, key: [u8; 32], docs: CachedDocs) {
        if let Ok(mut r) = self.rounds.lock() {
            r.current.insert(key, docs);
        }
    }

    /// Texts held (for tests).
    pub fn len(&self) -> usize {
        self.rounds
            .lock()
            .map(|r| r.current.len() + r.previous.len())
            .unwrap_or(0)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `parse_documents`, through `cache` when there is one.
pub fn parse_documents_cached(
    cache: Option<&ParseCache>,
    file: &Path,
    text: &str,
) -> Result<Vec<Value>, Error> {
    use sha2::{Digest, Sha256};
    let Some(cache) = cache else {
        return parse_documents(file, text);
    };
    let key: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    if let Some(docs) = cache.get(&key) {
        let parsed: Option<Vec<Value>> =
            docs.iter().map(|d| serde_json::from_str(d).ok()).collect();
        if let Some(parsed) = parsed {
            return Ok(parsed);
        }
    }
    let docs = parse_documents(file, text)?;
    // Serialising a Value cannot fail (its map keys are strings).
    let compact: CachedDocs = docs
        .iter()
        .map(|d| {
            serde_json::to_string(d)
                .unwrap_or_default()
                .into_boxed_str()
        })
        .collect();
    cache.put(key, compact);
    Ok(docs)
}

/// Parses a single YAML document into `T` (used for driftless' own files, e.g. `stack.yaml`).
pub fn parse_one<T: serde::de::DeserializeOwned>(file: &Path, text: &str) -> Result<T, Error> {
    serde_saphyr::from_str_with_options::<T>(text, options()).map_err(|e| to_error(file, &e))
}

fn to_error(file: &Path, e: &serde_saphyr::Error) -> Error {
    let location = e.location();
    let mut message = e.to_string();
    // serde-saphyr appends "at line X column Y"; we report the location in the prefix instead.
    if let Some(idx) = message.find(" at line ") {
        message.truncate(idx);
    }
    Error {
        file: file.to_owned(),
        line: location.map(|l| l.line()),
        column: location.map(|l| l.column()),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> Value {
        let mut docs = parse_documents(Path::new("t.yaml"), text).expect("parses");
        assert_eq!(docs.len(), 1);
        docs.remove(0)
    }

    /// The scalars kubectl (go-yaml, YAML 1.1) types differently from a YAML 1.2 reader.
    #[test]
    fn scalars_are_typed_as_kubectl_types_them() {
        let cases = [
            ("defaultMode: 0644", json!({"defaultMode": 420})),
            ("mode: 0777", json!({"mode": 511})),
            ("a: yes", json!({"a": true})),
            ("a: on", json!({"a": true})),
            ("a: off", json!({"a": false})),
            ("a: 'yes'", json!({"a": "yes"})),
            ("a: \"0644\"", json!({"a": "0644"})),
            ("a: 2024-01-01", json!({"a": "2024-01-01"})),
            ("a: ~", json!({"a": null})),
            ("a: 1_000", json!({"a": 1000})),
            ("a: 10", json!({"a": 10})),
            ("a: 1.5", json!({"a": 1.5})),
        ];
        for (text, want) in cases {
            assert_eq!(one(text), want, "{text}");
        }
    }

    #[test]
    fn several_documents_and_empty_ones() {
        let docs = parse_documents(
            Path::new("t.yaml"),
            "---\na: 1\n---\n---\n# only a comment\n---\nb: 2\n",
        )
        .unwrap();
        assert_eq!(docs, vec![json!({"a": 1}), json!({"b": 2})]);
    }

    #[test]
    fn errors_name_file_and_line_without_echoing_input() {
        let err = parse_documents(
            Path::new("stack/a/x.yaml"),
            "a: 1\nsecret: s3ntinel-value\n  bad: [\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("stack/a/x.yaml:"), "{text}");
        assert!(err.line.is_some(), "{text}");
        assert!(!text.contains("s3ntinel"), "input echoed: {text}");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let err = parse_documents(Path::new("d.yaml"), "a: 1\na: 2\n").unwrap_err();
        assert!(err.to_string().contains("d.yaml:2"), "{err}");
    }

    #[test]
    fn the_parse_cache_returns_what_a_parse_would_and_forgets_old_texts() {
        let cache = ParseCache::default();
        let f = Path::new("m.yaml");
        let a = "a: yes\nb: 0644\nc: [1.5, ~, 'x']\n---\nd: {e: 1_000}\n";
        let b = "a: no\n";
        cache.begin();
        let first = parse_documents_cached(Some(&cache), f, a).unwrap();
        assert_eq!(first, parse_documents(f, a).unwrap());
        assert_eq!(cache.len(), 1);
        // A hit: the same documents, YAML 1.1 typing kept.
        let again = parse_documents_cached(Some(&cache), f, a).unwrap();
        assert_eq!(again, first);
        assert_eq!(again[0]["a"], json!(true));
        assert_eq!(again[0]["b"], json!(420));
        // Errors are not cached and still name the place.
        let err = parse_documents_cached(Some(&cache), f, "a: [").unwrap_err();
        assert!(err.to_string().starts_with("m.yaml"), "{err}");
        assert_eq!(cache.len(), 1);
        // A round that uses only `b`: `a` survives one round, then is gone.
        cache.begin();
        parse_documents_cached(Some(&cache), f, b).unwrap();
        assert_eq!(cache.len(), 2);
        cache.begin();
        parse_documents_cached(Some(&cache), f, b).unwrap();
        assert_eq!(cache.len(), 1);
    }
}

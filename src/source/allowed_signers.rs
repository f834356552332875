//! The allowed-signers file of `ssh-keygen -Y verify` (`gpg.ssh.allowedSignersFile` in git):
//! `principals [options] keytype base64-key [comment]`, one per line. Pure: parsing and the
//! decision whether an entry allows a signature now.
//!
//! Options honoured: `namespaces="…"` (the entry must allow `git`), `valid-after=` and
//! `valid-before=` (`YYYYMMDD[HHMM[SS]]`, optionally ending in `Z`; taken as UTC). Principals are
//! OpenSSH patterns (`*`, `?`, `!` negation, comma-separated) matched against the committer's or
//! tagger's e-mail address. `cert-authority` entries are refused when read (certificates are not
//! supported).

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use ssh_key::PublicKey;

/// One entry of the file.
#[derive(Debug, Clone)]
pub(crate) struct AllowedSigner {
    /// The principals field as written (comma-separated patterns).
    pub principals: String,
    pub key: PublicKey,
    /// `namespaces=`, when given.
    pub namespaces: Option<Vec<String>>,
    pub valid_after: Option<DateTime<Utc>>,
    pub valid_before: Option<DateTime<Utc>>,
    /// 1-based line in the file (for messages).
    pub line: usize,
}

/// Parses the file; an error names the line and what is wrong (the file holds public keys only).
pub(crate) fn parse(text: &str) -> Result<Vec<AllowedSigner>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let fields = split_fields(line).map_err(|e| format!("line {n}: {e}"))?;
        let mut fields = fields.into_iter();
        let principals = fields
            .next()
            .ok_or_else(|| format!("line {n}: no principals"))?;
        let second = fields.next().ok_or_else(|| format!("line {n}: no key"))?;
        let (options, keytype) = if is_key_type(&second) {
            (None, second)
        } else {
            let keytype = fields
                .next()
                .ok_or_else(|| format!("line {n}: no key type after the options"))?;
            (Some(second), keytype)
        };
        let base64 = fields
            .next()
            .ok_or_else(|| format!("line {n}: no key after {keytype}"))?;
        let key = PublicKey::from_openssh(&format!("{keytype} {base64}"))
            .map_err(|e| format!("line {n}: unreadable {keytype} key: {e}"))?;
        let mut entry = AllowedSigner {
            principals,
            key,
            namespaces: None,
            valid_after: None,
            valid_before: None,
            line: n,
        };
        if let Some(options) = options {
            for option in split_options(&options) {
                let (name, value) = match option.split_once('=') {
                    Some((k, v)) => (k.to_ascii_lowercase(), Some(v.trim_matches('"'))),
                    None => (option.to_ascii_lowercase(), None),
                };
                match (name.as_str(), value) {
                    ("namespaces", Some(v)) => {
                        entry.namespaces = Some(v.split(',').map(str::to_owned).collect());
                    }
                    ("valid-after", Some(v)) => {
                        entry.valid_after =
                            Some(parse_time(v).map_err(|e| format!("line {n}: valid-after: {e}"))?);
                    }
                    ("valid-before", Some(v)) => {
                        entry.valid_before = Some(
                            parse_time(v).map_err(|e| format!("line {n}: valid-before: {e}"))?,
                        );
                    }
                    ("cert-authority", None) => {
                        return Err(format!(
                            "line {n}: cert-authority entries are not supported (list the signing keys themselves)"
                        ));
                    }
                    (other, _) => {
                        return Err(format!("line {n}: unknown option {other:?}"));
                    }
                }
            }
        }
        out.push(entry);
    }
    Ok(out)
}

fn is_key_type(field: &str) -> bool {
    field.starts_with("ssh-")
        || field.starts_with("ecdsa-sha2-")
        || field.starts_with("sk-ssh-")
        || field.starts_with("sk-ecdsa-")
}

/// Splits at whitespace outside double quotes.
fn split_fields(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".to_owned());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Splits the options field at commas outside double quotes.
fn split_options(options: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in options.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `YYYYMMDD[HHMM[SS]][Z]`, as UTC.
fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let digits = text.strip_suffix(['Z', 'z']).unwrap_or(text);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not YYYYMMDD[HHMM[SS]]"));
    }
    let bad = || format!("{text:?} is not a valid time (YYYYMMDD[HHMM[SS]])");
    let num = |r: std::ops::Range<usize>| digits.get(r).and_then(|s| s.parse::<u32>().ok());
    let (h, mi, s) = match digits.len() {
        8 => (0, 0, 0),
        12 => (num(8..10).ok_or_else(bad)?, num(10..12).ok_or_else(bad)?, 0),
        14 => (
            num(8..10).ok_or_else(bad)?,
            num(10..12).ok_or_else(bad)?,
            num(12..14).ok_or_else(bad)?,
        ),
        _ => return Err(bad()),
    };
    let year = digits
        .get(0..4)
        .and_then(|y| y.parse::<i32>().ok())
        .ok_or_else(bad)?;
    let date =
        NaiveDate::from_ymd_opt(year, num(4..6).ok_or_else(bad)?, num(6..8).ok_or_else(bad)?)
            .ok_or_else(bad)?;
    let time: NaiveDateTime = date.and_hms_opt(h, mi, s).ok_or_else(bad)?;
    Ok(time.and_utc())
}

/// OpenSSH's `match_pattern_list`: a negated pattern that matches refuses; otherwise any
/// positive pattern that matches accepts. Case-sensitive, as for principals.
pub(crate) fn principal_matches(patterns: &str, name: &str) -> bool {
    let mut accepted = false;
    for p in patterns.split(',') {
        let (negated, p) = match p.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, p),
        };
        if wildcard(p.as_bytes(), name.as_bytes()) {
            if negated {
                return false;
            }
            accepted = true;
        }
    }
    accepted
}

fn wildcard(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => wildcard(&p[1..], s) || (!s.is_empty() && wildcard(p, &s[1..])),
        (Some(b'?'), Some(_)) => wildcard(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => wildcard(&p[1..], &s[1..]),
        _ => false,
    }
}

/// Why `entry` does not allow a signature in namespace `git` by `email` at `now`, if it does
/// not.
pub(crate) fn refusal(entry: &AllowedSigner, email: &str, now: DateTime<Utc>) -> Option<String> {
    let at = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    if let Some(ns) = &entry.namespaces
        && !ns.iter().any(|n| principal_matches(n, "git"))
    {
        return Some(format!(
            "allowed-signers line {} does not allow the namespace \"git\" (namespaces=\"{}\")",
            entry.line,
            ns.join(",")
        ));
    }
    if let Some(before) = entry.valid_before
        && now >= before
    {
        return Some(format!(
            "allowed-signers line {} ({}) expired at {}",
            entry.line,
            entry.principals,
            at(before)
        ));
    }
    if let Some(after) = entry.valid_after
        && now < after
    {
        return Some(format!(
            "allowed-signers line {} ({}) is valid only from {}",
            entry.line,
            entry.principals,
            at(after)
        ));
    }
    if !principal_matches(&entry.principals, email) {
        return Some(format!(
            "the key is allowed for {} (allowed-signers line {}), not for the committer {email:?}",
            entry.principals, entry.line
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeo8AtEcSr9qFlwmNBDq9rlErk+w0tD104Vpj+m0qLe";

    fn time(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap()
    }

    #[test]
    fn parses_entries_with_and_without_options() {
        let text = format!(
            "# team\n\nalice@example.org {KEY} alice\n\
             bob@example.org,*@ops.example namespaces=\"git,file\",valid-after=\"20260101\",valid-before=\"20270101Z\" {KEY}\n"
        );
        let entries = parse(&text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].principals, "alice@example.org");
        assert_eq!(entries[0].line, 3);
        assert!(entries[0].namespaces.is_none());
        assert_eq!(
            entries[1].namespaces.as_deref(),
            Some(&["git".to_owned(), "file".to_owned()][..])
        );
        assert_eq!(entries[1].valid_after, Some(time("20260101")));
        assert_eq!(entries[1].valid_before, Some(time("20270101000000")));
    }

    #[test]
    fn refuses_malformed_files() {
        for (text, expect) in [
            ("alice@x".to_owned(), "no key"),
            (format!("a@x cert-authority {KEY}"), "cert-authority"),
            (format!("a@x frobnicate {KEY}"), "unknown option"),
            (format!("a@x valid-before=\"2026\" {KEY}"), "valid-before"),
            (format!("a@x valid-after=\"20261301\" {KEY}"), "valid-after"),
            ("a@x ssh-ed25519 AAAAnotakey".to_owned(), "unreadable"),
            (format!("a@x namespaces=\"git {KEY}"), "unterminated"),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(expect), "{text}: {e}");
            assert!(e.contains("line 1"), "{e}");
        }
    }

    #[test]
    fn principal_patterns() {
        for (patterns, name, expected) in [
            ("alice@example.org", "alice@example.org", true),
            ("alice@example.org", "Alice@example.org", false),
            ("*@example.org", "bob@example.org", true),
            ("*@example.org", "bob@example.org.evil", false),
            ("b?b@x", "bob@x", true),
            ("*@x,!mallory@x", "mallory@x", false),
            ("!mallory@x,*@x", "mallory@x", false),
            ("!mallory@x", "alice@x", false),
            ("a@x,b@x", "b@x", true),
        ] {
            assert_eq!(
                principal_matches(patterns, name),
                expected,
                "{patterns} {name}"
            );
        }
    }

    #[test]
    fn entry_decisions() {
        let entry = |opts: &str| {
            parse(&format!("*@example.org {opts} {KEY}"))
                .unwrap()
                .remove(0)
        };
        let now = time("20261206120000");
        let cases: Vec<(AllowedSigner, &str, Option<&str>)> = vec![
            (entry(""), "a@example.org", None),
            (entry(""), "a@evil.org", Some("not for the committer")),
            (
                entry("valid-before=\"20261206\""),
                "a@example.org",
                Some("expired at 2026-12-06 00:00:00 UTC"),
            ),
            (entry("valid-before=\"20261207\""), "a@example.org", None),
            (
                entry("valid-after=\"20261207\""),
                "a@example.org",
                Some("valid only from"),
            ),
            (
                entry("valid-after=\"20261201\",valid-before=\"20261231\""),
                "a@example.org",
                None,
            ),
            (
                entry("namespaces=\"file\""),
                "a@example.org",
                Some("namespace \"git\""),
            ),
            (entry("namespaces=\"file,git\""), "a@example.org", None),
        ];
        for (e, email, expected) in cases {
            let got = refusal(&e, email, now);
            match (expected, &got) {
                (None, None) => {}
                (Some(want), Some(got)) => assert!(got.contains(want), "{got}"),
                _ => panic!("{email}: expected {expected:?}, got {got:?}"),
            }
        }
    }
}

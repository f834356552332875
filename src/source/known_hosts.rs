//! OpenSSH known_hosts matching, as `ssh` does it for one host, port and key. Pure.
//!
//! Read: host pattern lists (`host`, `[host]:port`, `*`/`?` wildcards, `!negation`), hashed
//! entries (`|1|salt|hash`, HMAC-SHA1 of the name as written), and `@revoked` lines. A plain
//! name matches port 22 only, `[host]:port` that port only (as OpenSSH writes them). The key
//! must be the same key of the same type. `@cert-authority` lines are skipped: host
//! certificates are not supported. Malformed lines are skipped, as OpenSSH does.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};

/// A parsed known_hosts file.
pub(crate) struct KnownHosts {
    entries: Vec<Entry>,
}

/// What the file says about a host's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Known,
    /// Listed under `@revoked`: refused even if another line lists it.
    Revoked,
    /// Not listed for this host and port (or listed under another type or key).
    Unknown,
}

enum Marker {
    None,
    Revoked,
    CertAuthority,
}

enum Hosts {
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    Patterns(Vec<String>),
}

struct Entry {
    marker: Marker,
    hosts: Hosts,
    key_type: String,
    key: Vec<u8>,
}

impl KnownHosts {
    /// Parses a known_hosts text.
    pub fn parse(text: &str) -> KnownHosts {
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        KnownHosts { entries }
    }

    /// The verdict for `key` (the SSH wire-format public key blob) of `host` on `port`.
    pub fn check(&self, host: &str, port: u16, key: &[u8]) -> Verdict {
        let name = written_name(host, port);
        let Some(offered_type) = blob_type(key) else {
            return Verdict::Unknown;
        };
        let mut verdict = Verdict::Unknown;
        for entry in &self.entries {
            if matches!(entry.marker, Marker::CertAuthority)
                || entry.key_type != offered_type
                || entry.key != key
                || !entry.hosts.matches(&name)
            {
                continue;
            }
            match entry.marker {
                Marker::Revoked => return Verdict::Revoked,
                _ => verdict = Verdict::Known,
            }
        }
        verdict
    }
}

/// The name OpenSSH looks up: `host` for port 22, `[host]:port` otherwise.
pub(crate) fn written_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// The key type a wire-format key blob starts with (`ssh-ed25519`, `ssh-rsa`, …).
pub(crate) fn blob_type(key: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(key.get(4..4 + len)?).ok()
}

fn parse_line(line: &str) -> Option<Entry> {
    let mut fields = line.split_whitespace();
    let mut first = fields.next()?;
    let marker = match first {
        "@revoked" => Marker::Revoked,
        "@cert-authority" => Marker::CertAuthority,
        m if m.starts_with('@') => return None,
        _ => Marker::None,
    };
    if !matches!(marker, Marker::None) {
        first = fields.next()?;
    }
    let key_type = fields.next()?.to_owned();
    let key = STANDARD.decode(fields.next()?).ok()?;
    let hosts = match first.strip_prefix("|1|") {
        Some(hashed) => {
            let (salt, hash) = hashed.split_once('|')?;
            Hosts::Hashed {
                salt: STANDARD.decode(salt).ok()?,
                hash: STANDARD.decode(hash).ok()?,
            }
        }
        None => Hosts::Patterns(first.split(',').map(str::to_ascii_lowercase).collect()),
    };
    Some(Entry {
        marker,
        hosts,
        key_type,
        key,
    })
}

impl Hosts {
    fn matches(&self, name: &str) -> bool {
        match self {
            Hosts::Hashed { salt, hash } => {
                let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            Hosts::Patterns(patterns) => {
                // A matching negated pattern rules the line out, whatever else matches.
                let mut matched = false;
                for p in patterns {
                    match p.strip_prefix('!') {
                        Some(neg) if crate::credentials::glob_match(neg, name) => return false,
                        Some(_) => {}
                        None => matched |= crate::credentials::glob_match(p, name),
                    }
                }
                matched
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(kind: &str, body: &[u8]) -> Vec<u8> {
        let mut b = (kind.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind.as_bytes());
        b.extend_from_slice(body);
        b
    }

    fn hashed(name: &str, salt: &[u8]) -> String {
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(salt).unwrap();
        mac.update(name.as_bytes());
        format!(
            "|1|{}|{}",
            STANDARD.encode(salt),
            STANDARD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn matching() {
        let ed = blob("ssh-ed25519", b"ed-key");
        let rsa = blob("ssh-rsa", b"rsa-key");
        let (ed64, rsa64) = (STANDARD.encode(&ed), STANDARD.encode(&rsa));
        let text = format!(
            "# comment\n\
             plain.example ssh-ed25519 {ed64}\n\
             [port.example]:2222,alias.example ssh-ed25519 {ed64}\n\
             typed.example ssh-rsa {ed64}\n\
             rsa.example ssh-rsa {rsa64}\n\
             *.wild.example,!bad.wild.example ssh-ed25519 {ed64}\n\
             {h22} ssh-ed25519 {ed64}\n\
             {h2200} ssh-ed25519 {ed64}\n\
             revoked.example ssh-ed25519 {ed64}\n\
             @revoked revoked.example ssh-ed25519 {ed64}\n\
             @cert-authority ca.example ssh-ed25519 {ed64}\n\
             garbage line\n\
             bad64.example ssh-ed25519 !!!\n",
            h22 = hashed("hashed.example", b"salt-one-20-bytes!!!"),
            h2200 = hashed("[hashed.example]:2200", b"salt-two-20-bytes!!!"),
        );
        let k = KnownHosts::parse(&text);
        let cases = [
            ("plain.example", 22, &ed, Verdict::Known),
            ("PLAIN.example", 22, &ed, Verdict::Known),
            // A plain name is port 22 only.
            ("plain.example", 2222, &ed, Verdict::Unknown),
            ("port.example", 2222, &ed, Verdict::Known),
            ("port.example", 22, &ed, Verdict::Unknown),
            ("port.example", 2223, &ed, Verdict::Unknown),
            ("alias.example", 22, &ed, Verdict::Known),
            // The type field must be the key's own type.
            ("typed.example", 22, &ed, Verdict::Unknown),
            // Another key type for the host is not a match.
            ("rsa.example", 22, &ed, Verdict::Unknown),
            ("rsa.example", 22, &rsa, Verdict::Known),
            ("plain.example", 22, &rsa, Verdict::Unknown),
            ("a.wild.example", 22, &ed, Verdict::Known),
            ("bad.wild.example", 22, &ed, Verdict::Unknown),
            ("hashed.example", 22, &ed, Verdict::Known),
            ("hashed.example", 2200, &ed, Verdict::Known),
            ("hashed.example", 2201, &ed, Verdict::Unknown),
            ("other.example", 22, &ed, Verdict::Unknown),
            ("revoked.example", 22, &ed, Verdict::Revoked),
            ("ca.example", 22, &ed, Verdict::Unknown),
            ("bad64.example", 22, &ed, Verdict::Unknown),
        ];
        for (host, port, key, want) in cases {
            assert_eq!(k.check(host, port, key), want, "{host}:{port}");
        }
        assert_eq!(k.check("plain.example", 22, b"\x00"), Verdict::Unknown);
    }

    #[test]
    fn blob_types() {
        assert_eq!(blob_type(&blob("ssh-ed25519", b"x")), Some("ssh-ed25519"));
        assert_eq!(blob_type(b"\x00\x00\x00\x09short"), None);
        assert_eq!(blob_type(b""), None);
    }
}

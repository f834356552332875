//! Kubernetes URL library: `url()`, `isURL()` and the URL getters, with Go's `net/url` parsing
//! as the API server uses it (`url.ParseRequestURI` decides validity: an absolute URI or an
//! absolute path; `url.Parse` gives the parts, the fragment split off).

use std::collections::HashMap;

use cel::common::types::{CelBool, CelList, CelMap, CelMapKey, CelString};
use cel::common::value::Val;
use cel::{DeclarationError, Env, ExecutionError};

use super::{error, opaque_val};

pub fn register(env: &mut Env) -> Result<(), DeclarationError> {
    cel::add_overload!(env, fn url: (CelString) -> Result<Url>)?;
    cel::add_overload!(env, fn is_url: (CelString) -> CelBool, name = "isURL")?;
    cel::add_member_overload!(env, fn get_scheme: (Url) -> CelString)?;
    cel::add_member_overload!(env, fn get_host: (Url) -> CelString)?;
    cel::add_member_overload!(env, fn get_hostname: (Url) -> CelString)?;
    cel::add_member_overload!(env, fn get_port: (Url) -> CelString)?;
    cel::add_member_overload!(env, fn get_escaped_path: (Url) -> CelString)?;
    cel::add_member_overload!(env, fn get_query: (Url) -> CelMap)?;
    Ok(())
}

/// A parsed URL: the parts Go's `url.URL` keeps that the getters read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    scheme: String,
    /// `host[:port]`, unescaped.
    host: String,
    /// The path, unescaped.
    path: String,
    /// The path as written, when that is not the default escaping of `path`.
    raw_path: String,
    raw_query: String,
}

opaque_val!(Url, "kubernetes.URL");

/// Which part of a URL a string is escaped for (Go's `encoding` modes the parser uses).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Path,
    Host,
    QueryComponent,
}

/// Go's `shouldEscape` for the modes above.
fn should_escape(c: u8, mode: Mode) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    if mode == Mode::Host
        && matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'['
                | b']'
                | b'<'
                | b'>'
                | b'"'
        )
    {
        return false;
    }
    match c {
        b'-' | b'_' | b'.' | b'~' => false,
        b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?' | b'@' => match mode {
            Mode::Path => c == b'?',
            Mode::QueryComponent => true,
            Mode::Host => true,
        },
        _ => true,
    }
}

fn unhex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Go's `unescape`.
fn unescape(s: &str, mode: Mode) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).copied().and_then(unhex),
                    b.get(i + 2).copied().and_then(unhex),
                ) else {
                    let bad: String = s[i..].chars().take(3).collect();
                    return Err(format!("invalid URL escape {bad:?}"));
                };
                if mode == Mode::Host && hi < 8 && &s[i..i + 3] != "%25" {
                    return Err(format!("invalid URL escape {:?}", &s[i..i + 3]));
                }
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(if mode == Mode::QueryComponent {
                    b' '
                } else {
                    b'+'
                });
                i += 1;
            }
            c => {
                if mode == Mode::Host && c < 0x80 && should_escape(c, mode) {
                    return Err(format!("invalid character {:?} in host name", c as char));
                }
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "invalid UTF-8 after unescaping".to_owned())
}

/// Go's `escape` for paths.
fn escape_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if should_escape(c, Mode::Path) {
            out.push_str(&format!("%{c:02X}"));
        } else {
            out.push(c as char);
        }
    }
    out
}

/// Go's `validEncoded` for paths.
fn valid_encoded_path(s: &str) -> bool {
    s.bytes().all(|c| {
        matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'['
                | b']'
                | b'%'
        ) || !should_escape(c, Mode::Path)
    })
}

/// Go's `getScheme`: `(scheme, rest)`.
fn split_scheme(raw: &str) -> Result<(&str, &str), String> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
            b':' if i == 0 => return Err("missing protocol scheme".to_owned()),
            b':' => return Ok((&raw[..i], &raw[i + 1..])),
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

/// Go's `validOptionalPort`.
fn valid_optional_port(port: &str) -> bool {
    port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// Go's `parseHost`.
fn parse_host(host: &str) -> Result<String, String> {
    if host.starts_with('[') {
        let Some(close) = host.rfind(']') else {
            return Err("missing ']' in host".to_owned());
        };
        let port = &host[close + 1..];
        if !valid_optional_port(port) {
            return Err(format!("invalid port {port:?} after host"));
        }
        // Only an IPv6 literal (with an optional zone) may be bracketed.
        let literal = &host[1..close];
        let address = literal.split_once("%25").map_or(literal, |(a, _)| a);
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("invalid IP-literal {:?}", &host[..=close]));
        }
        return unescape(host, Mode::Host);
    }
    if let Some(colon) = host.rfind(':') {
        let port = &host[colon..];
        if !valid_optional_port(port) {
            return Err(format!("invalid port {port:?} after host"));
        }
    }
    unescape(host, Mode::Host)
}

/// Go's `validUserinfo`.
fn valid_userinfo(s: &str) -> bool {
    s.bytes().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b':'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b'@'
            )
    })
}

/// Go's `url.parse(raw, viaRequest)` (without the fragment, which the caller split off).
fn parse(raw: &str, via_request: bool) -> Result<Url, String> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("net/url: invalid control character in URL".to_owned());
    }
    if raw.is_empty() && via_request {
        return Err("empty url".to_owned());
    }
    let mut url = Url {
        scheme: String::new(),
        host: String::new(),
        path: String::new(),
        raw_path: String::new(),
        raw_query: String::new(),
    };
    if raw == "*" {
        url.path = "*".to_owned();
        return Ok(url);
    }
    let (scheme, mut rest) = split_scheme(raw)?;
    url.scheme = scheme.to_ascii_lowercase();
    if rest.ends_with('?') && rest.matches('?').count() == 1 {
        rest = &rest[..rest.len() - 1];
    } else if let Some((before, query)) = rest.split_once('?') {
        url.raw_query = query.to_owned();
        rest = before;
    }
    if !rest.starts_with('/') {
        if !url.scheme.is_empty() {
            // An opaque URL (`mailto:x`): no host, no path.
            return Ok(url);
        }
        if via_request {
            return Err("invalid URI for request".to_owned());
        }
        let segment = rest.split('/').next().unwrap_or_default();
        if segment.contains(':') {
            return Err("first path segment in URL cannot contain colon".to_owned());
        }
    }
    if (!url.scheme.is_empty() || !via_request && !rest.starts_with("///"))
        && rest.starts_with("//")
    {
        let after = &rest[2..];
        let (authority, path) = match after.find('/') {
            Some(i) => after.split_at(i),
            None => (after, ""),
        };
        let host = match authority.rfind('@') {
            Some(i) => {
                if !valid_userinfo(&authority[..i]) {
                    return Err("net/url: invalid userinfo".to_owned());
                }
                &authority[i + 1..]
            }
            None => authority,
        };
        url.host = parse_host(host)?;
        rest = path;
    }
    url.path = unescape(rest, Mode::Path)?;
    if escape_path(&url.path) != rest {
        url.raw_path = rest.to_owned();
    }
    Ok(url)
}

/// `url()`: valid as `url.ParseRequestURI` sees it, parts as `url.Parse` gives them.
fn parse_url(raw: &str) -> Result<Url, String> {
    let fail = |e: String| {
        format!(
            "URL parse error during conversion from string: parse {:?}: {e}",
            raw
        )
    };
    parse(raw, true).map_err(fail)?;
    let without_fragment = raw.split_once('#').map_or(raw, |(u, _)| u);
    parse(without_fragment, false).map_err(fail)
}

/// Go's `splitHostPort` of `url.Hostname()` / `url.Port()`.
fn split_host_port(host_port: &str) -> (&str, &str) {
    let (mut host, port) = match host_port.rfind(':') {
        Some(i) if valid_optional_port(&host_port[i..]) => (&host_port[..i], &host_port[i + 1..]),
        _ => (host_port, ""),
    };
    if host.starts_with('[') && host.ends_with(']') && host.len() >= 2 {
        host = &host[1..host.len() - 1];
    }
    (host, port)
}

fn url(s: &CelString<'_>) -> Result<Url, ExecutionError> {
    parse_url(s.inner()).map_err(|e| error("url", e))
}

fn is_url(s: &CelString<'_>) -> CelBool {
    CelBool::from(parse(s.inner(), true).is_ok())
}

fn get_scheme(u: &Url) -> CelString<'static> {
    CelString::from(u.scheme.clone())
}

fn get_host(u: &Url) -> CelString<'static> {
    CelString::from(u.host.clone())
}

fn get_hostname(u: &Url) -> CelString<'static> {
    CelString::from(split_host_port(&u.host).0.to_owned())
}

fn get_port(u: &Url) -> CelString<'static> {
    CelString::from(split_host_port(&u.host).1.to_owned())
}

/// Go's `EscapedPath`: the path as written when that is a valid escaping of it, else escaped.
fn get_escaped_path(u: &Url) -> CelString<'static> {
    if !u.raw_path.is_empty()
        && valid_encoded_path(&u.raw_path)
        && unescape(&u.raw_path, Mode::Path).is_ok_and(|p| p == u.path)
    {
        return CelString::from(u.raw_path.clone());
    }
    if u.path == "*" {
        return CelString::from("*".to_owned());
    }
    CelString::from(escape_path(&u.path))
}

/// Go's `url.ParseQuery`, ignoring malformed pairs: key → every value, unescaped.
fn get_query(u: &Url) -> CelMap<'static> {
    let mut query: Vec<(String, Vec<String>)> = Vec::new();
    for pair in u.raw_query.split('&') {
        if pair.is_empty() || pair.contains(';') {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (Ok(key), Ok(value)) = (
            unescape(key, Mode::QueryComponent),
            unescape(value, Mode::QueryComponent),
        ) else {
            continue;
        };
        match query.iter_mut().find(|(k, _)| *k == key) {
            Some((_, values)) => values.push(value),
            None => query.push((key, vec![value])),
        }
    }
    CelMap::from(
        query
            .into_iter()
            .map(|(k, values)| {
                let list: Vec<Box<dyn Val>> = values
                    .into_iter()
                    .map(|v| Box::new(CelString::from(v)) as Box<dyn Val>)
                    .collect();
                (
                    CelMapKey::from(k),
                    Box::new(CelList::from(list)) as Box<dyn Val>,
                )
            })
            .collect::<HashMap<_, _>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::test_support::check;

    #[test]
    fn the_kubernetes_examples_hold() {
        check(
            &[
                "isURL('https://user:pass@example.com:80/path?query=val#fragment') && isURL('/absolute-path')",
                "!isURL('https://a:b:c/') && !isURL('../relative-path') && !isURL('') && isURL('mailto:a@b')",
                "url('/path').getScheme() == '' && url('https://example.com/').getScheme() == 'https'",
                "url('HTTPS://example.com/').getScheme() == 'https'",
                "url('https://example.com:80/').getHost() == 'example.com:80'",
                "url('https://example.com/').getHost() == 'example.com'",
                "url('https://[::1]:80/').getHost() == '[::1]:80' && url('https://[::1]/').getHost() == '[::1]'",
                "url('/path').getHost() == ''",
                "url('https://example.com:80/').getHostname() == 'example.com'",
                "url('https://127.0.0.1:80/').getHostname() == '127.0.0.1'",
                "url('https://[::1]:80/').getHostname() == '::1' && url('/path').getHostname() == ''",
                "url('https://example.com:80/').getPort() == '80' && url('https://example.com/').getPort() == ''",
                "url('/path').getPort() == ''",
                "url('https://example.com/path').getEscapedPath() == '/path'",
                "url('https://example.com/path with spaces/').getEscapedPath() == '/path%20with%20spaces/'",
                "url('https://example.com/a%2Fb').getEscapedPath() == '/a%2Fb'",
                "url('https://example.com').getEscapedPath() == ''",
                "url('https://example.com/path?k1=a&k2=b&k2=c').getQuery() == {'k1': ['a'], 'k2': ['b', 'c']}",
                "url('https://example.com/path?key with spaces=value with spaces').getQuery() == {'key with spaces': ['value with spaces']}",
                "url('https://example.com/path?a=1+2&b=%41&c;d=1').getQuery() == {'a': ['1 2'], 'b': ['A']}",
                "url('https://example.com/path?').getQuery() == {} && url('https://example.com/path').getQuery() == {}",
                "url('https://example.com/p#frag?x=1').getQuery() == {} && url('https://example.com/p#f').getEscapedPath() == '/p'",
                "url('https://example.com/') == url('https://example.com/')",
            ],
            &[
                ("url('https://a:b:c/')", "invalid port \":c\" after host"),
                ("url('../relative-path')", "invalid URI for request"),
                ("url('https://[x]/')", "invalid IP-literal"),
                ("url('https://ex ample.com/')", "invalid character"),
            ],
        );
    }
}

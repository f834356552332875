//! What a remote URL names: its transport, host and port, read the way libgit2 reads it
//! (`scheme://…`, scp-like `[user@]host:path` and `[user@host:port]:path`, local paths). Pure.
//!
//! Used to refuse URLs that carry credentials, to send credentials only to the configured server
//! over HTTPS, and to look SSH host keys up for the right port.

/// How libgit2 reaches a remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A path, or `file://`.
    Local,
    Http,
    Https,
    /// `ssh://`, `git+ssh://`, `ssh+git://` and scp-like `host:path`.
    Ssh,
    /// `git://` (unauthenticated, unencrypted).
    Git,
    /// A scheme libgit2 has no transport for.
    Unknown,
}

/// The server a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub transport: Transport,
    /// Host name or address as written (IPv6 without brackets), lowercased.
    pub host: String,
    /// The port, the transport's default when the URL gives none.
    pub port: u16,
    /// Whether the URL carries a user name (`user@`).
    pub has_user: bool,
    /// Whether the URL carries a password (`user:password@`).
    pub has_password: bool,
}

impl Endpoint {
    /// Reads `url`. Never fails: what cannot be read as a network URL is `Local` or `Unknown`.
    pub fn parse(url: &str) -> Endpoint {
        match url.split_once("://") {
            Some((scheme, rest)) => {
                let transport = match scheme.to_ascii_lowercase().as_str() {
                    "file" => Transport::Local,
                    "http" => Transport::Http,
                    "https" => Transport::Https,
                    "ssh" | "git+ssh" | "ssh+git" => Transport::Ssh,
                    "git" => Transport::Git,
                    _ => Transport::Unknown,
                };
                let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
                let (userinfo, hostport) = match authority.rsplit_once('@') {
                    Some((u, h)) => (Some(u), h),
                    None => (None, authority),
                };
                let (host, port) = split_port(hostport);
                Endpoint {
                    transport,
                    host: host.to_ascii_lowercase(),
                    port: port.unwrap_or_else(|| default_port(transport)),
                    has_user: userinfo.is_some(),
                    has_password: userinfo.is_some_and(|u| u.contains(':')),
                }
            }
            None if url.contains(':') => scp_like(url),
            None => Endpoint {
                transport: Transport::Local,
                host: String::new(),
                port: 0,
                has_user: false,
                has_password: false,
            },
        }
    }

    /// Whether `other` is the same server: transport, host (case-insensitive) and port.
    pub fn same_server(&self, other: &Endpoint) -> bool {
        self.transport == other.transport && self.host == other.host && self.port == other.port
    }

    /// `scheme://host:port` for messages (never user or password).
    pub fn origin(&self) -> String {
        let scheme = match self.transport {
            Transport::Local => "file",
            Transport::Http => "http",
            Transport::Https => "https",
            Transport::Ssh => "ssh",
            Transport::Git => "git",
            Transport::Unknown => "unknown",
        };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

fn default_port(transport: Transport) -> u16 {
    match transport {
        Transport::Http => 80,
        Transport::Https => 443,
        Transport::Ssh => 22,
        Transport::Git => 9418,
        Transport::Local | Transport::Unknown => 0,
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_port(hostport: &str) -> (&str, Option<u16>) {
    if let Some(rest) = hostport.strip_prefix('[')
        && let Some((host, after)) = rest.split_once(']')
    {
        return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match hostport.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, port.parse().ok())
        }
        _ => (hostport, None),
    }
}

/// scp-like: `[user@]host:path`, `[user@host:port]:path`, `[v6]:path` (libgit2's
/// `git_net_url_parse_scp`). No password can be written in this form.
fn scp_like(url: &str) -> Endpoint {
    let (user, host, port) = match url.strip_prefix('[') {
        Some(rest) => {
            let inner = rest.split(']').next().unwrap_or_default();
            if inner.matches(':').count() > 1 && !inner.contains('@') {
                // An IPv6 address: `[::1]:path`.
                (None, inner, None)
            } else {
                let (user, hostport) = match inner.split_once('@') {
                    Some((u, h)) => (Some(u), h),
                    None => (None, inner),
                };
                let (host, port) = split_port(hostport);
                (user, host, port)
            }
        }
        None => {
            let before = url.split(':').next().unwrap_or_default();
            match before.split_once('@') {
                Some((u, h)) => (Some(u), h, None),
                None => (None, before, None),
            }
        }
    };
    Endpoint {
        transport: Transport::Ssh,
        host: host.to_ascii_lowercase(),
        port: port.unwrap_or(22),
        has_user: user.is_some(),
        has_password: false,
    }
}

/// Why a configured URL is refused, if it is: credentials written into it, a scheme libgit2
/// cannot use, or credentials configured for plain `http://`. `has_secret_auth`: a token or
/// password file is configured.
pub(crate) fn refusal(url: &str, has_secret_auth: bool) -> Option<&'static str> {
    let e = Endpoint::parse(url);
    if e.has_password || (e.has_user && matches!(e.transport, Transport::Http | Transport::Https)) {
        return Some(
            "embedded credentials (user:password@ or token@) are refused: \
             put the token or password in auth.tokenFile or auth.passwordFile and the user in \
             auth.usernameFile",
        );
    }
    if e.transport == Transport::Unknown {
        return Some(
            "unsupported scheme: use https://, ssh://, git+ssh://, scp-like user@host:path, \
             file:// or a path (http:// and git:// without credentials)",
        );
    }
    if has_secret_auth && matches!(e.transport, Transport::Http | Transport::Git) {
        return Some(
            "a token or password is never sent over plain http:// or git://: use https:// \
             (or SSH with auth.sshKeyFile)",
        );
    }
    None
}

/// `url` without its user information (`https://user:pw@host/x` → `https://host/x`), for
/// messages; other forms are returned as they are (they cannot hold a password).
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let cases = [
            (
                "https://git.example/ops/s.git",
                Transport::Https,
                "git.example",
                443,
            ),
            (
                "https://Git.Example:8443/s.git",
                Transport::Https,
                "git.example",
                8443,
            ),
            ("http://10.0.0.1/s.git", Transport::Http, "10.0.0.1", 80),
            ("ssh://git@host:2222/s.git", Transport::Ssh, "host", 2222),
            ("ssh://host/s.git", Transport::Ssh, "host", 22),
            ("git+ssh://git@host/s.git", Transport::Ssh, "host", 22),
            ("ssh+git://git@host:7/s.git", Transport::Ssh, "host", 7),
            ("ssh://git@[::1]:2222/s.git", Transport::Ssh, "::1", 2222),
            ("git@github.com:ops/s.git", Transport::Ssh, "github.com", 22),
            ("host:ops/s.git", Transport::Ssh, "host", 22),
            ("[git@host:2222]:/srv/s.git", Transport::Ssh, "host", 2222),
            ("[host:2222]:/srv/s.git", Transport::Ssh, "host", 2222),
            ("[::1]:/srv/s.git", Transport::Ssh, "::1", 22),
            ("git://host/s.git", Transport::Git, "host", 9418),
            ("file:///srv/s.git", Transport::Local, "", 0),
            ("/srv/s.git", Transport::Local, "", 0),
            ("ftp://host/s.git", Transport::Unknown, "host", 0),
        ];
        for (url, transport, host, port) in cases {
            let e = Endpoint::parse(url);
            assert_eq!(
                (e.transport, e.host.as_str(), e.port),
                (transport, host, port),
                "{url}"
            );
        }
    }

    #[test]
    fn same_server_needs_transport_host_and_port() {
        let a = Endpoint::parse("https://git.example/a.git");
        assert!(a.same_server(&Endpoint::parse("https://GIT.example:443/b.git")));
        assert!(!a.same_server(&Endpoint::parse("https://git.example:444/a.git")));
        assert!(!a.same_server(&Endpoint::parse("http://git.example/a.git")));
        assert!(!a.same_server(&Endpoint::parse("https://evil.example/a.git")));
        assert!(!a.same_server(&Endpoint::parse("https://git.example.evil.example/a.git")));
    }

    #[test]
    fn refused_urls() {
        let refused = [
            ("https://user:pw@host/s.git", false),
            ("https://token@host/s.git", false),
            ("http://user:pw@host/s.git", false),
            ("ssh://git:pw@host/s.git", false),
            ("ftp://host/s.git", false),
            ("http://host/s.git", true),
            ("git://host/s.git", true),
        ];
        for (url, auth) in refused {
            assert!(refusal(url, auth).is_some(), "{url} auth={auth}");
        }
        let fine = [
            ("https://host/s.git", true),
            ("http://host/s.git", false),
            ("ssh://git@host/s.git", false),
            ("ssh://git@host/s.git", true),
            ("git@host:s.git", false),
            ("file:///srv/s.git", false),
            ("/srv/s.git", false),
        ];
        for (url, auth) in fine {
            assert_eq!(refusal(url, auth), None, "{url} auth={auth}");
        }
    }

    #[test]
    fn redaction_drops_user_information() {
        assert_eq!(
            redacted("https://u:SECRET@host/x?y@z"),
            "https://host/x?y@z"
        );
        assert_eq!(redacted("https://SECRET@host:1/x"), "https://host:1/x");
        assert_eq!(redacted("https://host/a@b"), "https://host/a@b");
        assert_eq!(redacted("git@host:x"), "git@host:x");
    }
}

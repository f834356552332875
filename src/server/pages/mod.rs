//! The HTML pages: `/` (status), `/runs` (run history), `/runs/{id}` (one run), `/stacks/{name}`
//! and `/jobs/{name}`. Rendering is pure — functions from the daemon's data to an HTML string —
//! and every value is escaped here ([`escape`]): names, messages and diffs come from the
//! repository and the cluster and are untrusted. `routes` is the I/O side (the handlers).
//!
//! Each page is a plain document that works without JavaScript (without it, a `<noscript>`
//! refresh reloads it every 10 s). One inline script ([`SCRIPT`]) keeps it current without a
//! full reload: it fetches the same URL every 5 s and swaps `<main id="live">`. The
//! Content-Security-Policy ([`csp`]) allows exactly that script and the inline style by their
//! hashes, requests to this origin only, and nothing else (no external assets, no frames, no
//! forms).

pub mod job;
pub mod routes;
pub mod runs;
pub mod stack;
pub mod status;

use std::fmt::Write as _;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// The pages' style sheet (inline; allowed by its hash).
pub const STYLE: &str = include_str!("style.css");
/// The live-update script (inline; allowed by its hash).
pub const SCRIPT: &str = include_str!("live.js");
/// Seconds between reloads of a page when JavaScript is off.
pub const NOSCRIPT_REFRESH_SECONDS: u32 = 10;

/// Escapes text for HTML element and attribute content.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as one URL path segment: everything but unreserved characters percent-encoded (a
/// name can never add a segment, a query or a fragment).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A stable element id for `text` (an object, a stack): a prefix and 16 hex digits of its
/// SHA-256 — safe in an attribute and a fragment whatever the text holds.
pub fn anchor(prefix: &str, text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::from(prefix);
    for b in &digest[..8] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Link to the stack page (the object's row with `object`).
pub fn stack_href(stack: &str, object: Option<&str>) -> String {
    match object {
        Some(o) => format!("/stacks/{}#{}", segment(stack), anchor("o-", o)),
        None => format!("/stacks/{}", segment(stack)),
    }
}

/// Link to a run's page.
pub fn run_href(id: &str) -> String {
    format!("/runs/{}", segment(id))
}

/// Link to a job's page.
pub fn job_href(name: &str) -> String {
    format!("/jobs/{}", segment(name))
}

/// A time as the pages show it, or a dash.
pub fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "—".to_owned())
}

/// A duration in ms, human-sized.
pub fn duration(ms: Option<u64>) -> String {
    match ms {
        None => "—".to_owned(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The first 12 characters of a commit sha, escaped, in `<code>`.
pub fn short_sha(sha: Option<&str>) -> String {
    match sha {
        Some(s) => format!(
            "<code>{}</code>",
            escape(&s.chars().take(12).collect::<String>())
        ),
        None => "—".to_owned(),
    }
}

/// A word as a CSS class of the style sheet: lower-case letters only, else none.
pub fn class(word: &str) -> &str {
    if word.bytes().all(|b| b.is_ascii_lowercase()) {
        word
    } else {
        ""
    }
}

/// The whole document around `main` (already HTML): head, navigation, the live script.
pub fn document(title: &str, main: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <noscript><meta http-equiv=\"refresh\" content=\"{NOSCRIPT_REFRESH_SECONDS}\"></noscript>\
         <title>{title}</title><style>{STYLE}</style></head>\n<body>\
         <nav><a href=\"/\">status</a><a href=\"/runs\">runs</a>\
         <span id=\"live-note\" class=\"muted\"></span></nav>\n\
         <main id=\"live\">\n{main}</main>\n<script>{SCRIPT}</script>\n</body></html>\n",
        title = escape(title),
    )
}

/// The 404 page: what was not found (escaped).
pub fn not_found(what: &str) -> String {
    document(
        "not found",
        &format!(
            "<h1>Not found</h1><p id=\"not-found\">{}</p><p><a href=\"/\">Back to the status</a></p>\n",
            escape(what)
        ),
    )
}

fn hash(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
}

static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; connect-src 'self'; \
         img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash(SCRIPT),
        hash(STYLE)
    )
});

/// The Content-Security-Policy of every page: the inline script and style by hash, fetches to
/// this origin, nothing else.
pub fn csp() -> &'static str {
    &CSP
}

/// Hostile strings and the check that they were escaped, for the pages' tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::escape;

    /// Strings a hostile repository or cluster could put in a name, a message or a diff.
    pub const HOSTILE: &[&str] = &[
        "<script>alert(1)</script>",
        "\"><img src=x onerror=alert(1)>",
        "' onmouseover='alert(1)",
        "</textarea></pre></main><script>x()</script>",
        "&lt;already&gt;",
    ];

    /// Whether `html` holds `text` only escaped: no raw `<` or quote of it made it through.
    pub fn shows_escaped(html: &str, text: &str) {
        assert!(
            html.contains(&escape(text)),
            "{text} shown escaped in {html}"
        );
        if text.contains(['<', '"', '\'', '&']) {
            assert!(!html.contains(text), "{text} must not appear raw");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn escaping_segments_and_anchors_leave_nothing_active() {
        for h in HOSTILE {
            let e = escape(h);
            assert!(!e.contains(['<', '>', '"', '\'']), "{e}");
            let s = segment(h);
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)),
                "{s}"
            );
            let a = anchor("o-", h);
            assert_eq!(a.len(), 18);
        }
        assert_eq!(segment("web-1.a"), "web-1.a");
        assert_eq!(segment("a/b?c#d"), "a%2Fb%3Fc%23d");
        assert_eq!(stack_href("web", None), "/stacks/web");
        assert_eq!(class("synced"), "synced");
        assert_eq!(class("x\" onclick"), "");
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_script_and_style() {
        let policy = csp();
        assert!(policy.starts_with("default-src 'none'"));
        assert!(policy.contains(&format!("script-src 'sha256-{}'", hash(SCRIPT))));
        assert!(policy.contains(&format!("style-src 'sha256-{}'", hash(STYLE))));
        assert!(!policy.contains("unsafe"), "{policy}");
        let page = document("t", "<p>x</p>");
        assert!(page.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(page.contains(&format!("<style>{STYLE}</style>")));
        // No external asset: nothing is loaded from anywhere.
        for external in [
            "src=\"http",
            "href=\"http",
            "src=\"//",
            "href=\"//",
            "<link",
        ] {
            assert!(!page.contains(external), "{external}");
        }
        assert!(page.contains("<noscript><meta http-equiv=\"refresh\" content=\"10\">"));
        let missing = not_found("no run <script>");
        shows_escaped(&missing, "no run <script>");
    }
}

//! Headless Chromium (Debian's `chromium`) as an operator's browser shows the pages: the DOM
//! after scripts ran and screenshots (headless Chromium cannot dump or capture a page with
//! scripts off: a no-JavaScript view is the document as served). Screenshots are written under
//! `<target dir>/test-output/pages/` ([`output_dir`]) and kept after the test.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs headless Chromium with `args` on a fresh profile; panics if it fails.
pub fn chromium(args: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    // A browser that never finishes fails the test instead of hanging it.
    let out = Command::new("timeout")
        .args(["120", "chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("chromium is required for this test (scripts/prereqs installs Debian's chromium)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The DOM of `url` after its scripts ran for `virtual_ms` of virtual time (timers fire,
/// fetches complete). A budget of 0 would never end: at least 1 ms is used.
pub fn dom(url: &str, virtual_ms: u32) -> String {
    let virtual_ms = virtual_ms.max(1);
    let budget = format!("--virtual-time-budget={virtual_ms}");
    String::from_utf8(chromium(&[&budget, "--dump-dom", url]).stdout).unwrap()
}

/// Where the pages' screenshots go: `<target dir>/test-output/pages/`.
pub fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target tmp dir is inside the target dir")
        .join("test-output/pages");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Takes a screenshot of `url` into [`output_dir`]`/<name>` and checks it is a real rendering.
pub fn screenshot(url: &str, name: &str) -> PathBuf {
    let png = output_dir().join(name);
    let _ = std::fs::remove_file(&png);
    chromium(&[&format!("--screenshot={}", png.display()), url]);
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "a real rendering of {url} ({} bytes)",
        bytes.len()
    );
    png
}

/// The `href`s in `html` that start with `prefix`, in document order (attributes as the
/// serialized DOM writes them; `&amp;` undone).
pub fn links(html: &str, prefix: &str) -> Vec<String> {
    let needle = format!("href=\"{prefix}");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find(&needle) {
        let start = i + "href=\"".len();
        let end = rest[start..].find('"').map_or(rest.len(), |e| start + e);
        out.push(rest[start..end].replace("&amp;", "&"));
        rest = &rest[end..];
    }
    out
}

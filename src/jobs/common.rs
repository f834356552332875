//! Small pure helpers every job kind uses (a leaf: it depends on no job module).

/// A credential file named with a directory part, `..` or an absolute path.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} must be a plain file name in the credentials directory (no directory part, no '..', not absolute)"
)]
pub struct NotPlainName(pub String);

/// A credential file a job names must be a plain file name in the credentials directory (see
/// `credentials`): checked when the job is loaded, so `validate` refuses `/etc/...` or `../x`.
pub(crate) fn plain_credential(file: &str) -> Result<(), NotPlainName> {
    match crate::credentials::plain_name(file) {
        Some(_) => Ok(()),
        None => Err(NotPlainName(file.to_owned())),
    }
}

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

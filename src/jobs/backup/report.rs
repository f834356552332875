//! What a Backup run reports: the run's report (JSON, one-line summary, human text, figures for
//! the run record and metrics) and the freshness the daemon's status derives from run records.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::retention::RetentionDecision;
use crate::jobs::model::Job;

/// The backup a run made.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Made {
    pub id: String,
    pub files: usize,
    pub bytes: u64,
    pub duration_ms: u64,
    /// Whether its files are encrypted (age).
    pub encrypted: bool,
}

/// An incomplete backup a run did not remove.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeftIncomplete {
    pub id: String,
    pub reason: String,
}

/// The whole report of one run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub job: String,
    pub source: String,
    pub destination: String,
    pub dry_run: bool,
    /// Incomplete backups removed before the new one was taken (this host's runs that died).
    pub cleaned: Vec<String>,
    /// Incomplete backups left alone, and why (another host's run, a recent one, no marker).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incomplete_left: Vec<LeftIncomplete>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<Made>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<serde_json::Value>,
    /// Retention over the complete backups (after the new one), newest first.
    pub retention: Vec<RetentionDecision>,
    pub removed: Vec<String>,
    /// The newest complete, verified backup's time (what `maxAge` measures).
    pub newest_complete: Option<DateTime<Utc>>,
    pub complete_backups: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Report {
    /// Whether the run succeeded as a whole.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// Figures for the run record and metrics (`newestCompleteTimestamp` is Unix seconds).
    pub fn figures(&self) -> BTreeMap<String, u64> {
        let mut f: BTreeMap<String, u64> = [
            ("cleanedIncomplete", self.cleaned.len() as u64),
            ("removed", self.removed.len() as u64),
            (
                "kept",
                self.retention.iter().filter(|d| d.keep).count() as u64,
            ),
            ("completeBackups", self.complete_backups as u64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(b) = &self.backup {
            f.insert("bytes".into(), b.bytes);
            f.insert("files".into(), b.files as u64);
            f.insert("backupMs".into(), b.duration_ms);
        }
        if let Some(t) = self.newest_complete {
            f.insert(NEWEST_FIGURE.into(), t.timestamp().max(0) as u64);
        }
        f
    }

    /// One line for logs and the run record.
    pub fn summary(&self) -> String {
        let mut s = match (&self.backup, self.dry_run) {
            (Some(b), _) => format!(
                "backup {} complete: {} files, {}{}",
                b.id,
                b.files,
                human_bytes(b.bytes),
                if b.encrypted { ", encrypted" } else { "" }
            ),
            (None, true) => "dry run: no backup taken".to_owned(),
            (None, false) => "no backup taken".to_owned(),
        };
        if !self.removed.is_empty() {
            s.push_str(&format!(
                "; {} {} by retention",
                if self.dry_run {
                    "would remove"
                } else {
                    "removed"
                },
                self.removed.len()
            ));
        }
        if !self.cleaned.is_empty() {
            s.push_str(&format!(
                "; {} incomplete backups {}",
                self.cleaned.len(),
                if self.dry_run {
                    "to clean up"
                } else {
                    "cleaned up"
                }
            ));
        }
        s.push_str(&format!("; {} complete backups", self.complete_backups));
        if let Some(e) = self.errors.first() {
            s.push_str(&format!("; error: {e}"));
        }
        s
    }

    /// The human report.
    pub fn text(&self) -> String {
        let mut out = format!(
            "Backup {} of {} to {}\n{}\n",
            self.job,
            self.source,
            self.destination,
            self.summary()
        );
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        if let Some(d) = &self.drill {
            out.push_str(&format!("restore drill: {d}\n"));
        }
        for id in &self.cleaned {
            out.push_str(&format!(
                "  cleaned  {id} (incomplete: a run of this host that did not finish)\n"
            ));
        }
        for left in &self.incomplete_left {
            out.push_str(&format!(
                "  left     {} (incomplete: {})\n",
                left.id, left.reason
            ));
        }
        for d in &self.retention {
            let reasons: Vec<&str> = d.reasons.iter().map(|r| r.as_str()).collect();
            out.push_str(&format!(
                "  {}  {}  {}{}\n",
                if d.keep { "keep  " } else { "remove" },
                d.id,
                if d.keep {
                    reasons.join(", ")
                } else {
                    String::new()
                },
                if d.verified { "" } else { " (unverified)" }
            ));
        }
        out
    }
}

/// The run-record figure holding the newest complete backup's Unix time.
pub const NEWEST_FIGURE: &str = "newestCompleteTimestamp";

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    crate::jobs::common::human_bytes(n)
}

/// The newest complete backup recorded by a job's runs (from its run records' figures), and the
/// job's `maxAge`: what the daemon's status and metrics need without listing the destination.
/// `None` for a job that is not a Backup.
pub fn freshness(job: &Job, history: &crate::jobs::runs::History) -> Option<Freshness> {
    let max_age = job.backup()?.max_age;
    let newest = history
        .runs
        .iter()
        .rev()
        .find_map(|r| r.figures.get(NEWEST_FIGURE))
        .and_then(|t| DateTime::<Utc>::from_timestamp(*t as i64, 0));
    Some(Freshness { newest, max_age })
}

/// See [`freshness`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub newest: Option<DateTime<Utc>>,
    pub max_age: Option<std::time::Duration>,
}

impl Freshness {
    /// Why the job's backups are too old at `now` (none when fresh or without `maxAge`). A job
    /// with no complete backup is overdue once `maxAge` has passed since `since` (when the
    /// daemon first saw it).
    pub fn overdue(&self, now: DateTime<Utc>, since: Option<DateTime<Utc>>) -> Option<String> {
        let max = chrono::Duration::from_std(self.max_age?).ok()?;
        match self.newest {
            Some(t) if now - t > max => Some(format!(
                "newest complete backup {} is older than maxAge {}",
                t.to_rfc3339(),
                humantime(self.max_age?)
            )),
            Some(_) => None,
            None => match since {
                Some(s) if now - s > max => Some(format!(
                    "no complete backup within maxAge {}",
                    humantime(self.max_age?)
                )),
                _ => None,
            },
        }
    }
}

fn humantime(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn freshness_degrades_after_max_age() {
        let now = Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap();
        let f = Freshness {
            newest: Some(now - chrono::Duration::hours(30)),
            max_age: Some(std::time::Duration::from_secs(26 * 3600)),
        };
        assert!(
            f.overdue(now, None)
                .unwrap()
                .contains("older than maxAge 26h")
        );
        let fresh = Freshness {
            newest: Some(now - chrono::Duration::hours(2)),
            ..f
        };
        assert_eq!(fresh.overdue(now, None), None);
        let never = Freshness { newest: None, ..f };
        assert_eq!(
            never.overdue(now, Some(now - chrono::Duration::hours(1))),
            None
        );
        assert!(
            never
                .overdue(now, Some(now - chrono::Duration::hours(27)))
                .unwrap()
                .contains("no complete backup")
        );
        let unbounded = Freshness { max_age: None, ..f };
        assert_eq!(unbounded.overdue(now, None), None);
    }
}

//! Backup retention with restic `forget` semantics (pure: a list of complete backups and a policy
//! in, a decision per backup out).
//!
//! - `keepLast: n` keeps the n newest backups.
//! - `keepHourly/Daily/Weekly/Monthly/Yearly: n` keep, for each of the n newest calendar buckets
//!   (hour, day, ISO week, month, year in the job's time zone) that hold a backup, the newest
//!   backup of that bucket. Buckets without a backup do not count (as restic: "the last n days
//!   that have a backup").
//! - `keepWithin: d` keeps every backup made within d of the **newest** backup (not of now, so a
//!   job that stopped backing up does not lose its history to time passing).
//!
//! Rules are combined: a backup is kept when any rule keeps it, and every reason is reported.
//! Whatever the policy, the newest backup is kept. Only complete backups (with a manifest) are
//! ever given to `decide`: an incomplete or failed run never counts towards any rule.
//!
//! **Verified first.** A backup whose restore drill failed or did not finish is *unverified*.
//! The policy is applied to the verified backups alone, so an unverified backup never takes the
//! place of a verified one (with `keepLast: 1`, a failed drill cannot cost the last backup known
//! to restore). Unverified backups newer than the newest verified one are decided by the same
//! policy among themselves (the newest of them is kept: it may be the most recent data);
//! unverified backups older than the newest verified one are removed.

use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;
use serde::Serialize;

/// A policy that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "the retention policy keeps nothing: name at least one of keepLast, keepHourly, keepDaily, keepWeekly, keepMonthly, keepYearly, keepWithin"
    )]
    Empty,
    #[error("retention: {field} must be at least 1 (leave it out to not use it)")]
    Zero { field: &'static str },
}

/// What to keep. Built through [`Policy::new`], which refuses an empty policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", with = "secs")]
    pub keep_within: Option<Duration>,
}

mod secs {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format!("{}s", d.as_secs())),
            None => s.serialize_none(),
        }
    }
}

impl Policy {
    /// Checks the policy: at least one rule, no zero counts.
    pub fn new(p: Policy) -> Result<Policy, Error> {
        for (field, v) in [
            ("keepLast", p.keep_last),
            ("keepHourly", p.keep_hourly),
            ("keepDaily", p.keep_daily),
            ("keepWeekly", p.keep_weekly),
            ("keepMonthly", p.keep_monthly),
            ("keepYearly", p.keep_yearly),
        ] {
            if v == Some(0) {
                return Err(Error::Zero { field });
            }
        }
        if p.keep_within == Some(Duration::ZERO) {
            return Err(Error::Zero {
                field: "keepWithin",
            });
        }
        if p == Policy::default() {
            return Err(Error::Empty);
        }
        Ok(p)
    }
}

/// One complete backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// When the backup was taken (its start).
    pub time: DateTime<Utc>,
    /// Whether it counts as restorable (see `Manifest::verified`).
    pub verified: bool,
}

/// Why a backup is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum KeepReason {
    Newest,
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    Within,
}

impl KeepReason {
    pub fn as_str(self) -> &'static str {
        match self {
            KeepReason::Newest => "newest",
            KeepReason::Last => "last",
            KeepReason::Hourly => "hourly",
            KeepReason::Daily => "daily",
            KeepReason::Weekly => "weekly",
            KeepReason::Monthly => "monthly",
            KeepReason::Yearly => "yearly",
            KeepReason::Within => "within",
        }
    }
}

/// The decision for one backup: kept with its reasons, or removed (no reasons).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionDecision {
    pub id: String,
    pub time: DateTime<Utc>,
    pub verified: bool,
    pub keep: bool,
    pub reasons: Vec<KeepReason>,
}

/// Decides every backup, newest first. Ties in time are broken by id (the larger is newer).
/// The policy applies to the verified backups; unverified ones never displace them (see the
/// module documentation).
pub fn decide(backups: &[Candidate], policy: &Policy, tz: Tz) -> Vec<RetentionDecision> {
    // Newer first: by time, ties by id (the larger is newer).
    let newer = |a: &Candidate, b: &Candidate| (a.time, &a.id) > (b.time, &b.id);
    let (verified, unverified): (Vec<&Candidate>, Vec<&Candidate>) =
        backups.iter().partition(|c| c.verified);
    let newest_verified = verified
        .iter()
        .copied()
        .reduce(|a, b| if newer(b, a) { b } else { a });
    let (fresh, stale): (Vec<&Candidate>, Vec<&Candidate>) = unverified
        .into_iter()
        .partition(|c| newest_verified.is_none_or(|v| newer(c, v)));
    let mut out = decide_group(verified, policy, tz);
    out.extend(decide_group(fresh, policy, tz));
    out.extend(stale.into_iter().map(|c| RetentionDecision {
        id: c.id.clone(),
        time: c.time,
        verified: false,
        keep: false,
        reasons: Vec::new(),
    }));
    out.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    out
}

/// restic's `forget` over one group of backups.
fn decide_group(mut sorted: Vec<&Candidate>, policy: &Policy, tz: Tz) -> Vec<RetentionDecision> {
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    let newest = sorted.first().map(|c| c.time);

    type Bucket = fn(DateTime<Tz>) -> i64;
    let mut rules: Vec<(KeepReason, u32, Bucket, Option<i64>)> = Vec::new();
    let buckets: [(KeepReason, Option<u32>, Bucket); 5] = [
        (KeepReason::Hourly, policy.keep_hourly, |t| {
            (t.year() as i64 * 10_000 + t.ordinal() as i64) * 100 + t.hour() as i64
        }),
        (KeepReason::Daily, policy.keep_daily, |t| {
            t.year() as i64 * 10_000 + t.ordinal() as i64
        }),
        (KeepReason::Weekly, policy.keep_weekly, |t| {
            let w = t.iso_week();
            w.year() as i64 * 100 + w.week() as i64
        }),
        (KeepReason::Monthly, policy.keep_monthly, |t| {
            t.year() as i64 * 100 + t.month() as i64
        }),
        (KeepReason::Yearly, policy.keep_yearly, |t| t.year() as i64),
    ];
    for (reason, n, bucket) in buckets {
        if let Some(n) = n {
            rules.push((reason, n, bucket, None));
        }
    }

    let mut out = Vec::with_capacity(sorted.len());
    for (i, c) in sorted.iter().enumerate() {
        let mut reasons = Vec::new();
        if i == 0 {
            reasons.push(KeepReason::Newest);
        }
        if policy.keep_last.is_some_and(|n| (i as u64) < n as u64) {
            reasons.push(KeepReason::Last);
        }
        let local = c.time.with_timezone(&tz);
        for (reason, left, bucket, last) in rules.iter_mut() {
            let b = bucket(local);
            if *left > 0 && *last != Some(b) {
                *left -= 1;
                *last = Some(b);
                reasons.push(*reason);
            }
        }
        if let (Some(within), Some(newest)) = (policy.keep_within, newest)
            && newest
                .signed_duration_since(c.time)
                .to_std()
                .is_ok_and(|age| age <= within)
        {
            reasons.push(KeepReason::Within);
        }
        out.push(RetentionDecision {
            id: c.id.clone(),
            time: c.time,
            verified: c.verified,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::collections::{BTreeMap, BTreeSet};

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    fn cands(times: &[DateTime<Utc>]) -> Vec<Candidate> {
        times
            .iter()
            .map(|t| Candidate {
                id: t.format("%Y%m%dT%H%M%SZ").to_string(),
                time: *t,
                verified: true,
            })
            .collect()
    }

    fn kept(d: &[RetentionDecision]) -> Vec<String> {
        let mut k: Vec<String> = d.iter().filter(|d| d.keep).map(|d| d.id.clone()).collect();
        k.sort();
        k
    }

    #[test]
    fn empty_and_zero_policies_are_refused() {
        assert_eq!(Policy::new(Policy::default()), Err(Error::Empty));
        assert_eq!(
            Policy::new(Policy {
                keep_daily: Some(0),
                ..Default::default()
            }),
            Err(Error::Zero { field: "keepDaily" })
        );
        assert!(
            Policy::new(Policy {
                keep_within: Some(Duration::from_secs(3600)),
                ..Default::default()
            })
            .is_ok()
        );
    }

    #[test]
    fn table() {
        let day = |d: u32, h: u32| at(2026, 3, d, h, 0);
        struct Case {
            name: &'static str,
            times: Vec<DateTime<Utc>>,
            policy: Policy,
            tz: Tz,
            want: Vec<DateTime<Utc>>,
        }
        let cases = [
            Case {
                name: "keepLast keeps the n newest",
                times: vec![day(1, 1), day(2, 1), day(3, 1), day(4, 1)],
                policy: Policy {
                    keep_last: Some(2),
                    ..Default::default()
                },
                tz: Tz::UTC,
                want: vec![day(3, 1), day(4, 1)],
            },
            Case {
                name: "keepDaily keeps the newest of each of the n newest days with backups",
                times: vec![day(1, 1), day(1, 5), day(3, 2), day(3, 9), day(4, 0)],
                policy: Policy {
                    keep_daily: Some(2),
                    ..Default::default()
                },
                tz: Tz::UTC,
                want: vec![day(3, 9), day(4, 0)],
            },
            Case {
                name: "days are the job's time zone's days",
                // 23:30 UTC on the 1st and 02:00 UTC on the 2nd are both the 1st in New York.
                times: vec![at(2026, 3, 1, 23, 30), at(2026, 3, 2, 2, 0)],
                policy: Policy {
                    keep_daily: Some(5),
                    ..Default::default()
                },
                tz: chrono_tz::America::New_York,
                want: vec![at(2026, 3, 2, 2, 0)],
            },
            Case {
                name: "keepWithin is measured from the newest backup, not from now",
                times: vec![day(1, 0), day(5, 0), day(9, 0), day(10, 0)],
                policy: Policy {
                    keep_within: Some(Duration::from_secs(5 * 86400)),
                    ..Default::default()
                },
                tz: Tz::UTC,
                want: vec![day(5, 0), day(9, 0), day(10, 0)],
            },
            Case {
                name: "weekly buckets are ISO weeks (Monday start)",
                // Sun 8 Mar and Mon 9 Mar 2026 are in different ISO weeks.
                times: vec![day(2, 0), day(8, 0), day(9, 0)],
                policy: Policy {
                    keep_weekly: Some(2),
                    ..Default::default()
                },
                tz: Tz::UTC,
                want: vec![day(8, 0), day(9, 0)],
            },
            Case {
                name: "the newest backup is always kept",
                times: vec![day(1, 0), day(20, 0)],
                policy: Policy {
                    keep_within: Some(Duration::from_secs(1)),
                    ..Default::default()
                },
                tz: Tz::UTC,
                want: vec![day(20, 0)],
            },
            Case {
                name: "rules combine: keepLast and keepMonthly",
                times: vec![
                    at(2026, 1, 10, 0, 0),
                    at(2026, 1, 20, 0, 0),
                    at(2026, 2, 5, 0, 0),
                    at(2026, 2, 6, 0, 0),
                    at(2026, 2, 7, 0, 0),
                ],
                policy: Policy {
                    keep_last: Some(1),
                    keep_monthly: Some(2),
                    ..Default::default()
                },
                tz: Tz::UTC,
                want: vec![at(2026, 1, 20, 0, 0), at(2026, 2, 7, 0, 0)],
            },
        ];
        for c in cases {
            let policy = Policy::new(c.policy).unwrap();
            let got = kept(&decide(&cands(&c.times), &policy, c.tz));
            let want = kept(
                &cands(&c.want)
                    .into_iter()
                    .map(|c| RetentionDecision {
                        id: c.id,
                        time: c.time,
                        verified: true,
                        keep: true,
                        reasons: vec![],
                    })
                    .collect::<Vec<_>>(),
            );
            assert_eq!(got, want, "{}", c.name);
        }
    }

    /// A generated calendar: a backup every 6 hours (with a jitter of minutes) for 800 days,
    /// some days missing; the kept set is computed independently by grouping.
    #[test]
    fn generated_calendar_keeps_exactly_the_expected_set() {
        let tz: Tz = chrono_tz::Europe::Berlin;
        let start = at(2024, 10, 1, 1, 0);
        let mut times = Vec::new();
        for i in 0..(800 * 4) {
            let t = start + chrono::Duration::hours(6 * i) + chrono::Duration::minutes(i % 7);
            // Days 100..110 have no backups (an outage).
            if (100..110).contains(&(i / 4)) {
                continue;
            }
            times.push(t);
        }
        let backups = cands(&times);
        let policy = Policy::new(Policy {
            keep_last: Some(3),
            keep_hourly: Some(5),
            keep_daily: Some(10),
            keep_weekly: Some(6),
            keep_monthly: Some(14),
            keep_yearly: Some(3),
            keep_within: Some(Duration::from_secs(2 * 86400)),
        })
        .unwrap();
        let decisions = decide(&backups, &policy, tz);
        assert_eq!(decisions.len(), backups.len(), "every backup is decided");

        // Independent computation: group by bucket, newest of each of the n newest buckets.
        let mut newest_first = times.clone();
        newest_first.sort();
        newest_first.reverse();
        let mut want: BTreeSet<DateTime<Utc>> = BTreeSet::new();
        want.extend(newest_first.iter().take(3));
        let by = |n: usize, key: &dyn Fn(DateTime<Tz>) -> String| {
            let mut groups: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
            for t in &times {
                let k = key(t.with_timezone(&tz));
                let e = groups.entry(k).or_insert(*t);
                if t > e {
                    *e = *t;
                }
            }
            let mut newest: Vec<DateTime<Utc>> = groups.into_values().collect();
            newest.sort();
            newest.into_iter().rev().take(n).collect::<Vec<_>>()
        };
        want.extend(by(5, &|t| t.format("%Y-%m-%d %H").to_string()));
        want.extend(by(10, &|t| t.format("%Y-%m-%d").to_string()));
        want.extend(by(6, &|t| t.format("%G-W%V").to_string()));
        want.extend(by(14, &|t| t.format("%Y-%m").to_string()));
        want.extend(by(3, &|t| t.format("%Y").to_string()));
        let newest = newest_first[0];
        want.extend(
            times
                .iter()
                .filter(|t| newest - **t <= chrono::Duration::days(2)),
        );

        let got: BTreeSet<DateTime<Utc>> = decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.time)
            .collect();
        assert_eq!(got, want);
        // Sanity of the figures: 2 days × 4 + a handful of buckets, far fewer than 3 160.
        assert!(got.len() < 60, "{}", got.len());
        // A removed backup has no reason; a kept one has at least one.
        assert!(decisions.iter().all(|d| d.keep != d.reasons.is_empty()));
        assert_eq!(decisions[0].reasons[0], KeepReason::Newest);
    }

    #[test]
    fn an_unverified_backup_never_displaces_a_verified_one() {
        let day = |d: u32| at(2026, 3, d, 3, 0);
        let c = |d: u32, verified: bool| Candidate {
            id: format!("d{d:02}"),
            time: day(d),
            verified,
        };
        let last1 = Policy::new(Policy {
            keep_last: Some(1),
            ..Default::default()
        })
        .unwrap();
        // The case: keepLast 1, the newest backup's drill failed.
        let d = decide(&[c(1, true), c(2, false)], &last1, Tz::UTC);
        assert_eq!(kept(&d), ["d01", "d02"], "{d:?}");
        assert_eq!(d[0].id, "d02");
        assert!(!d[0].verified && d[0].reasons == [KeepReason::Newest, KeepReason::Last]);
        // Drills keep failing: the unverified ones replace each other, never the verified one.
        let d = decide(&[c(1, true), c(2, false), c(3, false)], &last1, Tz::UTC);
        assert_eq!(kept(&d), ["d01", "d03"]);
        // A drill passes again: the unverified ones before it go, keepLast applies as usual.
        let d = decide(
            &[c(1, true), c(2, false), c(3, false), c(4, true)],
            &last1,
            Tz::UTC,
        );
        assert_eq!(kept(&d), ["d04"]);
        // Never verified at all: the policy among the unverified ones (newest kept).
        let d = decide(&[c(1, false), c(2, false)], &last1, Tz::UTC);
        assert_eq!(kept(&d), ["d02"]);
    }

    /// Whatever the mix, the verified backups' decisions are exactly what the policy decides for
    /// them alone: an unverified backup never changes whether a verified one is kept.
    #[test]
    fn verified_decisions_ignore_the_unverified_ones() {
        let policy = Policy::new(Policy {
            keep_last: Some(2),
            keep_daily: Some(3),
            keep_within: Some(Duration::from_secs(36 * 3600)),
            ..Default::default()
        })
        .unwrap();
        let start = at(2026, 1, 1, 0, 0);
        for seed in 0u64..200 {
            let mut x = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut next = || {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                x >> 33
            };
            let n = 1 + next() % 12;
            let all: Vec<Candidate> = (0..n)
                .map(|i| Candidate {
                    id: format!("b{i:02}"),
                    time: start + chrono::Duration::hours((i * 9 + next() % 5) as i64),
                    verified: next() % 3 != 0,
                })
                .collect();
            let only_verified: Vec<Candidate> =
                all.iter().filter(|c| c.verified).cloned().collect();
            let mixed = decide(&all, &policy, Tz::UTC);
            let alone = decide(&only_verified, &policy, Tz::UTC);
            let verified_kept: Vec<String> = kept(
                &mixed
                    .iter()
                    .filter(|d| d.verified)
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            assert_eq!(verified_kept, kept(&alone), "seed {seed}: {all:?}");
            // The newest backup of all is always kept.
            assert!(mixed[0].keep, "seed {seed}");
        }
    }

    #[test]
    fn no_backups_no_decisions() {
        let p = Policy::new(Policy {
            keep_last: Some(1),
            ..Default::default()
        })
        .unwrap();
        assert!(decide(&[], &p, Tz::UTC).is_empty());
    }
}

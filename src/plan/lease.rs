//! Lease decisions, pure: whether a `coordination.k8s.io` Lease as read is this process's, held
//! by someone else, or free; and which free stacks a daemon tries to take so that the daemons of
//! one instance share the stacks evenly. `cluster::lease` reads and writes the Leases and keeps
//! the clock; nothing here does I/O.
//!
//! A Lease is untrusted input (anyone who may write in `driftless-system` may write one): its
//! holder is shown bounded and escaped, its duration is clamped, and a `renewTime` in the future
//! does not keep it alive: a Lease counts as expired when the reader's own clock saw it unchanged
//! for its duration (as client-go's leader election does), or when its `renewTime` plus duration
//! (and `CLOCK_SKEW`) lies in the reader's past. The worst a forged Lease does is keep a stack unwritten, reported,
//! for at most `MAX_DURATION` after its last change.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The longest lease duration honoured, whatever a Lease says.
pub const MAX_DURATION: Duration = Duration::from_secs(300);
/// How far two hosts' clocks may disagree: a Lease counts as expired by its `renewTime` only
/// this much after its duration (the observation rule needs no clock agreement at all).
pub const CLOCK_SKEW: Duration = Duration::from_secs(10);
/// Longest holder identity shown or compared; longer ones are cut.
pub const MAX_HOLDER_LEN: usize = 128;

/// A Lease as read, reduced to what the decisions need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// `spec.holderIdentity` (none or empty: free).
    pub holder: Option<String>,
    /// `spec.renewTime`.
    pub renew_time: Option<DateTime<Utc>>,
    /// `spec.leaseDurationSeconds`.
    pub duration_seconds: Option<i64>,
    /// How long this reader has seen the Lease unchanged (same resourceVersion).
    pub unchanged_for: Duration,
}

/// Where a Lease stands for one reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Held by this reader, and not expired.
    Mine,
    /// Held by another, live holder (shown through `shown_holder`).
    Held(String),
    /// No holder, or the holder let it expire.
    Free,
}

/// The duration a Lease claims, clamped to 1 s..=`MAX_DURATION`; `fallback` when it has none.
pub fn duration_of(seen: &Seen, fallback: Duration) -> Duration {
    match seen.duration_seconds {
        Some(s) => Duration::from_secs(s.clamp(1, MAX_DURATION.as_secs() as i64) as u64),
        None => fallback.min(MAX_DURATION),
    }
}

/// Where `seen` stands for the reader `me` at `now`; `fallback` is the duration assumed for a
/// Lease that states none.
pub fn standing(seen: &Seen, me: &str, now: DateTime<Utc>, fallback: Duration) -> Standing {
    let Some(holder) = seen.holder.as_deref().filter(|h| !h.is_empty()) else {
        return Standing::Free;
    };
    let duration = duration_of(seen, fallback);
    let unchanged_too_long = seen.unchanged_for >= duration;
    let renewed_too_long_ago = seen.renew_time.is_some_and(|t| {
        // A renewTime in the future proves nothing: only the observation rule applies then.
        t <= now
            && (now - t)
                .to_std()
                .is_ok_and(|age| age >= duration + CLOCK_SKEW)
    });
    if unchanged_too_long || renewed_too_long_ago {
        Standing::Free
    } else if holder == me {
        Standing::Mine
    } else {
        Standing::Held(shown_holder(holder))
    }
}

/// A holder identity as it may be shown (status, errors, logs): at most `MAX_HOLDER_LEN`
/// characters, control and non-ASCII characters escaped.
pub fn shown_holder(holder: &str) -> String {
    let mut out = String::new();
    for c in holder.chars() {
        if out.len() >= MAX_HOLDER_LEN {
            out.push('…');
            break;
        }
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

/// The stacks this daemon tries to take now: free ones, up to its fair share of `wanted`
/// (`ceil(wanted / members)`, `members` the live daemons of the instance, this one included).
/// A stack held by a live holder is never taken (stacks move only when a holder goes). Among
/// the free stacks each daemon prefers its own (rendezvous hashing on `me`), so daemons that
/// start together seldom race for the same stack.
pub fn to_take(
    wanted: &[String],
    standings: &BTreeMap<String, Standing>,
    members: usize,
    me: &str,
) -> Vec<String> {
    let members = members.max(1);
    let share = wanted.len().div_ceil(members);
    let mine = wanted
        .iter()
        .filter(|s| standings.get(*s) == Some(&Standing::Mine))
        .count();
    let mut free: Vec<&String> = wanted
        .iter()
        .filter(|s| matches!(standings.get(*s), None | Some(Standing::Free)))
        .collect();
    free.sort_by_key(|s| std::cmp::Reverse(preference(me, s)));
    free.into_iter()
        .take(share.saturating_sub(mine))
        .cloned()
        .collect()
}

/// A stable pseudo-random preference of `me` for `stack` (FNV-1a; not security-relevant: a
/// daemon that loses a race simply does not get the stack).
fn preference(me: &str, stack: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in me.bytes().chain([0]).chain(stack.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn standing_table() {
        let fallback = Duration::from_secs(15);
        let now = at(100);
        let seen =
            |holder: Option<&str>, renew: Option<i64>, dur: Option<i64>, unchanged: u64| Seen {
                holder: holder.map(str::to_owned),
                renew_time: renew.map(at),
                duration_seconds: dur,
                unchanged_for: Duration::from_secs(unchanged),
            };
        let held = |h: &str| Standing::Held(h.to_owned());
        let cases = [
            (
                "no holder",
                seen(None, Some(99), Some(15), 0),
                Standing::Free,
            ),
            (
                "empty holder",
                seen(Some(""), Some(99), Some(15), 0),
                Standing::Free,
            ),
            (
                "mine, fresh",
                seen(Some("me"), Some(99), Some(15), 1),
                Standing::Mine,
            ),
            (
                "other, fresh",
                seen(Some("b"), Some(99), Some(15), 1),
                held("b"),
            ),
            (
                "other, renewed long ago",
                seen(Some("b"), Some(75), Some(15), 0),
                Standing::Free,
            ),
            (
                "other, renewed within the clock skew",
                seen(Some("b"), Some(80), Some(15), 0),
                held("b"),
            ),
            (
                "other, seen unchanged for its duration",
                seen(Some("b"), Some(99), Some(15), 15),
                Standing::Free,
            ),
            (
                "mine but expired",
                seen(Some("me"), Some(70), Some(15), 0),
                Standing::Free,
            ),
            // Far-future renewTime: only the observation rule counts.
            (
                "future renewTime, just seen",
                seen(Some("x"), Some(1_000_000), Some(15), 0),
                held("x"),
            ),
            (
                "future renewTime, unchanged",
                seen(Some("x"), Some(1_000_000), Some(15), 15),
                Standing::Free,
            ),
            // Huge duration: clamped to MAX_DURATION.
            (
                "huge duration, unchanged for the max",
                seen(Some("x"), None, Some(i64::MAX), 300),
                Standing::Free,
            ),
            (
                "huge duration, recently changed",
                seen(Some("x"), None, Some(i64::MAX), 299),
                held("x"),
            ),
            (
                "negative duration: 1 s",
                seen(Some("x"), Some(99), Some(-5), 1),
                Standing::Free,
            ),
            (
                "no duration: the fallback",
                seen(Some("x"), None, None, 14),
                held("x"),
            ),
            (
                "no duration, unchanged past the fallback",
                seen(Some("x"), None, None, 15),
                Standing::Free,
            ),
        ];
        for (what, seen, want) in cases {
            assert_eq!(standing(&seen, "me", now, fallback), want, "{what}");
        }
    }

    #[test]
    fn holders_are_shown_bounded_and_escaped() {
        assert_eq!(shown_holder("ops-1-abcd"), "ops-1-abcd");
        assert_eq!(shown_holder("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        let long = "x".repeat(10_000);
        let shown = shown_holder(&long);
        assert!(
            shown.chars().count() <= MAX_HOLDER_LEN + 1,
            "{}",
            shown.len()
        );
        assert!(shown.ends_with('…'));
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("s{i}")).collect()
    }

    #[test]
    fn a_lone_daemon_takes_every_free_stack() {
        let wanted = names(5);
        let got = to_take(&wanted, &BTreeMap::new(), 1, "a");
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn two_daemons_take_a_fair_share_each_and_different_ones() {
        let wanted = names(10);
        let a = to_take(&wanted, &BTreeMap::new(), 2, "host-a-1");
        let b = to_take(&wanted, &BTreeMap::new(), 2, "host-b-2");
        assert_eq!((a.len(), b.len()), (5, 5));
        // Not a guarantee (a race is settled by the API server), but the preferences differ.
        assert_ne!(a, b);
    }

    #[test]
    fn held_stacks_are_never_taken_and_a_share_counts_what_is_mine() {
        let wanted = names(4);
        let standings: BTreeMap<String, Standing> = [
            ("s0", Standing::Mine),
            ("s1", Standing::Held("b".into())),
            ("s2", Standing::Held("b".into())),
            ("s3", Standing::Free),
        ]
        .into_iter()
        .map(|(s, st)| (s.to_owned(), st))
        .collect();
        assert_eq!(to_take(&wanted, &standings, 2, "a"), vec!["s3".to_owned()]);
        // Holding the share already: nothing more.
        let full: BTreeMap<String, Standing> = [("s0", Standing::Mine), ("s3", Standing::Mine)]
            .into_iter()
            .map(|(s, st)| (s.to_owned(), st))
            .collect();
        assert!(to_take(&wanted, &full, 2, "a").is_empty());
        // The other daemon went (one member left): its expired stacks come to this one.
        let gone: BTreeMap<String, Standing> = [
            ("s0", Standing::Mine),
            ("s1", Standing::Free),
            ("s2", Standing::Free),
            ("s3", Standing::Mine),
        ]
        .into_iter()
        .map(|(s, st)| (s.to_owned(), st))
        .collect();
        assert_eq!(to_take(&wanted, &gone, 1, "a").len(), 2);
        // No members counted (cannot happen, but not a division by zero).
        assert_eq!(to_take(&wanted, &BTreeMap::new(), 0, "a").len(), 4);
    }

    #[test]
    fn uneven_counts_round_up_so_every_stack_has_room() {
        let wanted = names(3);
        assert_eq!(to_take(&wanted, &BTreeMap::new(), 2, "a").len(), 2);
        assert_eq!(to_take(&wanted, &BTreeMap::new(), 5, "a").len(), 1);
    }
}

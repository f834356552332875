//! Failure memory: per stack and for the source, exponential backoff (5 s, 10 s, … 10 min).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One stack's failures.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    pub failures: u32,
    pub retry_at: Option<Instant>,
}

/// The delay after `failures` consecutive failures: 5 s, 10 s, 20 s … capped at 10 min.
pub fn delay(failures: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1u64 << failures.saturating_sub(1).min(7)))
        .min(Duration::from_secs(600))
}

/// Every stack's backoff and the source's.
#[derive(Debug, Default)]
pub struct Backoffs {
    stacks: BTreeMap<String, Backoff>,
    /// Consecutive failures to fetch the source (or to reach the cluster).
    pub source_failures: u32,
}

impl Backoffs {
    /// Records a failure of `stack`; returns the delay before it is tried again and the count.
    pub fn fail(&mut self, stack: &str, now: Instant) -> (Duration, u32) {
        let b = self.stacks.entry(stack.to_owned()).or_default();
        b.failures += 1;
        let d = delay(b.failures);
        b.retry_at = Some(now + d);
        (d, b.failures)
    }

    /// Records a success of `stack`: its backoff is over.
    pub fn succeed(&mut self, stack: &str) {
        self.stacks.remove(stack);
    }

    /// Whether `stack` waits out a backoff (failed, not retried since).
    pub fn waiting(&self, stack: &str) -> bool {
        self.stacks.get(stack).is_some_and(|b| b.retry_at.is_some())
    }

    /// Stacks whose retry time has not come yet.
    pub fn in_backoff(&self, now: Instant) -> Vec<String> {
        self.stacks
            .iter()
            .filter(|(_, b)| b.retry_at.is_some_and(|t| t > now))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether a stack failed and has not succeeded since.
    pub fn any_failing(&self) -> bool {
        self.stacks.values().any(|b| b.failures > 0)
    }

    /// A new revision is tried at once, also by stacks in backoff (a fix must not wait out the
    /// delay); repeated failures still grow it.
    pub fn retry_all_now(&mut self) {
        for b in self.stacks.values_mut() {
            b.retry_at = None;
        }
    }

    /// How long until the earliest retry: a backed-off stack, or the source.
    pub fn next_retry(&self, now: Instant) -> Option<Duration> {
        let stacks = self
            .stacks
            .values()
            .filter_map(|b| b.retry_at)
            .map(|t| t.saturating_duration_since(now));
        let source = (self.source_failures > 0).then(|| delay(self.source_failures));
        stacks.chain(source).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let secs: Vec<u64> = (1..=10).map(|n| delay(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
    }

    #[test]
    fn stacks_back_off_one_by_one() {
        let now = Instant::now();
        let mut b = Backoffs::default();
        assert_eq!(b.next_retry(now), None);
        assert_eq!(b.fail("a", now), (Duration::from_secs(5), 1));
        assert_eq!(b.fail("a", now), (Duration::from_secs(10), 2));
        assert_eq!(b.in_backoff(now), ["a"]);
        assert!(b.waiting("a") && !b.waiting("b") && b.any_failing());
        assert_eq!(b.next_retry(now), Some(Duration::from_secs(10)));
        b.source_failures = 1;
        assert_eq!(b.next_retry(now), Some(Duration::from_secs(5)));
        b.retry_all_now();
        assert!(b.in_backoff(now).is_empty() && b.any_failing());
        assert_eq!(
            b.fail("a", now),
            (Duration::from_secs(20), 3),
            "still grows"
        );
        b.succeed("a");
        assert!(!b.any_failing() && !b.waiting("a"));
    }
}

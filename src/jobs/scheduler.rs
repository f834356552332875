//! Scheduling decisions (pure): at a given instant, which jobs start, which are skipped because
//! their previous run is still going, and when to look again. The daemon's scheduler task owns
//! the clock and the running set; it calls these and records every outcome.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::model::Job;

/// Why a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Cause {
    /// Its fire time came while the daemon ran.
    Scheduled,
    /// Its fire time passed while the daemon was down, within `startingDeadline`.
    CatchUp,
    /// Started by hand (`driftless jobs run`).
    Manual,
}

/// One fire time of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub job: String,
    pub scheduled_for: DateTime<Utc>,
    pub cause: Cause,
}

/// What to do with a due run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Start(Due),
    /// The job's previous run is still going: never two runs of one job at once.
    SkipOverlap(Due),
}

/// The decisions at `now`. `last_tick` is the previous decision instant (`None` right after the
/// daemon started: then only catch-up runs are considered); `last_scheduled` the fire time of
/// each job's last recorded run; `running` the jobs with a run in progress. Several fire times
/// inside one window (a suspended host) give one run, for the latest.
pub fn decide(
    jobs: &[Job],
    now: DateTime<Utc>,
    last_tick: Option<DateTime<Utc>>,
    last_scheduled: &BTreeMap<String, DateTime<Utc>>,
    running: &BTreeSet<String>,
) -> Vec<Decision> {
    let mut out = Vec::new();
    for job in jobs {
        let due = match last_tick {
            None => job.starting_deadline.and_then(|deadline| {
                job.schedule
                    .missed_run(last_scheduled.get(&job.name).copied(), now, deadline)
                    .map(|t| (t, Cause::CatchUp))
            }),
            Some(tick) => {
                let since = last_scheduled
                    .get(&job.name)
                    .map_or(tick, |l| (*l).max(tick));
                latest_fire_in(job, since, now).map(|t| (t, Cause::Scheduled))
            }
        };
        let Some((scheduled_for, cause)) = due else {
            continue;
        };
        let due = Due {
            job: job.name.clone(),
            scheduled_for,
            cause,
        };
        out.push(if running.contains(&job.name) {
            Decision::SkipOverlap(due)
        } else {
            Decision::Start(due)
        });
    }
    out
}

/// The latest fire time in (after, until].
fn latest_fire_in(job: &Job, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut t = job.schedule.next_after(after)?;
    if t > until {
        return None;
    }
    // Bounded: a window holds few fire times unless the host slept for long; cap the walk.
    for _ in 0..10_000 {
        match job.schedule.next_after(t) {
            Some(next) if next <= until => t = next,
            _ => break,
        }
    }
    Some(t)
}

/// When the scheduler should look again: the earliest next fire time after `now`.
pub fn next_wake(jobs: &[Job], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    jobs.iter().filter_map(|j| j.schedule.next_after(now)).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::schedule::Schedule;
    use chrono::TimeZone;

    fn job(name: &str, expr: &str, deadline_secs: Option<u64>) -> Job {
        let spec = serde_json::json!({
            "schedule": "@daily",
            "source": {"postgres": {"database": "app", "username": "app"}},
            "destination": {"local": {"path": "/b"}},
            "retention": {"keepLast": 1},
        });
        Job {
            schedule: Schedule::parse(expr, None).unwrap(),
            starting_deadline: deadline_secs.map(std::time::Duration::from_secs),
            ..Job::from_spec("Backup", name, "s", "stack/s/jobs.yaml", spec).unwrap()
        }
    }

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, h, m, 0).unwrap()
    }

    #[test]
    fn scheduled_catch_up_and_overlap() {
        let nightly = job("nightly", "0 3 * * *", Some(2 * 3600));
        let hourly = job("hourly", "@hourly", None);
        let jobs = vec![nightly, hourly];
        let none = BTreeMap::new();
        let idle = BTreeSet::new();

        // A tick across 03:00 starts both (03:00 is also on the hour).
        let d = decide(&jobs, t(3, 0), Some(t(2, 59)), &none, &idle);
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|x| matches!(
            x,
            Decision::Start(Due {
                cause: Cause::Scheduled,
                ..
            })
        )));

        // Nothing between ticks inside an hour.
        assert!(decide(&jobs, t(3, 30), Some(t(3, 10)), &none, &idle).is_empty());

        // Still running: skipped, not doubled.
        let running: BTreeSet<String> = ["hourly".to_owned()].into();
        let d = decide(&jobs, t(4, 0), Some(t(3, 59)), &none, &running);
        assert_eq!(
            d,
            vec![Decision::SkipOverlap(Due {
                job: "hourly".into(),
                scheduled_for: t(4, 0),
                cause: Cause::Scheduled
            })]
        );

        // Start after downtime: the nightly run at 03:00 was missed and is within its 2 h
        // deadline at 04:30: it runs once; the hourly job has no deadline and does not catch up.
        let last: BTreeMap<String, DateTime<Utc>> = [(
            "nightly".to_owned(),
            Utc.with_ymd_and_hms(2026, 11, 20, 3, 0, 0).unwrap(),
        )]
        .into();
        let d = decide(&jobs, t(4, 30), None, &last, &idle);
        assert_eq!(
            d,
            vec![Decision::Start(Due {
                job: "nightly".into(),
                scheduled_for: t(3, 0),
                cause: Cause::CatchUp
            })]
        );
        // Past the deadline: nothing.
        assert!(decide(&jobs, t(5, 30), None, &last, &idle).is_empty());
        // Already ran at 03:00 today: nothing to catch up.
        let ran: BTreeMap<String, DateTime<Utc>> = [("nightly".to_owned(), t(3, 0))].into();
        assert!(decide(&jobs, t(4, 30), None, &ran, &idle).is_empty());

        // A suspended host wakes after several hourly fire times: one run, for the latest.
        let d = decide(&jobs[1..], t(9, 10), Some(t(5, 5)), &none, &idle);
        assert_eq!(
            d,
            vec![Decision::Start(Due {
                job: "hourly".into(),
                scheduled_for: t(9, 0),
                cause: Cause::Scheduled
            })]
        );

        assert_eq!(next_wake(&jobs, t(3, 10)), Some(t(4, 0)));
    }
}

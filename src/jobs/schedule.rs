//! Crontab schedules for scheduled jobs, with the semantics Kubernetes CronJob users know.
//!
//! # Expressions
//!
//! - Five fields `minute hour day-of-month month day-of-week`, or six with a leading `second`.
//! - Day of week: `0`–`7`, where both `0` and `7` are Sunday; month and weekday names
//!   (`JAN`–`DEC`, `SUN`–`SAT`) in any case, also in ranges (`mon-fri`, `FRI-SUN`).
//! - Lists, ranges and steps: `1,15`, `9-17`, `*/15`, `9-17/2`, and `5/15` (minutes 5, 20, 35,
//!   50), the Kubernetes/Quartz shorthand for `5-59/15`.
//! - Day of month and day of week: when both are restricted, a day matches if EITHER does
//!   (Vixie cron); when one is `*` (or `?`, or `*/1`), only the other restricts.
//! - Macros `@yearly`/`@annually`, `@monthly`, `@weekly` (Sunday 00:00), `@daily`/`@midnight`,
//!   `@hourly`. `@reboot` is rejected: a scheduled job needs a time to fire at.
//! - croner's extensions are accepted as croner defines them: `L` (last day / last weekday of
//!   the month), `W` (nearest weekday), `#` (nth weekday), and a `+` prefix on the day-of-week
//!   field to demand that day of month AND day of week match.
//!
//! An expression that parses but can never fire (`0 0 30 2 *`) is rejected as well, since a job
//! that silently never runs is worse than a configuration error.
//!
//! # Time zones and daylight saving time
//!
//! An expression names wall-clock times in the schedule's zone (IANA name, default UTC).
//!
//! - **Spring forward** (a wall-clock time does not exist), croner's rule: a *fixed-time*
//!   schedule (one second, one minute and one hour, none of them `*` or stepped, e.g.
//!   `30 2 * * *`) fires at the first instant after the gap, so a daily job does not lose its
//!   day: in Europe/Berlin on 2026-03-29 it fires at 03:00 CEST. Every other schedule
//!   (`*/15 * * * *`, `@hourly`, `30 1,2 * * *`) has no fire time inside the gap and carries on
//!   after it.
//! - **Fall back** (a wall-clock time happens twice): every schedule fires once per wall-clock
//!   time, at its first occurrence. croner would fire non-fixed schedules on both occurrences;
//!   the repeats are dropped here. So `*/15 * * * *` in Europe/Berlin on 2026-10-25 runs at
//!   02:45 CEST and next at 03:00 CET, 75 minutes later.

use std::time::Duration;

use chrono::{DateTime, LocalResult, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};

/// Why an expression or time zone was rejected. Every message names the expression as written,
/// and the zone where the zone is at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not 5 or 6 whitespace-separated fields (and not a macro).
    #[error(
        "cron expression {expression:?} has {found} fields; expected 5 \
         (minute hour day-of-month month day-of-week) or 6 (a leading second field)"
    )]
    FieldCount { expression: String, found: usize },
    /// `@reboot`, which has no time to compute.
    #[error(
        "cron expression {expression:?}: @reboot is not supported, a scheduled job needs a time \
         to fire at"
    )]
    Reboot { expression: String },
    /// An `@` word that is not one of the supported macros.
    #[error(
        "cron expression {expression:?} is not a known macro; expected @yearly, @annually, \
         @monthly, @weekly, @daily, @midnight or @hourly"
    )]
    UnknownMacro { expression: String },
    /// One field is malformed or out of range.
    #[error(
        "cron expression {expression:?}: {field} field {value:?} is invalid ({reason}); \
         allowed: {allowed}"
    )]
    InvalidField {
        expression: String,
        /// `second`, `minute`, `hour`, `day-of-month`, `month` or `day-of-week`.
        field: &'static str,
        /// The field as written.
        value: String,
        reason: String,
        /// What the field accepts.
        allowed: &'static str,
    },
    /// croner rejected the expression and no single field is to blame.
    #[error("cron expression {expression:?} is invalid: {reason}")]
    Invalid { expression: String, reason: String },
    /// Every field is valid but no date matches them all, e.g. `0 0 30 2 *`.
    #[error("cron expression {expression:?} never fires: no date matches it")]
    NeverFires { expression: String },
    /// The zone is not an IANA time zone name known to chrono-tz.
    #[error(
        "unknown time zone {zone:?} for cron expression {expression:?}; expected an IANA name \
         such as \"Europe/Berlin\" or \"UTC\""
    )]
    UnknownTimeZone { expression: String, zone: String },
}

/// A parsed crontab expression bound to a time zone; computes fire times as UTC instants.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    zone: Tz,
    cron: Cron,
}

impl Schedule {
    /// Parses `expr` (see the module documentation for the accepted syntax) in the IANA zone
    /// `time_zone`, UTC when `None`. Fails with an [`Error`] naming the expression for a wrong
    /// field count, an out-of-range or malformed field, `@reboot`, an unknown macro, an
    /// expression that can never fire, or an unknown time zone.
    pub fn parse(expr: &str, time_zone: Option<&str>) -> Result<Schedule, Error> {
        let cron = parse_expression(expr)?;
        let zone = parse_zone(expr, time_zone)?;
        let schedule = Schedule {
            expression: expr.to_owned(),
            zone,
            cron,
        };
        // A valid pattern fires within a few years of any instant (leap days at worst), so one
        // search tells a real schedule from an impossible one.
        match schedule.next_after(DateTime::<Utc>::UNIX_EPOCH) {
            Some(_) => Ok(schedule),
            None => Err(Error::NeverFires {
                expression: expr.to_owned(),
            }),
        }
    }

    /// The expression exactly as given to [`Schedule::parse`].
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The zone whose wall clock the expression is read in (UTC unless one was given).
    pub fn time_zone(&self) -> Tz {
        self.zone
    }

    /// First fire time strictly after `after`, following the daylight-saving rules in the module
    /// documentation. `None` only when the search leaves croner's range (past the year 5000).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = after;
        loop {
            let local = from.with_timezone(&self.zone);
            let found = self
                .cron
                .find_next_occurrence(&local, false)
                .ok()?
                .with_timezone(&Utc);
            match repeated_span(self.zone, found) {
                None => return Some(found),
                // Everything up to the end of the repeated span is a repeat, so resume just
                // before its end: croner's exclusive search then starts on the end itself.
                Some((_, end)) => from = end.checked_sub_signed(TimeDelta::seconds(1))?,
            }
        }
    }

    /// The most recent fire time in (last_run_or_None, now] that is no older than `deadline`
    /// before `now`: the run missed while the daemon was down that should run once at start.
    /// None when there is none.
    ///
    /// Several missed fire times yield only the most recent one. A fire time exactly `deadline`
    /// before `now` still counts. A deadline too large to subtract from `now` means no limit. The
    /// cost does not depend on the length of the outage: the search runs backwards from `now`.
    pub fn missed_run(
        &self,
        last: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        deadline: Duration,
    ) -> Option<DateTime<Utc>> {
        let latest = self.latest_at_or_before(now)?;
        let oldest_allowed = TimeDelta::from_std(deadline)
            .ok()
            .and_then(|d| now.checked_sub_signed(d));
        if oldest_allowed.is_some_and(|oldest| latest < oldest) {
            return None;
        }
        if last.is_some_and(|last| latest <= last) {
            return None;
        }
        Some(latest)
    }

    /// The last fire time at or before `at`, by the same rules as [`Schedule::next_after`].
    fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut until = at;
        let mut inclusive = true;
        loop {
            let local = until.with_timezone(&self.zone);
            let found = self
                .cron
                .find_previous_occurrence(&local, inclusive)
                .ok()?
                .with_timezone(&Utc);
            match repeated_span(self.zone, found) {
                None => return Some(found),
                // The first occurrence of that wall-clock time lies before the repeated span.
                Some((start, _)) => {
                    until = start;
                    inclusive = false;
                }
            }
        }
    }
}

/// If `instant` is the second occurrence of a wall-clock time that a fall-back repeats, the
/// absolute span `[start, end)` during which the clock re-runs those times.
fn repeated_span(zone: Tz, instant: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let wall = instant.with_timezone(&zone).naive_local();
    let LocalResult::Ambiguous(earlier, later) = zone.from_local_datetime(&wall) else {
        return None;
    };
    if later.with_timezone(&Utc) != instant {
        return None;
    }
    let start = transition_between(zone, earlier.timestamp(), later.timestamp())?;
    let shift = later.timestamp() - earlier.timestamp();
    Some((
        DateTime::from_timestamp(start, 0)?,
        DateTime::from_timestamp(start + shift, 0)?,
    ))
}

/// The first second in `(from, to]` carrying `to`'s UTC offset, given that `from` does not.
/// chrono-tz exposes no transition table, and the two are at most a DST shift apart, so a
/// bisection on offsets takes a dozen lookups.
fn transition_between(zone: Tz, from: i64, to: i64) -> Option<i64> {
    let target = offset_at(zone, to)?;
    let (mut lo, mut hi) = (from, to);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset_at(zone, mid)? == target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

fn offset_at(zone: Tz, timestamp: i64) -> Option<chrono::FixedOffset> {
    let utc = DateTime::from_timestamp(timestamp, 0)?;
    Some(utc.with_timezone(&zone).offset().fix())
}

fn parse_zone(expr: &str, time_zone: Option<&str>) -> Result<Tz, Error> {
    let Some(name) = time_zone else {
        return Ok(Tz::UTC);
    };
    name.parse().map_err(|_| Error::UnknownTimeZone {
        expression: expr.to_owned(),
        zone: name.to_owned(),
    })
}

/// What one position of the expression accepts.
struct Field {
    name: &'static str,
    allowed: &'static str,
    /// Names standing for numbers, the first for `first`.
    names: &'static [&'static str],
    first: usize,
    /// Letters croner gives a meaning of its own (`L`, `W`), passed through untouched.
    letters: &'static str,
}

const WEEKDAY_NAMES: &[&str] = &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
const MONTH_NAMES: &[&str] = &[
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

const SECOND: Field = Field::numeric("second", "0-59");
const MINUTE: Field = Field::numeric("minute", "0-59");
const HOUR: Field = Field::numeric("hour", "0-23");
const DAY_OF_MONTH: Field = Field {
    letters: "LW",
    ..Field::numeric("day-of-month", "1-31")
};
const MONTH: Field = Field {
    names: MONTH_NAMES,
    first: 1,
    ..Field::numeric("month", "1-12 or JAN-DEC")
};
const DAY_OF_WEEK: Field = Field {
    names: WEEKDAY_NAMES,
    letters: "L",
    ..Field::numeric("day-of-week", "0-7 or SUN-SAT, 0 and 7 both Sunday")
};

const FIVE_FIELDS: &[Field] = &[MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK];
const SIX_FIELDS: &[Field] = &[SECOND, MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK];

impl Field {
    const fn numeric(name: &'static str, allowed: &'static str) -> Field {
        Field {
            name,
            allowed,
            names: &[],
            first: 0,
            letters: "",
        }
    }

    /// The field with names replaced by numbers. croner would replace names anywhere in the
    /// expression (`MON` in the month field becoming January), so names are resolved here, per
    /// field, and any other word is refused.
    /// `expr` is the whole expression, for the error.
    fn translate(&self, expr: &str, text: &str) -> Result<String, Error> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if c.is_ascii_alphabetic() {
                let len = rest
                    .find(|c: char| !c.is_ascii_alphabetic())
                    .unwrap_or(rest.len());
                let (word, tail) = rest.split_at(len);
                let number = self
                    .translate_word(word, out.ends_with('-'))
                    .ok_or_else(|| Error::InvalidField {
                        expression: expr.to_owned(),
                        field: self.name,
                        value: text.to_owned(),
                        reason: format!("unknown name {word:?}"),
                        allowed: self.allowed,
                    })?;
                out.push_str(&number);
                rest = tail;
            } else {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        Ok(out)
    }

    /// The number (or croner letter) a name stands for; none for an unknown name.
    fn translate_word(&self, word: &str, ends_range: bool) -> Option<String> {
        let upper = word.to_ascii_uppercase();
        if let Some(index) = self.names.iter().position(|name| *name == upper) {
            // `FRI-SUN` must read as 5-7: a range cannot run from 5 down to 0.
            let number = if upper == "SUN" && ends_range {
                7
            } else {
                self.first + index
            };
            return Some(number.to_string());
        }
        if !self.letters.is_empty() && upper.chars().all(|c| self.letters.contains(c)) {
            return Some(upper);
        }
        None
    }
}

fn parse_expression(expr: &str) -> Result<Cron, Error> {
    let trimmed = expr.trim();
    let text = if trimmed.starts_with('@') {
        expand_macro(expr, trimmed)?
    } else {
        trimmed
    };
    let written: Vec<&str> = text.split_whitespace().collect();
    let specs = match written.len() {
        5 => FIVE_FIELDS,
        6 => SIX_FIELDS,
        found => {
            return Err(Error::FieldCount {
                expression: expr.to_owned(),
                found,
            });
        }
    };
    let normalized = normalize(expr, specs, &written)?;
    parser()
        .parse(&normalized.join(" "))
        .map_err(|error| diagnose(expr, specs, &written, &normalized, &error))
}

fn expand_macro(expr: &str, name: &str) -> Result<&'static str, Error> {
    const MACROS: &[(&str, &str)] = &[
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ];
    if name.eq_ignore_ascii_case("@reboot") {
        return Err(Error::Reboot {
            expression: expr.to_owned(),
        });
    }
    MACROS
        .iter()
        .find(|(macro_name, _)| name.eq_ignore_ascii_case(macro_name))
        .map(|(_, fields)| *fields)
        .ok_or_else(|| Error::UnknownMacro {
            expression: expr.to_owned(),
        })
}

/// The fields as croner should see them: names resolved, and `*/1` in the day fields written
/// as `*`. Kubernetes (robfig/cron) and Vixie cron both treat `*/1` as unrestricted there,
/// croner only a bare `*`, which would turn `0 0 */1 * 1` from "Mondays" into "every day".
fn normalize(expr: &str, specs: &[Field], written: &[&str]) -> Result<Vec<String>, Error> {
    specs
        .iter()
        .zip(written)
        .map(|(spec, text)| {
            let translated = spec.translate(expr, text)?;
            let is_day_field = spec.name == DAY_OF_MONTH.name || spec.name == DAY_OF_WEEK.name;
            Ok(if is_day_field && translated == "*/1" {
                "*".to_owned()
            } else {
                translated
            })
        })
        .collect()
}

/// Sloppy ranges accept `5/15` as `5-59/15`, as Kubernetes does. Seconds stay optional so that
/// a sixth field is read as leading seconds; a seventh (year) field is refused.
fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .sloppy_ranges(true)
        .build()
}

/// Blames the first field that croner rejects on its own, since croner's messages ("Number out
/// of bounds.") do not say where.
fn diagnose(
    expr: &str,
    specs: &[Field],
    written: &[&str],
    normalized: &[String],
    error: &CronError,
) -> Error {
    let culprit = (0..normalized.len()).find(|&index| {
        let alone: Vec<&str> = (0..normalized.len())
            .map(|i| if i == index { &*normalized[i] } else { "*" })
            .collect();
        parser().parse(&alone.join(" ")).is_err()
    });
    match culprit {
        Some(index) => Error::InvalidField {
            expression: expr.to_owned(),
            field: specs[index].name,
            value: written[index].to_owned(),
            reason: croner_reason(error),
            allowed: specs[index].allowed,
        },
        None => Error::Invalid {
            expression: expr.to_owned(),
            reason: croner_reason(error),
        },
    }
}

fn croner_reason(error: &CronError) -> String {
    let text = match error {
        CronError::ComponentError(message)
        | CronError::InvalidPattern(message)
        | CronError::IllegalCharacters(message) => message.clone(),
        other => other.to_string(),
    };
    text.trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("bad test instant {text}: {e}"))
            .with_timezone(&Utc)
    }

    fn schedule(expr: &str, zone: Option<&str>) -> Schedule {
        Schedule::parse(expr, zone).unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    const HOUR_SECS: u64 = 3600;
    const DAY_SECS: u64 = 24 * HOUR_SECS;

    /// (expression, zone, after, expected next fire). Weekdays: 2026-11-20 is a Friday,
    /// 2026-11-21 Saturday, 2026-11-22 Sunday, 2026-11-23 Monday, 2026-12-13 Sunday.
    /// Europe/Berlin: 2026-03-29 01:00Z jumps 02:00 CET -> 03:00 CEST; 2026-10-25 01:00Z goes
    /// back 03:00 CEST -> 02:00 CET.
    #[rustfmt::skip]
    const NEXT: &[(&str, Option<&str>, &str, &str)] = &[
        // Weekdays only: Friday after the run -> Monday; Saturday -> Monday.
        ("0 3 * * 1-5", None, "2026-11-20T04:00:00Z", "2026-11-23T03:00:00Z"),
        ("0 3 * * 1-5", None, "2026-11-21T12:00:00Z", "2026-11-23T03:00:00Z"),
        ("0 3 * * 1-5", None, "2026-11-20T02:59:59Z", "2026-11-20T03:00:00Z"),
        // Strictly after: a fire time equal to `after` is not returned.
        ("0 3 * * 1-5", None, "2026-11-20T03:00:00Z", "2026-11-23T03:00:00Z"),
        // Sunday as 0 and as 7.
        ("0 0 * * 0", None, "2026-11-20T04:00:00Z", "2026-11-22T00:00:00Z"),
        ("0 0 * * 7", None, "2026-11-20T04:00:00Z", "2026-11-22T00:00:00Z"),
        ("0 0 * * SUN", None, "2026-11-20T04:00:00Z", "2026-11-22T00:00:00Z"),
        // Both day fields restricted: the 13th OR any Friday.
        ("0 0 13 * 5", None, "2026-11-20T04:00:00Z", "2026-11-27T00:00:00Z"),
        ("0 0 13 * 5", None, "2026-12-11T00:00:00Z", "2026-12-13T00:00:00Z"),
        ("0 0 13 * 5", None, "2026-12-13T00:00:00Z", "2026-12-18T00:00:00Z"),
        // `*/1` is unrestricted like `*`, so only the weekday restricts: Mondays.
        ("0 0 */1 * 1", None, "2026-11-20T04:00:00Z", "2026-11-23T00:00:00Z"),
        ("0 0 ? * 1", None, "2026-11-20T04:00:00Z", "2026-11-23T00:00:00Z"),
        // Only the day of month restricts when the weekday is `*`.
        ("0 0 13 * *", None, "2026-11-20T04:00:00Z", "2026-12-13T00:00:00Z"),
        ("*/15 * * * *", None, "2026-11-20T04:07:30Z", "2026-11-20T04:15:00Z"),
        ("*/15 * * * *", None, "2026-11-20T04:15:00Z", "2026-11-20T04:30:00Z"),
        ("*/15 * * * *", None, "2026-11-20T23:50:00Z", "2026-11-21T00:00:00Z"),
        ("5/15 * * * *", None, "2026-11-20T04:36:00Z", "2026-11-20T04:50:00Z"),
        ("5/15 * * * *", None, "2026-11-20T04:50:00Z", "2026-11-20T05:05:00Z"),
        // Berlin, the days before and after spring forward (CET = UTC+1, CEST = UTC+2).
        ("30 2 * * *", Some("Europe/Berlin"), "2026-03-27T12:00:00Z", "2026-03-28T01:30:00Z"),
        // 02:30 does not exist on 2026-03-29; the fixed-time job runs at 03:00 CEST.
        ("30 2 * * *", Some("Europe/Berlin"), "2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z"),
        ("30 2 * * *", Some("Europe/Berlin"), "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"),
        // A non-fixed schedule has nothing in the gap: 01:45 CET, then 03:00 CEST.
        ("*/15 * * * *", Some("Europe/Berlin"), "2026-03-29T00:45:00Z", "2026-03-29T01:00:00Z"),
        // 01:30 CET is 00:30Z; 02:30 does not exist; 01:30 CEST on the 30th is 23:30Z on the 29th.
        ("30 1,2 * * *", Some("Europe/Berlin"), "2026-03-29T00:30:00Z", "2026-03-29T23:30:00Z"),
        // Fall back: 02:30 happens at 00:30Z (CEST) and 01:30Z (CET); only the first fires.
        ("30 2 * * *", Some("Europe/Berlin"), "2026-10-24T23:00:00Z", "2026-10-25T00:30:00Z"),
        ("30 2 * * *", Some("Europe/Berlin"), "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"),
        ("30 2 * * *", Some("Europe/Berlin"), "2026-10-25T01:00:00Z", "2026-10-26T01:30:00Z"),
        // Non-fixed schedules drop the repeated hour too: 02:45 CEST, then 03:00 CET.
        ("*/15 * * * *", Some("Europe/Berlin"), "2026-10-25T00:45:00Z", "2026-10-25T02:00:00Z"),
        ("*/15 * * * *", Some("Europe/Berlin"), "2026-10-25T01:20:00Z", "2026-10-25T02:00:00Z"),
        ("0 * * * *", Some("Europe/Berlin"), "2026-10-25T00:00:00Z", "2026-10-25T02:00:00Z"),
        ("30 2,14 * * *", Some("Europe/Berlin"), "2026-10-25T00:30:00Z", "2026-10-25T13:30:00Z"),
        // A zone west of UTC: 09:00 EST is 14:00Z.
        ("0 9 * * *", Some("America/New_York"), "2026-11-20T00:00:00Z", "2026-11-20T14:00:00Z"),
        ("@daily", None, "2026-11-20T04:00:00Z", "2026-11-21T00:00:00Z"),
        ("@midnight", None, "2026-11-20T04:00:00Z", "2026-11-21T00:00:00Z"),
        ("@hourly", None, "2026-11-20T04:00:00Z", "2026-11-20T05:00:00Z"),
        ("@hourly", None, "2026-11-20T04:59:59Z", "2026-11-20T05:00:00Z"),
        ("@weekly", None, "2026-11-20T04:00:00Z", "2026-11-22T00:00:00Z"),
        ("@weekly", None, "2026-11-22T00:00:00Z", "2026-11-29T00:00:00Z"),
        ("@monthly", None, "2026-11-20T04:00:00Z", "2026-12-01T00:00:00Z"),
        ("@yearly", None, "2026-11-20T04:00:00Z", "2027-01-01T00:00:00Z"),
        ("@annually", None, "2026-11-20T04:00:00Z", "2027-01-01T00:00:00Z"),
        ("@DAILY", None, "2026-11-20T04:00:00Z", "2026-11-21T00:00:00Z"),
        ("@daily", Some("Europe/Berlin"), "2026-11-20T04:00:00Z", "2026-11-20T23:00:00Z"),
        // Six fields: the first is seconds.
        ("30 */5 * * * *", None, "2026-11-20T04:00:00Z", "2026-11-20T04:00:30Z"),
        ("30 */5 * * * *", None, "2026-11-20T04:00:30Z", "2026-11-20T04:05:30Z"),
        ("0 0 3 * * 1-5", None, "2026-11-20T04:00:00Z", "2026-11-23T03:00:00Z"),
        // Names, in either case.
        ("0 9 * * mon-fri", None, "2026-11-20T09:00:00Z", "2026-11-23T09:00:00Z"),
        ("0 9 * * MON-FRI", None, "2026-11-20T08:00:00Z", "2026-11-20T09:00:00Z"),
        ("0 0 * * FRI-SUN", None, "2026-11-22T00:00:00Z", "2026-11-27T00:00:00Z"),
        ("0 0 1 jan *", None, "2026-11-20T04:00:00Z", "2027-01-01T00:00:00Z"),
        // The 31st skips the months without one.
        ("0 0 31 * *", None, "2026-11-01T00:00:00Z", "2026-12-31T00:00:00Z"),
        ("0 0 31 * *", None, "2027-01-31T00:00:00Z", "2027-03-31T00:00:00Z"),
        ("0 0 31 * *", None, "2026-03-31T00:00:00Z", "2026-05-31T00:00:00Z"),
        // Leap day.
        ("0 0 29 2 *", None, "2026-11-20T04:00:00Z", "2028-02-29T00:00:00Z"),
        // Sub-second `after`.
        ("* * * * *", None, "2026-11-20T04:00:00.500Z", "2026-11-20T04:01:00Z"),
    ];

    #[test]
    fn next_after_matches_hand_verified_table() {
        let mut failures = Vec::new();
        for &(expr, zone, after, expected) in NEXT {
            let got = schedule(expr, zone).next_after(utc(after));
            if got != Some(utc(expected)) {
                failures.push(format!(
                    "{expr:?} in {zone:?} after {after}: expected {expected}, got {got:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn accessors_return_what_was_parsed() {
        let s = schedule(" 0 9 * * mon-fri ", Some("Europe/Berlin"));
        assert_eq!(s.expression(), " 0 9 * * mon-fri ");
        assert_eq!(s.time_zone(), chrono_tz::Europe::Berlin);
        assert_eq!(schedule("@daily", None).time_zone(), Tz::UTC);
    }

    /// (expression, zone, a fragment the message must contain).
    #[rustfmt::skip]
    const REJECTED: &[(&str, Option<&str>, &str)] = &[
        ("0 3 * *", None, "has 4 fields"),
        ("0 0 3 * * 1 2026", None, "has 7 fields"),
        ("", None, "has 0 fields"),
        ("61 * * * *", None, "minute field \"61\""),
        ("0 24 * * *", None, "hour field \"24\""),
        ("0 0 32 * *", None, "day-of-month field \"32\""),
        ("0 0 0 * *", None, "day-of-month field \"0\""),
        ("0 0 * 13 *", None, "month field \"13\""),
        ("0 0 * * 8", None, "day-of-week field \"8\""),
        ("60 0 0 * * *", None, "second field \"60\""),
        ("0 0 * * MOO", None, "unknown name \"MOO\""),
        // Names belong to their own field only.
        ("0 0 * MON *", None, "month field \"MON\""),
        ("MON * * * *", None, "minute field \"MON\""),
        ("*/0 * * * *", None, "minute field \"*/0\""),
        ("@reboot", None, "@reboot is not supported"),
        ("@fortnightly", None, "not a known macro"),
        ("0 0 30 2 *", None, "never fires"),
        ("0 0 31 4,6,9,11 *", None, "never fires"),
        ("0 3 * * *", Some("Mars/Olympus"), "unknown time zone \"Mars/Olympus\""),
        ("0 3 * * *", Some(""), "unknown time zone \"\""),
    ];

    #[test]
    fn rejects_invalid_expressions_and_zones_naming_them() {
        for &(expr, zone, fragment) in REJECTED {
            let message = match Schedule::parse(expr, zone) {
                Ok(_) => panic!("{expr:?} in {zone:?} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(message.contains(fragment), "{expr:?}: {message}");
            assert!(
                message.contains(&format!("{expr:?}")),
                "message does not name {expr:?}: {message}"
            );
        }
    }

    #[test]
    fn error_variants_carry_the_details() {
        assert!(matches!(
            Schedule::parse("0 3 * *", None),
            Err(Error::FieldCount { found: 4, .. })
        ));
        assert!(matches!(
            Schedule::parse("61 * * * *", None),
            Err(Error::InvalidField {
                field: "minute",
                ..
            })
        ));
        assert!(matches!(
            Schedule::parse("@reboot", None),
            Err(Error::Reboot { .. })
        ));
        assert!(matches!(
            Schedule::parse("0 3 * * *", Some("Mars/Olympus")),
            Err(Error::UnknownTimeZone { zone, .. }) if zone == "Mars/Olympus"
        ));
    }

    /// (expression, zone, last run, now, deadline in seconds, expected missed run).
    type MissedCase = (
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
        u64,
        Option<&'static str>,
    );

    #[rustfmt::skip]
    const MISSED: &[MissedCase] = &[
        // Down over today's 03:00, back within the deadline.
        ("0 3 * * *", None, Some("2026-11-19T03:00:00Z"), "2026-11-20T03:10:00Z", HOUR_SECS, Some("2026-11-20T03:00:00Z")),
        // Same outage, but 03:00 is older than a five-minute deadline.
        ("0 3 * * *", None, Some("2026-11-19T03:00:00Z"), "2026-11-20T03:10:00Z", 300, None),
        // Already ran at 03:00: nothing new since.
        ("0 3 * * *", None, Some("2026-11-20T03:00:00Z"), "2026-11-20T03:10:00Z", HOUR_SECS, None),
        ("0 3 * * *", None, Some("2026-11-20T03:00:00Z"), "2026-11-21T02:59:59Z", DAY_SECS, None),
        // Five days down: only the most recent of the five missed runs.
        ("0 3 * * *", None, Some("2026-11-15T03:00:00Z"), "2026-11-20T05:00:00Z", 7 * DAY_SECS, Some("2026-11-20T03:00:00Z")),
        // Never ran before.
        ("0 3 * * *", None, None, "2026-11-20T03:10:00Z", HOUR_SECS, Some("2026-11-20T03:00:00Z")),
        // The bounds are inclusive: a fire time equal to `now`, or exactly `deadline` old.
        ("0 3 * * *", None, None, "2026-11-20T03:00:00Z", 0, Some("2026-11-20T03:00:00Z")),
        ("0 3 * * *", None, None, "2026-11-20T04:00:00Z", HOUR_SECS, Some("2026-11-20T03:00:00Z")),
        ("0 3 * * *", None, None, "2026-11-20T04:00:01Z", HOUR_SECS, None),
        // Over a weekend with weekday runs: Friday's run is the most recent.
        ("0 3 * * 1-5", None, Some("2026-11-19T03:00:00Z"), "2026-11-22T12:00:00Z", 3 * DAY_SECS, Some("2026-11-20T03:00:00Z")),
        // A deadline too large to subtract means no limit.
        ("@yearly", None, Some("2020-06-01T00:00:00Z"), "2026-11-20T00:00:00Z", u64::MAX, Some("2026-01-01T00:00:00Z")),
        // Years of downtime cost nothing extra even for an every-second schedule.
        ("* * * * * *", None, Some("2020-01-01T00:00:00Z"), "2026-11-20T04:00:00.250Z", 365 * DAY_SECS, Some("2026-11-20T04:00:00Z")),
        // Fall back: 02:30 CEST (00:30Z) was the run; 02:30 CET (01:30Z) is a repeat.
        ("30 2 * * *", Some("Europe/Berlin"), Some("2026-10-24T00:30:00Z"), "2026-10-25T01:45:00Z", 2 * HOUR_SECS, Some("2026-10-25T00:30:00Z")),
        ("30 2 * * *", Some("Europe/Berlin"), Some("2026-10-24T00:30:00Z"), "2026-10-25T01:45:00Z", 1800, None),
        // Spring forward: the 02:30 run moved to 03:00 CEST (01:00Z).
        ("30 2 * * *", Some("Europe/Berlin"), Some("2026-03-28T01:30:00Z"), "2026-03-29T01:05:00Z", HOUR_SECS, Some("2026-03-29T01:00:00Z")),
    ];

    #[test]
    fn missed_run_finds_the_most_recent_run_within_the_deadline() {
        let mut failures = Vec::new();
        for &(expr, zone, last, now, deadline, expected) in MISSED {
            let got = schedule(expr, zone).missed_run(
                last.map(utc),
                utc(now),
                Duration::from_secs(deadline),
            );
            if got != expected.map(utc) {
                failures.push(format!(
                    "{expr:?} in {zone:?}, last {last:?}, now {now}, deadline {deadline}s: \
                     expected {expected:?}, got {got:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// The backward search behind `missed_run` must agree with `next_after` on which instants are
    /// fire times, including across both DST transitions.
    #[test]
    fn missed_run_agrees_with_next_after_across_dst() {
        let windows = [
            ("2026-03-28T22:00:00Z", "2026-03-29T04:00:00Z"),
            ("2026-10-24T22:00:00Z", "2026-10-25T04:00:00Z"),
        ];
        let expressions = [
            "30 2 * * *",
            "0 2 * * *",
            "*/15 * * * *",
            "0 * * * *",
            "30 1,2 * * *",
            "15 30 2 * * *",
            "*/20 * * * * *",
        ];
        let unbounded = Duration::from_secs(u64::MAX);
        for expr in expressions {
            let s = schedule(expr, Some("Europe/Berlin"));
            for (from, to) in windows {
                let mut previous = s.missed_run(None, utc(from), unbounded);
                let mut fire = s.next_after(utc(from)).expect("fires");
                while fire <= utc(to) {
                    let just_before = fire - TimeDelta::milliseconds(1);
                    assert_eq!(
                        s.missed_run(None, fire, unbounded),
                        Some(fire),
                        "{expr} {fire}"
                    );
                    assert_eq!(
                        s.missed_run(None, just_before, unbounded),
                        previous,
                        "{expr} before {fire}"
                    );
                    previous = Some(fire);
                    fire = s.next_after(fire).expect("fires");
                }
            }
        }
    }
}

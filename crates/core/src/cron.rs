//! Cron schedules as Kubernetes reads a CronJob's `spec.schedule`: five fields (minute, hour,
//! day of month, month, day of week; Sunday is 0), each `*`, `?`, a value, a range, a list, or
//! a step (`*/15`, `1-30/5`, `5/10`), with month and weekday names, and the `@hourly`-style
//! descriptors. When both day fields are restricted a day matches either of them; when one
//! is a bare `*` or `?` a day must match both (a stepped `*/2` counts as restricted, as in the
//! parser Kubernetes uses).
//!
//! Times are walked in the civil time of a zone, so `0 9 * * *` in `Europe/Paris` stays at nine
//! o'clock across daylight saving changes; a time that a change skips is not run that day, and
//! one it repeats runs once, unless the schedule runs every hour (then both hours run).

use jiff::civil::{DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

/// A parsed five-field schedule: one bit per value each field allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// The day-of-month or day-of-week field is a bare `*` or `?`: days must match both.
    any_day: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const WEEKDAY: Field = Field {
    name: "day of week",
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl Field {
    fn value(&self, s: &str) -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            return Ok(self.min + i as u32);
        }
        let v: u32 = s
            .parse()
            .map_err(|_| format!("{:?} is not a number in the {} field", s, self.name))?;
        if v < self.min || v > self.max {
            return Err(format!(
                "{v} is outside the {} field's {}-{}",
                self.name, self.min, self.max
            ));
        }
        Ok(v)
    }

    /// The bits one field allows, and whether it holds a bare star (`*` or `?`, no step).
    fn parse(&self, text: &str) -> Result<(u64, bool), String> {
        let mut bits = 0u64;
        let mut star = false;
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => {
                    let step: u32 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        format!("{s:?} is not a positive step in the {} field", self.name)
                    })?;
                    (r, Some(step))
                }
                None => (part, None),
            };
            let (lo, hi) = if range == "*" || range == "?" {
                star |= step.unwrap_or(1) <= 1;
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                (self.value(a)?, self.value(b)?)
            } else {
                let v = self.value(range)?;
                // `5/10`: from 5 to the end, every 10.
                (v, if step.is_some() { self.max } else { v })
            };
            if lo > hi {
                return Err(format!(
                    "the range {range:?} in the {} field runs backwards",
                    self.name
                ));
            }
            let step = step.unwrap_or(1);
            bits |= (lo..=hi).step_by(step as usize).fold(0, |b, v| b | 1 << v);
        }
        Ok((bits, star))
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let expanded = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            _ if s.starts_with('@') => {
                return Err(format!(
                    "{s:?} is not a known descriptor (@yearly, @monthly, @weekly, @daily, @hourly)"
                ))
            }
            _ => s,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            ));
        };
        let (minutes, _) = MINUTE.parse(minute)?;
        let (hours, _) = HOUR.parse(hour)?;
        let (days, day_star) = DAY.parse(day)?;
        let (months, _) = MONTH.parse(month)?;
        let (weekdays, weekday_star) = WEEKDAY.parse(weekday)?;
        Ok(Schedule {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            any_day: day_star || weekday_star,
        })
    }
}

const EVERY_HOUR: u32 = (1 << 24) - 1;

/// How far ahead [`Schedule::next_after`] looks before deciding a schedule never fires
/// (`0 0 30 2 *`).
const HORIZON_YEARS: i16 = 5;

impl Schedule {
    fn day_matches(&self, dt: DateTime) -> bool {
        let dom = self.days & (1 << dt.day()) != 0;
        let dow = self.weekdays & (1 << dt.weekday().to_sunday_zero_offset()) != 0;
        if self.any_day {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first time after `after` that the schedule fires, read in `tz`; `None` if it
    /// never does within five years.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone());
        let mut t = start
            .datetime()
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?;
        let end = start.year().saturating_add(HORIZON_YEARS);
        while t.year() <= end {
            if self.months & (1 << t.month()) == 0 {
                t = t
                    .date()
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .to_datetime(Time::midnight());
            } else if !self.day_matches(t) {
                t = t.date().tomorrow().ok()?.to_datetime(Time::midnight());
            } else if self.hours & (1 << t.hour()) == 0 {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
            } else if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
            } else {
                // A civil time the zone skips (spring forward) is not run; one it repeats
                // (fall back) runs at its first occurrence only, unless every hour runs.
                let ambiguous = tz.to_ambiguous_zoned(t);
                let repeated = ambiguous.is_ambiguous();
                let at: Zoned = ambiguous.clone().earlier().ok()?;
                if at.datetime() == t && at.timestamp() > after {
                    return Some(at.timestamp());
                }
                if repeated && self.hours == EVERY_HOUR {
                    let later = ambiguous.later().ok()?;
                    if later.timestamp() > after {
                        return Some(later.timestamp());
                    }
                }
                t = t.checked_add(1.minute()).ok()?;
            }
        }
        None
    }

    /// The most recent time the schedule fired in `(since, until]`, and how many times it
    /// fired there (counting stops at `cap`).
    pub fn last_between(
        &self,
        since: Timestamp,
        until: Timestamp,
        tz: &TimeZone,
        cap: usize,
    ) -> (Option<Timestamp>, usize) {
        let (mut last, mut n) = (None, 0);
        let mut t = since;
        while let Some(next) = self.next_after(t, tz) {
            if next > until {
                break;
            }
            last = Some(next);
            n += 1;
            t = next;
            if n == cap {
                // Past the cap only the latest matters: walk on from the shortest window
                // before `until` (an hour, doubled) that holds a time the schedule fires.
                let mut hours = 1;
                while let Ok(from) = until.checked_sub(jiff::SignedDuration::from_hours(hours)) {
                    if from <= t {
                        break;
                    }
                    if self.next_after(from, tz).is_some_and(|x| x <= until) {
                        t = from;
                        break;
                    }
                    hours *= 2;
                }
            }
        }
        (last, n.min(cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(schedule: &str, after: &str) -> String {
        let s: Schedule = schedule.parse().unwrap();
        s.next_after(at(after), &TimeZone::UTC)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn fields_steps_ranges_and_names() {
        assert_eq!(
            next("*/1 * * * *", "2026-12-06T10:00:30Z"),
            "2026-12-06T10:01:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-12-06T10:01:00Z"),
            "2026-12-06T10:15:00Z"
        );
        assert_eq!(
            next("5/20 * * * *", "2026-12-06T10:26:00Z"),
            "2026-12-06T10:45:00Z"
        );
        assert_eq!(
            next("0 9-17/4 * * *", "2026-12-06T10:00:00Z"),
            "2026-12-06T13:00:00Z"
        );
        assert_eq!(
            next("30 2 * * mon-FRI", "2026-12-06T00:00:00Z"),
            "2026-12-07T02:30:00Z"
        );
        assert_eq!(
            next("0 0 1 jan,jul *", "2026-12-06T00:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("@hourly", "2026-12-06T10:59:59Z"),
            "2026-12-06T11:00:00Z"
        );
        assert_eq!(
            next("@weekly", "2026-12-06T00:00:00Z"),
            "2026-12-13T00:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-12-06T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(next("0 0 30 2 *", "2026-12-06T00:00:00Z"), "");
    }

    #[test]
    fn restricted_day_fields_match_either_a_bare_star_makes_them_both() {
        // The 13th or any Friday.
        assert_eq!(
            next("0 0 13 * 5", "2026-12-06T00:00:00Z"),
            "2026-12-11T00:00:00Z"
        );
        // Fridays only: `*` in day of month.
        assert_eq!(
            next("0 0 * * 5", "2026-12-11T00:00:00Z"),
            "2026-12-18T00:00:00Z"
        );
        // `*/2` is a restriction: odd days or Fridays.
        assert_eq!(
            next("0 0 */2 * 5", "2026-12-06T00:00:00Z"),
            "2026-12-07T00:00:00Z"
        );
        assert_eq!(
            next("0 0 */2 * 5", "2026-12-11T00:00:00Z"),
            "2026-12-13T00:00:00Z"
        );
        assert_eq!(
            next("0 0 */2 * 5", "2026-12-17T00:00:00Z"),
            "2026-12-18T00:00:00Z"
        );
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (s, want) in [
            ("* * * *", "expected 5 fields"),
            ("60 * * * *", "outside the minute field's 0-59"),
            ("* * * * 7", "outside the day of week field's 0-6"),
            ("*/0 * * * *", "not a positive step"),
            ("5-1 * * * *", "runs backwards"),
            ("@every 5m", "not a known descriptor"),
            ("x * * * *", "not a number in the minute field"),
        ] {
            let err = s.parse::<Schedule>().unwrap_err();
            assert!(err.contains(want), "{s}: {err}");
        }
    }

    #[test]
    fn civil_time_holds_across_daylight_saving() {
        let paris = TimeZone::get("Europe/Paris").unwrap();
        let s: Schedule = "0 9 * * *".parse().unwrap();
        // 09:00 in Paris is 08:00Z in winter and 07:00Z in summer.
        let t = s.next_after(at("2026-03-28T12:00:00Z"), &paris).unwrap();
        assert_eq!(t.to_string(), "2026-03-29T07:00:00Z");
        // 02:30 does not exist on 2026-03-29 in Paris: that day is skipped.
        let s: Schedule = "30 2 * * *".parse().unwrap();
        let t = s.next_after(at("2026-03-28T12:00:00Z"), &paris).unwrap();
        assert_eq!(t.to_string(), "2026-03-30T00:30:00Z");
        // 02:30 happens twice on 2026-10-25: it runs once.
        let first = s.next_after(at("2026-10-24T12:00:00Z"), &paris).unwrap();
        let second = s.next_after(first, &paris).unwrap();
        assert_eq!(first.to_string(), "2026-10-25T00:30:00Z");
        assert_eq!(second.to_string(), "2026-10-26T01:30:00Z");
        // Every hour runs both of the repeated hour's starts.
        let s: Schedule = "0 * * * *".parse().unwrap();
        let t = s.next_after(at("2026-10-25T00:00:00Z"), &paris).unwrap();
        assert_eq!(t.to_string(), "2026-10-25T01:00:00Z");
        let t = s.next_after(t, &paris).unwrap();
        assert_eq!(t.to_string(), "2026-10-25T02:00:00Z");
    }

    #[test]
    fn the_latest_of_many_missed_times_is_found() {
        let s: Schedule = "*/1 * * * *".parse().unwrap();
        let (last, n) = s.last_between(
            at("2026-12-01T00:00:00Z"),
            at("2026-12-06T10:00:30Z"),
            &TimeZone::UTC,
            101,
        );
        assert_eq!(last.unwrap().to_string(), "2026-12-06T10:00:00Z");
        assert_eq!(n, 101);
        let (last, n) = s.last_between(
            at("2026-12-06T09:57:00Z"),
            at("2026-12-06T10:00:30Z"),
            &TimeZone::UTC,
            101,
        );
        assert_eq!(last.unwrap().to_string(), "2026-12-06T10:00:00Z");
        assert_eq!(n, 3);
    }
}

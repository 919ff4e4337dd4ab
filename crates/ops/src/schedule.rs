//! Cron schedules (parsed by `croner`), the schedule derived from an RPO
//! when a plan names none, and the question every scheduler asks: "did a
//! slot of this schedule pass between two instants?".
//!
//! Times are [`jiff::Timestamp`]s; a schedule is evaluated in a time zone
//! (the daemon's `time-zone`), so "03:00" means 03:00 there.

use std::fmt;
use std::str::FromStr;

use croner::Cron;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Serialize, Serializer};

use crate::duration::Duration;

/// A parsed cron expression and its text.
#[derive(Clone)]
pub struct Schedule {
    text: String,
    cron: Cron,
}

impl Schedule {
    /// Five fields (minute hour day-of-month month day-of-week) or an alias
    /// (`@hourly`, `@daily`, `@weekly`).
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        if !text.starts_with('@') && text.split_whitespace().count() != 5 {
            return Err(format!(
                "{} fields, 5 expected",
                text.split_whitespace().count()
            ));
        }
        let cron = Cron::from_str(text).map_err(|e| e.to_string())?;
        Ok(Schedule {
            text: text.to_string(),
            cron,
        })
    }

    /// The schedule a plan gets when it names none: the largest interval
    /// that fits into half the RPO and that cron can express evenly (a
    /// divisor of an hour or of a day), so a run that fails once can still
    /// be followed by one within the RPO. At most daily (at 03:00).
    pub fn from_rpo(rpo: Duration) -> Schedule {
        let half_min = (rpo.seconds() / 2 / 60).max(1);
        let text = if half_min < 60 {
            let step = [30, 20, 15, 12, 10, 6, 5, 4, 3, 2, 1]
                .into_iter()
                .find(|s| *s <= half_min)
                .unwrap_or(1);
            if step == 1 {
                "* * * * *".to_string()
            } else {
                format!("*/{step} * * * *")
            }
        } else {
            let half_h = half_min / 60;
            match [12, 8, 6, 4, 3, 2, 1].into_iter().find(|s| *s <= half_h) {
                _ if half_h >= 24 => "0 3 * * *".to_string(),
                Some(1) | None => "0 * * * *".to_string(),
                Some(step) => format!("0 */{step} * * *"),
            }
        };
        Schedule::parse(&text).expect("derived schedules are valid")
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first slot strictly after `after`, in `tz`.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let z = after.to_zoned(tz.clone());
        self.cron
            .find_next_occurrence(&z, false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The last slot at or before `at`, in `tz`.
    pub fn last_at_or_before(&self, at: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let z = at.to_zoned(tz.clone());
        self.cron
            .find_previous_occurrence(&z, true)
            .ok()
            .map(|z| z.timestamp())
    }

    /// Whether a slot lies in `(since, now]`; with no `since` (never done),
    /// always.
    pub fn due(&self, since: Option<Timestamp>, now: Timestamp, tz: &TimeZone) -> bool {
        match since {
            None => true,
            Some(s) => self.next_after(s, tz).is_some_and(|n| n <= now),
        }
    }

    /// The longest gap between two consecutive slots over the next week
    /// from `from` (what the schedule alone lets the data age to).
    pub fn max_interval(&self, from: Timestamp, tz: &TimeZone) -> Option<u64> {
        let end = from
            .checked_add(jiff::SignedDuration::from_hours(24 * 8))
            .ok()?;
        let mut prev = self.next_after(from, tz)?;
        let mut longest = 0i64;
        for _ in 0..20_000 {
            let next = self.next_after(prev, tz)?;
            longest = longest.max(next.as_second() - prev.as_second());
            if next > end {
                break;
            }
            prev = next;
        }
        Some(longest as u64)
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?})", self.text)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn derived_from_rpo() {
        for (rpo, want) in [
            ("1h", "*/30 * * * *"),
            ("15m", "*/6 * * * *"),
            ("1m", "* * * * *"),
            ("4h", "0 */2 * * *"),
            ("2h", "0 * * * *"),
            ("24h", "0 */12 * * *"),
            ("7d", "0 3 * * *"),
        ] {
            let s = Schedule::from_rpo(Duration::parse(rpo).unwrap());
            assert_eq!(s.as_str(), want, "rpo {rpo}");
        }
    }

    #[test]
    fn due_and_next() {
        let s = Schedule::parse("*/15 * * * *").unwrap();
        let tz = TimeZone::UTC;
        assert_eq!(
            s.next_after(ts("2026-01-01T10:07:00Z"), &tz),
            Some(ts("2026-01-01T10:15:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-01-01T10:15:00Z"), &tz),
            Some(ts("2026-01-01T10:30:00Z"))
        );
        assert!(!s.due(
            Some(ts("2026-01-01T10:00:00Z")),
            ts("2026-01-01T10:14:59Z"),
            &tz
        ));
        assert!(s.due(
            Some(ts("2026-01-01T10:00:00Z")),
            ts("2026-01-01T10:15:00Z"),
            &tz
        ));
        assert!(s.due(None, ts("2026-01-01T10:00:00Z"), &tz));
        assert_eq!(s.max_interval(ts("2026-01-01T10:07:00Z"), &tz), Some(900));
        assert!(Schedule::parse("* * *").is_err());
        assert!(Schedule::parse("61 * * * *").is_err());
    }
}

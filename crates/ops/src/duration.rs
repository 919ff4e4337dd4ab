//! Human durations in the config file (`"15m"`, `"1h"`, `"7d"`, `"1h30m"`)
//! and their display. Units: `s`, `m` (minutes), `h`, `d`, `w`.

use std::fmt;

/// A duration of whole seconds, as the config writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub u64);

impl Duration {
    pub fn seconds(self) -> u64 {
        self.0
    }

    pub fn from_secs(s: u64) -> Self {
        Duration(s)
    }

    /// Parses `1h`, `15m`, `90s`, `2d`, `1w`, or sums like `1h30m`.
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        if t.is_empty() {
            return None;
        }
        let mut total: u64 = 0;
        let mut num = String::new();
        for c in t.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let n: u64 = num.parse().ok()?;
            num.clear();
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                'w' => 7 * 86_400,
                _ => return None,
            };
            total = total.checked_add(n.checked_mul(unit)?)?;
        }
        if !num.is_empty() {
            return None; // a number without a unit
        }
        Some(Duration(total))
    }
}

/// The shortest exact form: `1h30m`, `2d`, `45s`; `0s` for zero.
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.0;
        if s == 0 {
            return write!(f, "0s");
        }
        for (unit, secs) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if s >= secs {
                write!(f, "{}{unit}", s / secs)?;
                s %= secs;
            }
        }
        Ok(())
    }
}

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (text, secs, shown) in [
            ("1h", 3600, "1h"),
            ("15m", 900, "15m"),
            ("1h30m", 5400, "1h30m"),
            ("2d", 172_800, "2d"),
            ("1w", 604_800, "7d"),
            ("90s", 90, "1m30s"),
        ] {
            let d = Duration::parse(text).unwrap();
            assert_eq!(d.seconds(), secs, "{text}");
            assert_eq!(d.to_string(), shown);
        }
        for bad in ["", "1", "h", "1x", "-1h", "1.5h"] {
            assert!(Duration::parse(bad).is_none(), "{bad:?}");
        }
    }
}

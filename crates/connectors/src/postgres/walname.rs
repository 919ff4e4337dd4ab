//! WAL file names and positions.
//!
//! A segment is named `TTTTTTTTLLLLLLLLSSSSSSSS` (timeline, "log" number and
//! segment within the log, upper-case hex); the segment number counts
//! `2^32 / wal_segment_size` segments per log. Other archived files:
//! `TTTTTTTT.history` (timeline history), `<segment>.XXXXXXXX.backup`
//! (backup history) and `<segment>.partial` (the last, incomplete segment
//! of a timeline at promotion).

/// A log sequence number, as PostgreSQL prints it (`16/B374D848`).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()? as u64;
    let lo = u32::from_str_radix(lo, 16).ok()? as u64;
    Some((hi << 32) | lo)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// A segment: timeline and segment number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: u32,
    pub number: u64,
}

impl Segment {
    /// The segment holding byte `lsn`.
    pub fn of_lsn(timeline: u32, lsn: u64, segment_size: u64) -> Self {
        Segment {
            timeline,
            number: lsn / segment_size,
        }
    }

    /// The segment holding the byte before `lsn` (where a record ending at
    /// `lsn` lives: an end position on a segment boundary belongs to the
    /// segment before it).
    pub fn before_lsn(timeline: u32, lsn: u64, segment_size: u64) -> Self {
        Segment {
            timeline,
            number: lsn.saturating_sub(1) / segment_size,
        }
    }

    pub fn name(&self, segment_size: u64) -> String {
        let per_log = per_log(segment_size);
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / per_log,
            self.number % per_log
        )
    }

    /// Parses a segment file name (exactly 24 upper-case hex digits).
    pub fn parse(name: &str, segment_size: u64) -> Option<Self> {
        if !is_segment_name(name) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per_log = per_log(segment_size);
        if seg >= per_log {
            return None;
        }
        Some(Segment {
            timeline,
            number: log * per_log + seg,
        })
    }
}

fn per_log(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size.max(1)
}

pub fn is_segment_name(name: &str) -> bool {
    name.len() == 24
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

fn is_upper_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

/// Whether `name` is a file PostgreSQL archives: a segment, a `.partial`
/// segment, a timeline history file or a backup history file.
pub fn is_archivable(name: &str) -> bool {
    if is_segment_name(name) {
        return true;
    }
    if let Some(seg) = name.strip_suffix(".partial") {
        return is_segment_name(seg);
    }
    if let Some(tl) = name.strip_suffix(".history") {
        return is_upper_hex(tl, 8);
    }
    if let Some(rest) = name.strip_suffix(".backup") {
        // `get`, not indexing: a name of the right length in bytes may hold
        // multi-byte characters, and a byte index inside one panics.
        return match (rest.get(..24), rest.get(24..25), rest.get(25..)) {
            (Some(seg), Some("."), Some(offset)) => is_segment_name(seg) && is_upper_hex(offset, 8),
            _ => false,
        };
    }
    false
}

/// The log-and-segment part of a WAL file name (characters 8..24), which
/// orders segments by position whatever their timeline.
pub fn position_part(name: &str) -> Option<&str> {
    let p = name.get(8..24)?;
    is_upper_hex(p, 16).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 * 1024 * 1024;

    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("nonsense"), None);
    }

    #[test]
    fn segment_names() {
        let s = Segment::of_lsn(1, parse_lsn("0/2000028").unwrap(), MB16);
        assert_eq!(s.name(MB16), "000000010000000000000002");
        // 256 segments of 16 MiB per log.
        let s = Segment::of_lsn(3, parse_lsn("1/FF000000").unwrap(), MB16);
        assert_eq!(s.name(MB16), "0000000300000001000000FF");
        assert_eq!(Segment::parse("0000000300000001000000FF", MB16), Some(s));
        let next = Segment {
            number: s.number + 1,
            ..s
        };
        assert_eq!(next.name(MB16), "000000030000000200000000");
        // An end position on a boundary belongs to the previous segment.
        let b = Segment::before_lsn(1, parse_lsn("0/3000000").unwrap(), MB16);
        assert_eq!(b.name(MB16), "000000010000000000000002");
        // 64 MiB segments: 64 per log.
        assert_eq!(Segment::parse("000000010000000000000040", 64 << 20), None);
    }

    #[test]
    fn archivable_names() {
        assert!(is_archivable("000000010000000000000002"));
        assert!(is_archivable("00000002.history"));
        assert!(is_archivable("000000010000000000000002.00000028.backup"));
        assert!(is_archivable("000000010000000000000002.partial"));
        assert!(!is_archivable("00000001000000000000000g"));
        assert!(!is_archivable("../etc/passwd"));
        assert!(!is_archivable("RECOVERYXLOG"));
        assert_eq!(
            position_part("000000020000000100000003.partial"),
            Some("0000000100000003")
        );
    }

    /// Found by the `wal` fuzz target: a `.backup` name 33 bytes long before
    /// the suffix but with a multi-byte character across byte 24 made
    /// `is_archivable` slice inside the character and panic. Such a name can
    /// come from `%p` or from a storage listing (`parse_object_name`), so a
    /// hostile bucket could crash `pg check` or `prune`.
    #[test]
    fn regression_backup_history_name_with_multibyte_character_panicked() {
        let name = "00000001000000000000000\u{e9}00000028.backup";
        assert_eq!(name.strip_suffix(".backup").unwrap().len(), 33);
        assert!(!is_archivable(name));
        let object = format!("{:016x}-{}", 7, name.to_lowercase());
        assert_eq!(super::super::wal::parse_object_name(&object), None);
    }
}

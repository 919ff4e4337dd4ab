//! Which packs `check --read-data` verified when, on this machine: the
//! choice of packs for `--read-data-subset` (least recently verified
//! first, so repeated subset runs cover the whole repository) and the
//! coverage figures `check` reports.
//!
//! The record is local state ([`crate::LocalState`], file `verified`
//! beside the key hint and the snapshot high-water mark): a hint like the
//! rest of it. A missing or unreadable file means "nothing verified yet";
//! failing to write it is logged and ignored. It never changes what a
//! check finds, only which packs a subset run reads. The file format is in
//! docs/format.md ("Verified packs (local)").
//!
//! It does not read or verify packs (`check`) and owns no I/O beyond the
//! one file.

use std::collections::HashMap;

use jiff::Timestamp;
use serde::Serialize;

use crate::{Id, LocalState};

/// First line of the file: names the format so a later version can change
/// it (an unknown first line reads as "nothing verified").
const HEADER: &str = "lifeboat-verified v1";

/// The coverage window when the caller names none: a weekly schedule of
/// `1/7` subsets covers every pack within it.
pub const DEFAULT_COVERAGE_DAYS: u32 = 7;

/// Which packs a `--read-data-subset` run reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DataSubset {
    /// This percentage (0 < p <= 100) of the packs (at least one).
    Percent(f64),
    /// `n/m`: n m-ths of the packs. With local state, like a percentage
    /// (least recently verified first); without, the n-th of m fixed parts
    /// of the packs by id (as restic's `n/m`), so `1/m` ... `m/m` on
    /// successive runs cover every pack even on a machine that keeps no
    /// state.
    Part { n: u32, m: u32 },
}

impl DataSubset {
    /// Parses `10%`, `10` (a percentage) or `n/m` (1 <= n <= m). The error
    /// is a message for the user.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        if let Some((n, m)) = s.split_once('/') {
            let (n, m) = match (n.trim().parse::<u32>(), m.trim().parse::<u32>()) {
                (Ok(n), Ok(m)) => (n, m),
                _ => return Err(format!("--read-data-subset takes n/m like 1/7, not {s:?}")),
            };
            if n == 0 || m == 0 || n > m {
                return Err(format!(
                    "--read-data-subset {s}: n/m needs 1 <= n <= m, e.g. 1/7"
                ));
            }
            return Ok(DataSubset::Part { n, m });
        }
        let p: f64 = s.trim().trim_end_matches('%').parse().map_err(|_| {
            format!("--read-data-subset takes a percentage like 10% or n/m like 1/7, not {s:?}")
        })?;
        if !(p > 0.0 && p <= 100.0) {
            return Err("--read-data-subset must be between 0% and 100%".into());
        }
        Ok(DataSubset::Percent(p))
    }

    /// The share of packs (0 < share <= 1).
    pub fn share(&self) -> f64 {
        match *self {
            DataSubset::Percent(p) => (p / 100.0).clamp(0.0, 1.0),
            DataSubset::Part { n, m } => n as f64 / m as f64,
        }
    }
}

/// When each pack was last verified, in Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Verified(pub(crate) HashMap<Id, i64>);

impl Verified {
    /// The record of the repository whose `config` object is `config`.
    pub(crate) fn load(local: &LocalState, config: &[u8]) -> Self {
        local
            .read(config, "verified")
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }

    fn parse(text: &str) -> Self {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Verified::default();
        }
        Verified(
            lines
                .filter_map(|l| {
                    let (id, t) = l.split_once(' ')?;
                    Some((Id::from_hex(id)?, t.parse().ok()?))
                })
                .collect(),
        )
    }

    fn render(&self) -> String {
        let mut rows: Vec<(&Id, &i64)> = self.0.iter().collect();
        rows.sort();
        let mut text = String::with_capacity(HEADER.len() + 1 + rows.len() * 77);
        text.push_str(HEADER);
        text.push('\n');
        for (id, t) in rows {
            text.push_str(&format!("{} {t}\n", id.to_hex()));
        }
        text
    }

    pub(crate) fn save(&self, local: &LocalState, config: &[u8]) {
        local.write(config, "verified", &self.render());
    }

    /// Forgets packs `present` does not hold (pruned), so the record
    /// stays as large as the repository.
    pub(crate) fn retain(&mut self, present: impl Fn(&Id) -> bool) {
        self.0.retain(|id, _| present(id));
    }
}

/// Picks the packs a subset run reads out of `packs` (sorted by id).
///
/// With a record (`verified`): the `share` of packs least recently
/// verified, never-verified ones first, ties by id, so successive runs
/// move through the repository and a new pack is read by the next run.
/// Without: a percentage is a random choice (as before there was a
/// record), `n/m` the packs whose id falls in part n of m.
pub(crate) fn select(packs: &[Id], subset: DataSubset, verified: Option<&Verified>) -> Vec<Id> {
    let count = ((packs.len() as f64 * subset.share()).ceil() as usize)
        .max(1)
        .min(packs.len());
    match (verified, subset) {
        (Some(v), _) => {
            let mut by_age: Vec<(i64, Id)> = packs
                .iter()
                .map(|p| (v.0.get(p).copied().unwrap_or(i64::MIN), *p))
                .collect();
            by_age.sort();
            let mut chosen: Vec<Id> = by_age.into_iter().take(count).map(|(_, p)| p).collect();
            chosen.sort();
            chosen
        }
        (None, DataSubset::Percent(_)) => {
            let mut rng = rand::rng();
            let mut chosen: Vec<Id> =
                rand::seq::IndexedRandom::choose_multiple(packs, &mut rng, count)
                    .copied()
                    .collect();
            chosen.sort();
            chosen
        }
        (None, DataSubset::Part { n, m }) => packs
            .iter()
            .filter(|p| part_of(p, m) == n - 1)
            .copied()
            .collect(),
    }
}

/// Which of `m` parts a pack id falls in (its first four bytes modulo m:
/// ids are uniform, so the parts are near equal).
fn part_of(id: &Id, m: u32) -> u32 {
    u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]) % m
}

/// How much of the repository's data this machine verified recently
/// (`check`'s report; present when the handle has local state).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Coverage {
    /// The window: "recently" is within this many days of the check.
    pub window_days: u32,
    /// Indexed packs in the repository, and their stored bytes.
    pub packs: usize,
    pub bytes: u64,
    /// Of those, verified within the window.
    pub packs_verified: usize,
    pub bytes_verified: u64,
    /// `packs_verified / packs` and `bytes_verified / bytes` (1 for an
    /// empty repository).
    pub packs_share: f64,
    pub bytes_share: f64,
    /// Packs this machine never verified (or that were damaged when last
    /// read).
    pub never_verified_packs: usize,
    /// The least recent verification among the packs that have one.
    pub oldest_verification: Option<Timestamp>,
}

/// Coverage of `packs` (id, stored size) by `verified` at `now`.
pub(crate) fn coverage(
    packs: &[(Id, u64)],
    verified: &Verified,
    now: Timestamp,
    window_days: u32,
) -> Coverage {
    let since = now.as_second() - window_days as i64 * 86_400;
    let mut c = Coverage {
        window_days,
        packs: packs.len(),
        bytes: 0,
        packs_verified: 0,
        bytes_verified: 0,
        packs_share: 1.0,
        bytes_share: 1.0,
        never_verified_packs: 0,
        oldest_verification: None,
    };
    let mut oldest: Option<i64> = None;
    for (id, size) in packs {
        c.bytes += size;
        match verified.0.get(id) {
            None => c.never_verified_packs += 1,
            Some(&t) => {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
                if t >= since {
                    c.packs_verified += 1;
                    c.bytes_verified += size;
                }
            }
        }
    }
    if c.packs > 0 {
        c.packs_share = c.packs_verified as f64 / c.packs as f64;
    }
    if c.bytes > 0 {
        c.bytes_share = c.bytes_verified as f64 / c.bytes as f64;
    }
    c.oldest_verification = oldest.and_then(|t| Timestamp::from_second(t).ok());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u8) -> Vec<Id> {
        (0..n).map(|i| Id([i; 32])).collect()
    }

    #[test]
    fn subset_forms_parse() {
        assert_eq!(DataSubset::parse("10%"), Ok(DataSubset::Percent(10.0)));
        assert_eq!(DataSubset::parse("2.5"), Ok(DataSubset::Percent(2.5)));
        assert_eq!(
            DataSubset::parse("1/7"),
            Ok(DataSubset::Part { n: 1, m: 7 })
        );
        for bad in ["0%", "101%", "lots", "0/7", "8/7", "1/0", "a/b", "1/"] {
            assert!(DataSubset::parse(bad).is_err(), "{bad}");
        }
        assert!((DataSubset::Part { n: 2, m: 8 }.share() - 0.25).abs() < 1e-12);
    }

    #[test]
    fn the_record_round_trips_and_ignores_junk() {
        let mut v = Verified::default();
        v.0.insert(Id([1; 32]), 1_700_000_000);
        v.0.insert(Id([2; 32]), 5);
        assert_eq!(Verified::parse(&v.render()), v);
        let mut junk = v.render();
        junk.push_str("not-an-id 5\nzz\n");
        assert_eq!(Verified::parse(&junk), v);
        assert_eq!(Verified::parse("some other format\n"), Verified::default());
    }

    #[test]
    fn with_a_record_the_least_recently_verified_go_first() {
        let packs = ids(10);
        let mut v = Verified::default();
        for (i, p) in packs.iter().enumerate() {
            v.0.insert(*p, 100 - i as i64);
        }
        v.0.remove(&packs[0]);
        let chosen = select(&packs, DataSubset::Percent(30.0), Some(&v));
        // Never verified first, then the oldest two (9 and 8).
        assert_eq!(chosen, vec![packs[0], packs[8], packs[9]]);
        // n/m with a record is the same rule.
        let chosen = select(&packs, DataSubset::Part { n: 3, m: 10 }, Some(&v));
        assert_eq!(chosen, vec![packs[0], packs[8], packs[9]]);
    }

    #[test]
    fn without_a_record_parts_cover_every_pack_once() {
        let packs: Vec<Id> = (0..200u32)
            .map(|i| Id(*blake3::hash(&i.to_le_bytes()).as_bytes()))
            .collect();
        let mut seen: Vec<Id> = (1..=7)
            .flat_map(|n| select(&packs, DataSubset::Part { n, m: 7 }, None))
            .collect();
        seen.sort();
        let mut all = packs.clone();
        all.sort();
        assert_eq!(seen, all);
        // A percentage picks the share, at least one.
        assert_eq!(select(&packs, DataSubset::Percent(10.0), None).len(), 20);
        assert_eq!(select(&packs[..3], DataSubset::Percent(1.0), None).len(), 1);
    }

    #[test]
    fn coverage_counts_the_window() {
        let packs = vec![(Id([1; 32]), 100), (Id([2; 32]), 300), (Id([3; 32]), 600)];
        let now = Timestamp::from_second(100 * 86_400).unwrap();
        let mut v = Verified::default();
        v.0.insert(Id([1; 32]), 99 * 86_400); // 1 day ago
        v.0.insert(Id([2; 32]), 90 * 86_400); // 10 days ago
        let c = coverage(&packs, &v, now, 7);
        assert_eq!((c.packs, c.bytes), (3, 1000));
        assert_eq!((c.packs_verified, c.bytes_verified), (1, 100));
        assert_eq!(c.never_verified_packs, 1);
        assert!((c.packs_share - 1.0 / 3.0).abs() < 1e-12);
        assert!((c.bytes_share - 0.1).abs() < 1e-12);
        assert_eq!(
            c.oldest_verification,
            Some(Timestamp::from_second(90 * 86_400).unwrap())
        );
        let c = coverage(&packs, &v, now, 10);
        assert_eq!(c.packs_verified, 2);
        let empty = coverage(&[], &v, now, 7);
        assert_eq!((empty.packs_share, empty.oldest_verification), (1.0, None));
    }
}

//! The daemon's schedule book: when each plan runs next and why, as plain
//! data driven by the caller's clock, so every rule is tested without
//! sleeping.
//!
//! Rules:
//! - at start, a plan whose newest slot (at or before now) passed without
//!   a run starting after it — or that never ran — runs once now
//!   ([`Trigger::CatchUp`]), however many slots were missed;
//! - otherwise it runs at its next slot plus a random delay in
//!   `[0, jitter]`;
//! - a plan is never started while it runs: its next time is set only when
//!   the run ends; a slot that passed meanwhile makes it run once more at
//!   once (coalesced);
//! - at most `max-concurrent` plans run at once; the others wait, oldest
//!   due first;
//! - a run that met another process's lock ([`Outcome::Locked`]) is tried
//!   again after `lock-retry` ([`Trigger::Retry`]), not reported as failed.

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use rand::Rng;

use crate::config::Config;
use crate::report::{Outcome, Trigger};
use crate::state::PlanState;

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// When the plan is due next; `None` while it runs.
    pub next: Option<Timestamp>,
    pub trigger: Trigger,
    pub running: bool,
    /// The slot the pending (or running) run is for.
    pub slot: Option<Timestamp>,
}

/// A run to start now.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    pub plan: String,
    pub trigger: Trigger,
}

pub struct Scheduler {
    entries: BTreeMap<String, Entry>,
    max_concurrent: usize,
    rng: rand::rngs::StdRng,
}

fn jittered(slot: Timestamp, jitter: u64, rng: &mut impl Rng) -> Timestamp {
    if jitter == 0 {
        return slot;
    }
    let d = rng.random_range(0..=jitter);
    slot.checked_add(SignedDuration::from_secs(d as i64))
        .unwrap_or(slot)
}

fn tz(config: &Config) -> TimeZone {
    TimeZone::get(&config.daemon.time_zone).unwrap_or(TimeZone::UTC)
}

impl Scheduler {
    /// The book at daemon start. `states` holds each plan's saved state
    /// (missing: never ran); `seed` seeds the jitter.
    pub fn new(
        config: &Config,
        states: &BTreeMap<String, PlanState>,
        now: Timestamp,
        seed: u64,
    ) -> Scheduler {
        let mut s = Scheduler {
            entries: BTreeMap::new(),
            max_concurrent: config.daemon.max_concurrent,
            rng: rand::SeedableRng::seed_from_u64(seed),
        };
        s.sync(config, states, now);
        s
    }

    /// Adds plans new in `config` (a reload), drops removed ones (a running
    /// one finishes first), keeps the others' times.
    pub fn sync(&mut self, config: &Config, states: &BTreeMap<String, PlanState>, now: Timestamp) {
        self.max_concurrent = config.daemon.max_concurrent;
        let tz = tz(config);
        self.entries
            .retain(|name, e| config.plans.contains_key(name) || e.running);
        for (name, plan) in &config.plans {
            if self.entries.contains_key(name) {
                continue;
            }
            let last_started = states
                .get(name)
                .and_then(|s| s.last_run.as_ref().map(|r| r.started));
            let last_slot = plan.schedule.last_at_or_before(now, &tz);
            let missed = match (last_started, last_slot) {
                (None, _) => true,
                (Some(started), Some(slot)) => started < slot,
                (Some(_), None) => false,
            };
            let entry = if missed {
                Entry {
                    next: Some(now),
                    trigger: Trigger::CatchUp,
                    running: false,
                    slot: last_slot,
                }
            } else {
                let slot = plan.schedule.next_after(now, &tz);
                Entry {
                    next: slot.map(|s| jittered(s, plan.jitter.seconds(), &mut self.rng)),
                    trigger: Trigger::Schedule,
                    running: false,
                    slot,
                }
            };
            self.entries.insert(name.clone(), entry);
        }
    }

    pub fn entry(&self, plan: &str) -> Option<&Entry> {
        self.entries.get(plan)
    }

    pub fn running(&self) -> usize {
        self.entries.values().filter(|e| e.running).count()
    }

    /// The runs to start at `now` (marked running), within the
    /// concurrency limit, earliest due first.
    pub fn take_due(&mut self, now: Timestamp) -> Vec<Due> {
        let free = self.max_concurrent.saturating_sub(self.running());
        let mut due: Vec<(Timestamp, String)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.running && e.next.is_some_and(|n| n <= now))
            .map(|(n, e)| (e.next.expect("filtered"), n.clone()))
            .collect();
        due.sort();
        due.truncate(free);
        due.into_iter()
            .map(|(_, plan)| {
                let e = self.entries.get_mut(&plan).expect("listed");
                e.running = true;
                e.next = None;
                Due {
                    plan,
                    trigger: e.trigger,
                }
            })
            .collect()
    }

    /// A run of `plan` ended at `now` with `outcome`: books the next one.
    pub fn finished(
        &mut self,
        config: &Config,
        plan: &str,
        outcome: Option<Outcome>,
        now: Timestamp,
    ) {
        let Some(p) = config.plans.get(plan) else {
            self.entries.remove(plan);
            return;
        };
        let tz = tz(config);
        let Some(e) = self.entries.get_mut(plan) else {
            return;
        };
        e.running = false;
        if outcome == Some(Outcome::Locked) {
            e.next = now
                .checked_add(SignedDuration::from_secs(
                    config.daemon.lock_retry.seconds() as i64,
                ))
                .ok();
            e.trigger = Trigger::Retry;
            return;
        }
        // The first slot after the one this run was for (or after now).
        let after = e.slot.unwrap_or(now);
        let next_slot = p.schedule.next_after(after, &tz);
        match next_slot {
            Some(s) if s <= now => {
                // A slot passed while the plan ran: once more, now.
                let latest = p.schedule.last_at_or_before(now, &tz);
                e.next = Some(now);
                e.slot = latest;
                e.trigger = Trigger::Schedule;
            }
            Some(s) => {
                e.next = Some(jittered(s, p.jitter.seconds(), &mut self.rng));
                e.slot = Some(s);
                e.trigger = Trigger::Schedule;
            }
            None => {
                e.next = None;
                e.slot = None;
            }
        }
    }

    /// The earliest time a plan not running is due.
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.entries
            .values()
            .filter(|e| !e.running)
            .filter_map(|e| e.next)
            .min()
    }

    /// Each plan's next time (for status while the daemon runs).
    pub fn next_runs(&self) -> BTreeMap<String, Option<Timestamp>> {
        self.entries
            .iter()
            .map(|(n, e)| (n.clone(), e.next))
            .collect()
    }
}

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
//!
//! Restore drills of plans with `drill.every` are booked beside the runs
//! ([`Scheduler::sync_drills`], [`Scheduler::take_due_drills`]):
//! - a plan never drilled, or whose newest drill is older than `every`,
//!   is drilled once at start ([`Trigger::CatchUp`]), however many drills
//!   were missed; otherwise `every` after its newest drill plus a random
//!   delay in `[0, jitter]`, and `every` after each drill the daemon ran;
//! - a drill never starts while the plan's backup runs, nor a backup
//!   while the plan's drill runs: the one that is due waits for the other
//!   to end;
//! - drills count towards `max-concurrent`; due backups go first.

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

/// A plan's drill in the book.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillEntry {
    /// When the drill is due next; `None` while it runs.
    pub next: Option<Timestamp>,
    pub trigger: Trigger,
    pub running: bool,
}

pub struct Scheduler {
    entries: BTreeMap<String, Entry>,
    drills: BTreeMap<String, DrillEntry>,
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
            drills: BTreeMap::new(),
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

    /// Runs and drills running.
    pub fn running(&self) -> usize {
        self.entries.values().filter(|e| e.running).count()
            + self.drills.values().filter(|d| d.running).count()
    }

    fn drill_running(&self, plan: &str) -> bool {
        self.drills.get(plan).is_some_and(|d| d.running)
    }

    /// The runs to start at `now` (marked running), within the
    /// concurrency limit, earliest due first.
    pub fn take_due(&mut self, now: Timestamp) -> Vec<Due> {
        let free = self.max_concurrent.saturating_sub(self.running());
        let mut due: Vec<(Timestamp, String)> = self
            .entries
            .iter()
            .filter(|(n, e)| {
                !e.running && e.next.is_some_and(|n| n <= now) && !self.drill_running(n)
            })
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

    /// Books the drills of `config`'s plans with `drill.every` (at start
    /// and after a reload: plans already booked keep their times; plans
    /// without `every` are dropped unless their drill runs). `last` holds
    /// when each plan's newest drill finished (missing: never drilled).
    pub fn sync_drills(
        &mut self,
        config: &Config,
        last: &BTreeMap<String, Timestamp>,
        now: Timestamp,
    ) {
        self.drills.retain(|name, d| {
            d.running
                || config
                    .plans
                    .get(name)
                    .is_some_and(|p| p.drill.every.is_some())
        });
        for (name, plan) in &config.plans {
            let Some(every) = plan.drill.every else {
                continue;
            };
            if self.drills.contains_key(name) {
                continue;
            }
            let due = last.get(name).and_then(|t| {
                t.checked_add(SignedDuration::from_secs(every.seconds() as i64))
                    .ok()
            });
            let entry = match due {
                Some(due) if due > now => DrillEntry {
                    next: Some(jittered(due, plan.jitter.seconds(), &mut self.rng)),
                    trigger: Trigger::Schedule,
                    running: false,
                },
                _ => DrillEntry {
                    next: Some(now),
                    trigger: Trigger::CatchUp,
                    running: false,
                },
            };
            self.drills.insert(name.clone(), entry);
        }
    }

    pub fn drill_entry(&self, plan: &str) -> Option<&DrillEntry> {
        self.drills.get(plan)
    }

    /// The drills to start at `now` (marked running): due, their plan's
    /// backup neither running nor due, within what the concurrency limit
    /// leaves, earliest due first.
    pub fn take_due_drills(&mut self, now: Timestamp) -> Vec<Due> {
        let free = self.max_concurrent.saturating_sub(self.running());
        let backup_busy = |plan: &str| {
            self.entries
                .get(plan)
                .is_some_and(|e| e.running || e.next.is_some_and(|n| n <= now))
        };
        let mut due: Vec<(Timestamp, String)> = self
            .drills
            .iter()
            .filter(|(n, d)| !d.running && d.next.is_some_and(|t| t <= now) && !backup_busy(n))
            .map(|(n, d)| (d.next.expect("filtered"), n.clone()))
            .collect();
        due.sort();
        due.truncate(free);
        due.into_iter()
            .map(|(_, plan)| {
                let d = self.drills.get_mut(&plan).expect("listed");
                d.running = true;
                d.next = None;
                Due {
                    plan,
                    trigger: d.trigger,
                }
            })
            .collect()
    }

    /// A drill of `plan` ended at `now` (whatever its outcome: a failed
    /// drill alerts, and is not retried before `every`).
    pub fn drill_finished(&mut self, config: &Config, plan: &str, now: Timestamp) {
        let every = config.plans.get(plan).and_then(|p| p.drill.every);
        let Some(every) = every else {
            self.drills.remove(plan);
            return;
        };
        let jitter = config.plans[plan].jitter.seconds();
        if let Some(d) = self.drills.get_mut(plan) {
            d.running = false;
            d.trigger = Trigger::Schedule;
            d.next = now
                .checked_add(SignedDuration::from_secs(every.seconds() as i64))
                .ok()
                .map(|t| jittered(t, jitter, &mut self.rng));
        }
    }

    /// Plans whose drill runs or is due at `now` (not to be reported as
    /// overdue: it is about to happen).
    pub fn drills_busy(&self, now: Timestamp) -> Vec<String> {
        self.drills
            .iter()
            .filter(|(_, d)| d.running || d.next.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// When each plan and drill not running is due.
    fn due_times(&self) -> impl Iterator<Item = Timestamp> + '_ {
        let runs = self.entries.values().filter(|e| !e.running).map(|e| e.next);
        let drills = self.drills.values().filter(|d| !d.running).map(|d| d.next);
        runs.chain(drills).flatten()
    }

    /// The earliest time a plan or drill not running is due.
    pub fn next_wake(&self) -> Option<Timestamp> {
        self.due_times().min()
    }

    /// The earliest due time after `now`. What is due at `now` but could
    /// not start (the concurrency limit, a drill waiting for its plan's
    /// backup) waits for a run to end, not for the clock: sleeping until a
    /// time already past would spin.
    pub fn next_wake_after(&self, now: Timestamp) -> Option<Timestamp> {
        self.due_times().filter(|t| *t > now).min()
    }

    /// Each plan's next time (for status while the daemon runs).
    pub fn next_runs(&self) -> BTreeMap<String, Option<Timestamp>> {
        self.entries
            .iter()
            .map(|(n, e)| (n.clone(), e.next))
            .collect()
    }
}

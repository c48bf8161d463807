//! One EBS block-request budget per account, shared by every running unit of
//! every task.
//!
//! EBS limits GetSnapshotBlock and PutSnapshotBlock each to 1,000 requests a
//! second per account. A unit paced at a fixed rate behaves as if its task
//! had the account to itself, so two tasks of sixteen units would ask for
//! twice what EBS allows and spend their time in throttling retries. Instead,
//! while it moves blocks a unit holds a lease in the task store
//! ([`TaskStore::renew_lease`]), renewed every [`RENEW_EVERY`], that publishes
//! the rate it is using. From the live leases it sizes its own rate:
//!
//! - **fair:** the budget is divided max-min fairly between *tasks* (a task
//!   whose units cannot use their share leaves the rest to the others), then
//!   evenly among a task's units, never above the per-unit cap;
//! - **within the budget:** a unit raises its rate only into what the others'
//!   published rates leave (a unit still joining counts at its fair rate);
//!   they lower theirs at their next renewal. A unit that starts while the
//!   budget is in use begins slowly and renews sooner, until it reaches its
//!   share.
//!
//! A unit that dies stops counting when its lease lapses ([`LEASE_LIFETIME`]).
//! Only units that start in the same instant can both take the same room, and
//! EBS's throttling answer (which the SDK retries) covers that.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

use crate::Result;
use crate::engine::{Engine, now_ms};
use crate::ids::{AccountId, TaskId};
use crate::ports::{RateLease, SnapshotStore, TaskStore};
use crate::task::{Task, TaskKind};

/// How often a running unit renews its lease and resizes its rate.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How long a lease lasts unless renewed.
pub const LEASE_LIFETIME: Duration = Duration::from_secs(10);

/// An account's EBS block-request budget and one unit's cap within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBudget {
    /// Block requests a second all of an account's units may make together,
    /// per API (EBS allows 1,000 GetSnapshotBlock and 1,000 PutSnapshotBlock).
    pub account_per_second: u32,
    /// Most block requests a second one unit makes (what its CPU can
    /// compress or decompress).
    pub unit_per_second: u32,
}

/// The rate each task's units may use: the budget shared max-min fairly
/// between the tasks in `leases` (each asks for its units × the unit cap),
/// then evenly between a task's units.
pub fn unit_rates(budget: &RequestBudget, leases: &[RateLease]) -> BTreeMap<TaskId, u32> {
    let mut units: BTreeMap<&TaskId, u64> = BTreeMap::new();
    for lease in leases {
        *units.entry(&lease.task).or_default() += 1;
    }
    let cap = u64::from(budget.unit_per_second);
    let mut by_demand: Vec<(&TaskId, u64)> = units.into_iter().collect();
    by_demand.sort_by_key(|&(task, n)| (n, task));
    let mut left = u64::from(budget.account_per_second);
    let mut rates = BTreeMap::new();
    let count = by_demand.len() as u64;
    for (i, (task, n)) in by_demand.into_iter().enumerate() {
        let share = left / (count - i as u64);
        let given = share.min(n * cap);
        left -= given;
        rates.insert(task.clone(), u32::try_from(given / n).unwrap_or(u32::MAX));
    }
    rates
}

/// The rate `holder` may use now: its task's fair unit rate, but no more
/// than the budget leaves beside the others' published rates (at least one
/// request a second, so a unit always moves). A unit that has joined but not
/// yet published a rate (0) is counted at its fair rate, so units that start
/// together do not each take the same room.
pub fn rate_for(budget: &RequestBudget, leases: &[RateLease], holder: &str) -> u32 {
    share(budget, leases, holder).rate
}

/// A holder's rate now and its fair rate, from one division of the budget.
struct Share {
    rate: u32,
    fair: u32,
}

fn share(budget: &RequestBudget, leases: &[RateLease], holder: &str) -> Share {
    let Some(mine) = leases.iter().find(|l| l.holder == holder) else {
        return Share { rate: 1, fair: 1 };
    };
    let fair = unit_rates(budget, leases);
    let fair_of = |task: &TaskId| fair.get(task).copied().unwrap_or(1);
    let others: u64 = leases
        .iter()
        .filter(|l| l.holder != holder)
        .map(|l| match l.rate {
            0 => u64::from(fair_of(&l.task)),
            rate => u64::from(rate),
        })
        .sum();
    let room = u64::from(budget.account_per_second).saturating_sub(others);
    let mine = fair_of(&mine.task);
    Share {
        rate: u32::try_from(u64::from(mine).min(room))
            .unwrap_or(u32::MAX)
            .max(1),
        fair: mine,
    }
}

/// Who holds a lease: one unit of one task.
#[derive(Debug, Clone, Copy)]
pub struct UnitOf<'a> {
    /// The account whose budget the unit draws on.
    pub account: &'a AccountId,
    /// Store units read (GetSnapshotBlock), restore units write
    /// (PutSnapshotBlock): two budgets.
    pub kind: TaskKind,
    /// The unit's task.
    pub task: &'a TaskId,
    /// The unit.
    pub unit: u64,
}

/// Runs `work` (a unit moving blocks through `snapshots`) inside `budget`:
/// holds a lease in `tasks` for its duration and keeps the snapshot store's
/// request rate at the unit's share, renewing every [`RENEW_EVERY`] on a
/// thread of its own.
///
/// The first renewal's error is returned (nothing has moved yet; the step is
/// retried). Later ones keep the current rate: the lease lapses only after
/// several, and EBS's own throttling answers, which the adapter retries,
/// bound what an overrun costs.
pub fn within_budget<T>(
    budget: RequestBudget,
    tasks: &dyn TaskStore,
    snapshots: &dyn SnapshotStore,
    unit: UnitOf<'_>,
    work: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let holder = format!("{}#{}", unit.task, unit.unit);
    let mut lease = RateLease {
        holder: holder.clone(),
        task: unit.task.clone(),
        rate: 0,
        expires_ms: 0,
    };
    // Returns the unit's fair rate; publishes and applies the rate it may use.
    let renew = |lease: &mut RateLease| -> Result<u32> {
        let now = now_ms();
        lease.expires_ms = now + LEASE_LIFETIME.as_millis() as i64;
        let leases = tasks.renew_lease(unit.account, unit.kind, lease, now)?;
        let Share { rate, fair } = share(&budget, &leases, &lease.holder);
        lease.rate = rate;
        snapshots.set_request_rate(rate);
        Ok(fair)
    };
    // Join with no rate, to learn the others', then publish ours.
    renew(&mut lease)?;
    let mut fair = match renew(&mut lease) {
        Ok(fair) => fair,
        Err(e) => {
            let _ = tasks.drop_lease(unit.account, unit.kind, &holder);
            return Err(e);
        }
    };
    let (stop, stopped) = mpsc::channel::<()>();
    let result = std::thread::scope(|s| {
        s.spawn(move || {
            loop {
                // Below its share, a unit looks again sooner.
                let wait = if lease.rate < fair {
                    RENEW_EVERY / 4
                } else {
                    RENEW_EVERY
                };
                // Nothing is ever sent: the channel closing is the stop.
                if stopped.recv_timeout(wait) != Err(mpsc::RecvTimeoutError::Timeout) {
                    break;
                }
                if let Ok(f) = renew(&mut lease) {
                    fair = f;
                }
            }
        });
        // Dropped when `work` returns or unwinds, which stops the renewals
        // (a panicking unit must not leave the scope waiting for them).
        let _stop = stop;
        work()
    });
    // Best effort: a lease not withdrawn lapses on its own.
    let _ = tasks.drop_lease(unit.account, unit.kind, &holder);
    result
}

impl Engine {
    /// Runs `work` (unit `unit` of `task` moving blocks) inside the account's
    /// request budget ([`within_budget`]); without a configured budget, just
    /// runs it.
    pub(crate) fn within_budget<T>(
        &self,
        task: &Task,
        unit: u64,
        work: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        match self.config.ebs_budget {
            None => work(),
            Some(budget) => within_budget(
                budget,
                &*self.tasks,
                &*self.snapshots,
                UnitOf {
                    account: &task.account,
                    kind: task.kind,
                    task: &task.id,
                    unit,
                },
                work,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(task: &str, unit: u32, rate: u32) -> RateLease {
        let task: TaskId = task.parse().unwrap();
        RateLease {
            holder: format!("{task}#{unit}"),
            task,
            rate,
            expires_ms: 0,
        }
    }

    const A: &str = "task-0123456789abcdef0";
    const B: &str = "task-0123456789abcdef1";
    const BUDGET: RequestBudget = RequestBudget {
        account_per_second: 1000,
        unit_per_second: 60,
    };

    #[test]
    fn one_task_gets_its_cap_and_two_share_the_budget_evenly() {
        let one: Vec<_> = (0..16).map(|u| lease(A, u, 0)).collect();
        assert_eq!(unit_rates(&BUDGET, &one)[&A.parse().unwrap()], 60);
        let two: Vec<_> = (0..16)
            .map(|u| lease(A, u, 0))
            .chain((0..16).map(|u| lease(B, u, 0)))
            .collect();
        let rates = unit_rates(&BUDGET, &two);
        assert_eq!(rates[&A.parse().unwrap()], 31);
        assert_eq!(rates[&B.parse().unwrap()], 31);
    }

    #[test]
    fn a_small_task_leaves_what_it_cannot_use_to_the_others() {
        // B's two units can use 120; A's sixteen get the other 880.
        let leases: Vec<_> = (0..16)
            .map(|u| lease(A, u, 0))
            .chain((0..2).map(|u| lease(B, u, 0)))
            .collect();
        let rates = unit_rates(&BUDGET, &leases);
        assert_eq!(rates[&B.parse().unwrap()], 60);
        assert_eq!(rates[&A.parse().unwrap()], 55);
        let total: u64 = leases
            .iter()
            .map(|l| u64::from(rates[&l.task]))
            .sum::<u64>();
        assert!(total <= 1000, "{total}");
    }

    #[test]
    fn a_newcomer_takes_only_the_room_the_others_leave() {
        // A's sixteen units use 960; B's first unit may take 40, not 60.
        let mut leases: Vec<_> = (0..16).map(|u| lease(A, u, 60)).collect();
        leases.push(lease(B, 0, 0));
        let holder = format!("{B}#0");
        assert_eq!(rate_for(&BUDGET, &leases, &holder), 40);
        // Once A's units have lowered theirs to their share, B gets its own.
        for l in leases.iter_mut().filter(|l| l.task == A.parse().unwrap()) {
            l.rate = 56;
        }
        assert_eq!(rate_for(&BUDGET, &leases, &holder), 60);
        // A unit with no room still moves.
        let full: Vec<_> = (0..16)
            .map(|u| lease(A, u, 63))
            .chain([lease(B, 0, 0)])
            .collect();
        assert_eq!(rate_for(&BUDGET, &full, &holder), 1);
    }

    #[test]
    fn units_that_join_together_split_the_room() {
        // Two tasks of two units join an idle budget at once: none has
        // published a rate, and each takes only its own fair share.
        let budget = RequestBudget {
            account_per_second: 400,
            unit_per_second: 300,
        };
        let joining: Vec<_> = [(A, 0), (A, 1), (B, 0), (B, 1)]
            .into_iter()
            .map(|(t, u)| lease(t, u, 0))
            .collect();
        for l in &joining {
            assert_eq!(rate_for(&budget, &joining, &l.holder), 100);
        }
    }

    #[test]
    fn rates_never_add_up_past_the_budget() {
        // Tasks of 1..=20 units each, with several budgets and caps.
        for account_per_second in [1, 7, 100, 1000] {
            for unit_per_second in [1, 30, 60, 1000] {
                let budget = RequestBudget {
                    account_per_second,
                    unit_per_second,
                };
                let mut leases = Vec::new();
                for (t, n) in [1u32, 3, 20, 2, 16].into_iter().enumerate() {
                    let task = format!("task-0123456789abcdef{t}");
                    leases.extend((0..n).map(|u| lease(&task, u, 0)));
                    let rates = unit_rates(&budget, &leases);
                    let total: u64 = leases.iter().map(|l| u64::from(rates[&l.task])).sum();
                    assert!(total <= u64::from(account_per_second), "{total} {budget:?}");
                    assert!(rates.values().all(|&r| r <= unit_per_second));
                }
            }
        }
    }
}

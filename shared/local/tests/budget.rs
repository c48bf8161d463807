//! A unit inside the account's request budget (`engine::budget`), over the
//! SQLite task store and the image library: its lease lives exactly as long
//! as its work, and a unit that panics does not hang.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use amistore_core::engine::budget::{RequestBudget, UnitOf, within_budget};
use amistore_core::ids::{AccountId, TaskId};
use amistore_core::ports::{RateLease, TaskStore};
use amistore_core::task::TaskKind;
use amistore_local::image_library::ImageLibrary;
use amistore_local::task_store::SqliteTaskStore;

const BUDGET: RequestBudget = RequestBudget {
    account_per_second: 100,
    unit_per_second: 60,
};

/// The live leases of the account's store budget, as a newcomer sees them
/// (the newcomer's own, lapsing at once, left out).
fn leases(tasks: &SqliteTaskStore, account: &AccountId) -> Vec<String> {
    let probe = RateLease {
        holder: "probe".into(),
        task: TaskId::fresh(),
        rate: 0,
        expires_ms: i64::MAX,
    };
    let live = tasks
        .renew_lease(account, TaskKind::Store, &probe, 0)
        .unwrap();
    tasks.drop_lease(account, TaskKind::Store, "probe").unwrap();
    live.into_iter()
        .map(|l| l.holder)
        .filter(|h| h != "probe")
        .collect()
}

/// Runs `work` as unit 3 of store task `task` inside the budget, over the
/// SQLite task store and image library in `dir`; `work` gets the task store.
fn run_unit<T>(
    dir: &Path,
    task: &TaskId,
    work: impl FnOnce(&SqliteTaskStore) -> amistore_core::Result<T>,
) -> (SqliteTaskStore, amistore_core::Result<T>) {
    let tasks = SqliteTaskStore::open(&dir.join("tasks.db"), None).unwrap();
    let library = ImageLibrary::open(dir).unwrap();
    let unit = UnitOf {
        account: &account(),
        kind: TaskKind::Store,
        task,
        unit: 3,
    };
    let result = within_budget(BUDGET, &tasks, &library, unit, || work(&tasks));
    (tasks, result)
}

fn account() -> AccountId {
    "123456789012".parse().unwrap()
}

#[test]
fn a_unit_holds_its_lease_exactly_while_it_works() {
    let dir = tempfile::tempdir().unwrap();
    let task = TaskId::fresh();
    let (tasks, seen) = run_unit(dir.path(), &task, |tasks| Ok(leases(tasks, &account())));
    assert_eq!(seen.unwrap(), [format!("{task}#3")]);
    assert!(
        leases(&tasks, &account()).is_empty(),
        "withdrawn at the end"
    );
}

#[test]
fn a_unit_that_panics_ends_instead_of_waiting_for_its_renewals() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let (done, ended) = mpsc::channel();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(|| {
            run_unit(&path, &TaskId::fresh(), |_| -> amistore_core::Result<()> {
                panic!("a bug in the unit")
            })
        });
        let _ = done.send(outcome.is_err());
    });
    // Renewals run every 2 s; a unit whose renewals outlived it would never end.
    assert_eq!(
        ended.recv_timeout(Duration::from_secs(20)),
        Ok(true),
        "the panic reached the caller"
    );
}

//! The local task store: tasks, their units and the quota counters in SQLite,
//! with the same conditional, transactional semantics the DynamoDB table has.
//!
//! - Admission is one transaction: add the task's GiB to the account's counter
//!   only if the counter is below the limit, and insert the task. Either both
//!   happen or neither does; it is never a read-then-write.
//! - Release happens in the transaction that moves the task out of InProgress,
//!   conditioned on it being InProgress, so it happens exactly once.
//! - A unit is recorded with an insert-if-absent; only a first insert advances
//!   the task's count, so a retried unit is counted once.
//!
//! - At most one store of an image into a bucket is in progress: a partial
//!   unique index refuses the second admission, inside the same transaction.
//!
//! Every write transaction is `BEGIN IMMEDIATE`, so concurrent processes
//! serialise on SQLite's write lock instead of failing on upgrade.

use std::path::Path;
use std::time::Duration;

use amistore_core::ids::{AccountId, ImageId, TaskId};
use amistore_core::ports::TaskStore;
use amistore_core::task::{Task, TaskKind, TaskState};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    account TEXT NOT NULL,
    image_id TEXT,
    bucket TEXT NOT NULL,
    object_key TEXT NOT NULL,
    size_gib INTEGER NOT NULL,
    upload_id TEXT,
    units_total INTEGER NOT NULL,
    units_done INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER,
    failure_reason TEXT,
    expires_at_ms INTEGER NOT NULL,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS tasks_newest_first ON tasks (account, kind, started_at_ms DESC);
CREATE UNIQUE INDEX IF NOT EXISTS one_store_per_image_and_bucket ON tasks (account, image_id, bucket)
    WHERE kind = 'store' AND state = 'InProgress';
CREATE TABLE IF NOT EXISTS units (
    task_id TEXT NOT NULL,
    unit INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (task_id, unit)
);
CREATE TABLE IF NOT EXISTS quota (
    account TEXT NOT NULL,
    kind TEXT NOT NULL,
    in_progress_gib INTEGER NOT NULL,
    PRIMARY KEY (account, kind)
);
";

const TASK_COLUMNS: &str = "id, kind, account, image_id, bucket, object_key, size_gib, upload_id, units_total, \
                            units_done, state, started_at_ms, ended_at_ms, failure_reason";

fn db(context: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |e| {
        Error::io(
            format!("task database: {context}"),
            std::io::Error::other(e),
        )
    }
}

/// The SQLite task store. One value is one connection; open one per thread or
/// process that needs it.
pub struct TaskDb {
    conn: Connection,
    owner: Option<String>,
}

impl TaskDb {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(db("opening"))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(db("configuring"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db("configuring"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db("configuring"))?;
        conn.execute_batch(SCHEMA)
            .map_err(db("creating the schema"))?;
        Ok(Self { conn, owner: None })
    }

    /// Marks tasks this connection admits as run by `owner` (a process lease),
    /// so recovery can tell a live task from one whose process died.
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Hands an in-progress task to this connection's owner (on resumption).
    pub fn adopt(&mut self, id: &TaskId) -> Result<()> {
        let owner = self.owner.clone();
        self.set_column(id, "owner", owner.into())
    }

    /// Every task in progress with the owner running it, oldest first.
    pub fn in_progress_owners(&self) -> Result<Vec<(Task, Option<String>)>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {TASK_COLUMNS}, owner FROM tasks WHERE state = 'InProgress' ORDER BY started_at_ms"
            ))
            .map_err(db("listing tasks"))?;
        let rows = stmt
            .query_map([], |r| Ok((task_from_row(r)?, r.get(14)?)))
            .map_err(db("listing tasks"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db("listing tasks"))
    }

    /// Admits `task` if its account's in-progress GiB of its kind are below
    /// `limit_gib`: adds its size to the counter and stores it, atomically.
    pub fn admit(&mut self, task: &Task, limit_gib: u64) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting admission"))?;
        let (account, kind) = (task.account.as_str(), task.kind.as_str());
        tx.execute(
            "INSERT OR IGNORE INTO quota VALUES (?1, ?2, 0)",
            params![account, kind],
        )
        .map_err(db("admitting"))?;
        let admitted = tx
            .execute(
                "UPDATE quota SET in_progress_gib = in_progress_gib + ?3
                 WHERE account = ?1 AND kind = ?2 AND in_progress_gib < ?4",
                params![account, kind, task.size_gib as i64, limit_gib as i64],
            )
            .map_err(db("admitting"))?;
        if admitted == 0 {
            let in_progress: i64 = tx
                .query_row(
                    "SELECT in_progress_gib FROM quota WHERE account = ?1 AND kind = ?2",
                    params![account, kind],
                    |r| r.get(0),
                )
                .map_err(db("reading the quota"))?;
            return Err(Error::LimitExceeded(format!(
                "account {account} already has {in_progress} GiB of {kind} tasks in progress; new ones are admitted below {limit_gib} GiB"
            )));
        }
        let inserted = tx.execute(
            &format!("INSERT INTO tasks ({TASK_COLUMNS}, expires_at_ms, owner) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
            params![
                task.id.as_str(),
                kind,
                account,
                task.image_id.as_ref().map(|i| i.as_str()),
                task.bucket.as_str(),
                task.key.as_str(),
                task.size_gib as i64,
                task.upload_id,
                task.units_total as i64,
                task.units_done as i64,
                task.state.as_str(),
                task.started_at_ms,
                task.ended_at_ms,
                task.failure_reason,
                task.expires_at_ms(),
                self.owner,
            ],
        );
        match inserted {
            Ok(_) => tx.commit().map_err(db("committing admission")),
            Err(rusqlite::Error::SqliteFailure(e, msg))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                let copy = msg.as_deref().is_some_and(|m| m.contains("image_id"));
                Err(Error::Duplicate(match (copy, &task.image_id) {
                    (true, Some(image)) => format!(
                        "image {image} is already being stored in bucket {}; an AMI can be stored once per bucket",
                        task.bucket
                    ),
                    _ => format!("task {} already exists", task.id),
                }))
            }
            Err(e) => Err(db("storing the task")(e)),
        }
    }

    /// Moves an in-progress task to `state` (Completed or Failed) and releases its
    /// quota, in one transaction. Returns false, changing nothing, if the task had
    /// already ended.
    pub fn finish(
        &mut self,
        id: &TaskId,
        state: TaskState,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<bool> {
        if state == TaskState::InProgress {
            return Err(Error::InvalidInput(
                "a task can only finish as Completed or Failed".into(),
            ));
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting to finish a task"))?;
        let ended = tx
            .execute(
                "UPDATE tasks SET state = ?2, ended_at_ms = ?3, failure_reason = ?4 WHERE id = ?1 AND state = 'InProgress'",
                params![id.as_str(), state.as_str(), now_ms, reason],
            )
            .map_err(db("finishing a task"))?;
        if ended == 1 {
            tx.execute(
                "UPDATE quota SET in_progress_gib = in_progress_gib - t.size_gib
                 FROM (SELECT account, kind, size_gib FROM tasks WHERE id = ?1) AS t
                 WHERE quota.account = t.account AND quota.kind = t.kind",
                params![id.as_str()],
            )
            .map_err(db("releasing quota"))?;
        }
        tx.commit().map_err(db("committing"))?;
        Ok(ended == 1)
    }

    fn set_column(
        &mut self,
        id: &TaskId,
        column: &str,
        value: rusqlite::types::Value,
    ) -> Result<()> {
        let changed = self
            .conn
            .execute(
                &format!("UPDATE tasks SET {column} = ?2 WHERE id = ?1"),
                params![id.as_str(), value],
            )
            .map_err(db("updating a task"))?;
        if changed == 0 {
            return Err(Error::NotFound(format!("task {id} does not exist")));
        }
        Ok(())
    }

    /// Records the multipart upload of a store task.
    pub fn set_upload(&mut self, id: &TaskId, upload_id: &str) -> Result<()> {
        self.set_column(id, "upload_id", upload_id.to_owned().into())
    }

    /// Records the image a restore task creates.
    pub fn set_image(&mut self, id: &TaskId, image: &ImageId) -> Result<()> {
        self.set_column(id, "image_id", image.to_string().into())
    }

    /// Records a task's number of units.
    pub fn set_units_total(&mut self, id: &TaskId, units: u64) -> Result<()> {
        self.set_column(id, "units_total", (units as i64).into())
    }

    /// Records unit `unit` of a task (its record as JSON) unless it is already
    /// recorded. Returns whether this call recorded it.
    pub fn record_unit(&mut self, id: &TaskId, unit: u64, record_json: &str) -> Result<bool> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting to record a unit"))?;
        let new = tx
            .execute(
                "INSERT OR IGNORE INTO units VALUES (?1, ?2, ?3)",
                params![id.as_str(), unit as i64, record_json],
            )
            .map_err(db("recording a unit"))?;
        if new == 1 {
            tx.execute(
                "UPDATE tasks SET units_done = units_done + 1 WHERE id = ?1",
                params![id.as_str()],
            )
            .map_err(db("counting a unit"))?;
        }
        tx.commit().map_err(db("committing"))?;
        Ok(new == 1)
    }

    /// Whether unit `unit` of a task is recorded.
    pub fn unit_recorded(&self, id: &TaskId, unit: u64) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT 1 FROM units WHERE task_id = ?1 AND unit = ?2",
                params![id.as_str(), unit as i64],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(db("reading a unit"))
    }

    /// The recorded units of a task, in unit order.
    pub fn units(&self, id: &TaskId) -> Result<Vec<(u64, String)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT unit, record FROM units WHERE task_id = ?1 ORDER BY unit")
            .map_err(db("reading units"))?;
        let rows = stmt
            .query_map(params![id.as_str()], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .map_err(db("reading units"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db("reading units"))
    }

    /// One task, if it exists.
    pub fn get(&self, id: &TaskId) -> Result<Option<Task>> {
        self.conn
            .query_row(
                &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
                params![id.as_str()],
                task_from_row,
            )
            .optional()
            .map_err(db("reading a task"))
    }

    /// An account's tasks of `kind` started in the last 31 days, newest first.
    /// (The read-time filter matters on AWS too: TTL deletion lags.)
    pub fn list(&self, account: &AccountId, kind: TaskKind, now_ms: i64) -> Result<Vec<Task>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE account = ?1 AND kind = ?2 AND expires_at_ms > ?3
                 ORDER BY started_at_ms DESC, id DESC"
            ))
            .map_err(db("listing tasks"))?;
        let rows = stmt
            .query_map(
                params![account.as_str(), kind.as_str(), now_ms],
                task_from_row,
            )
            .map_err(db("listing tasks"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db("listing tasks"))
    }

    /// Every task still in progress, oldest first (for recovery after a restart).
    pub fn in_progress(&self) -> Result<Vec<Task>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE state = 'InProgress' ORDER BY started_at_ms"
            ))
            .map_err(db("listing tasks"))?;
        let rows = stmt
            .query_map([], task_from_row)
            .map_err(db("listing tasks"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db("listing tasks"))
    }

    /// GiB of `kind` tasks in progress for `account`.
    pub fn in_progress_gib(&self, account: &AccountId, kind: TaskKind) -> Result<u64> {
        let gib: Option<i64> = self
            .conn
            .query_row(
                "SELECT in_progress_gib FROM quota WHERE account = ?1 AND kind = ?2",
                params![account.as_str(), kind.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("reading the quota"))?;
        Ok(gib.unwrap_or(0) as u64)
    }

    /// Every quota counter.
    pub fn counters(&self) -> Result<Vec<(AccountId, TaskKind, u64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT account, kind, in_progress_gib FROM quota ORDER BY account, kind")
            .map_err(db("reading the counters"))?;
        let rows = stmt
            .query_map([], |r| {
                let account: String = r.get(0)?;
                let kind: String = r.get(1)?;
                let gib: i64 = r.get(2)?;
                Ok((account, kind, gib))
            })
            .map_err(db("reading the counters"))?;
        let mut counters = Vec::new();
        for row in rows {
            let (account, kind, gib) = row.map_err(db("reading the counters"))?;
            let kind = TaskKind::parse(&kind).ok_or_else(|| {
                Error::InvalidInput(format!("the quota table holds an unknown kind {kind:?}"))
            })?;
            counters.push((account.parse()?, kind, gib.max(0) as u64));
        }
        Ok(counters)
    }

    /// Sets a counter to `to` if it reads `from`.
    pub fn correct_counter(
        &mut self,
        account: &AccountId,
        kind: TaskKind,
        from: u64,
        to: u64,
    ) -> Result<bool> {
        let changed = self
            .conn
            .execute(
                "UPDATE quota SET in_progress_gib = ?4 WHERE account = ?1 AND kind = ?2 AND in_progress_gib = ?3",
                params![account.as_str(), kind.as_str(), from as i64, to as i64],
            )
            .map_err(db("correcting a counter"))?;
        Ok(changed == 1)
    }
}

/// [`TaskDb`] as the engine's task store: one connection shared by the threads
/// of a process (SQLite serialises writers anyway; other processes open their own).
pub struct SqliteTaskStore {
    db: std::sync::Mutex<TaskDb>,
}

impl SqliteTaskStore {
    /// Wraps an open database.
    pub fn new(db: TaskDb) -> Self {
        Self {
            db: std::sync::Mutex::new(db),
        }
    }

    /// Runs `f` on the connection.
    pub fn with<T>(&self, f: impl FnOnce(&mut TaskDb) -> Result<T>) -> amistore_core::Result<T> {
        // A thread that panicked mid-call left no transaction open (rusqlite rolls
        // back on drop), so the connection is still sound.
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut db).map_err(Into::into)
    }
}

impl TaskStore for SqliteTaskStore {
    fn admit(&self, task: &Task, limit_gib: u64) -> amistore_core::Result<()> {
        self.with(|db| db.admit(task, limit_gib))
    }
    fn get(&self, id: &TaskId) -> amistore_core::Result<Option<Task>> {
        self.with(|db| db.get(id))
    }
    fn set_upload(&self, id: &TaskId, upload_id: &str) -> amistore_core::Result<()> {
        self.with(|db| db.set_upload(id, upload_id))
    }
    fn set_image(&self, id: &TaskId, image: &ImageId) -> amistore_core::Result<()> {
        self.with(|db| db.set_image(id, image))
    }
    fn set_units_total(&self, id: &TaskId, units: u64) -> amistore_core::Result<()> {
        self.with(|db| db.set_units_total(id, units))
    }
    fn record_unit(
        &self,
        id: &TaskId,
        unit: u64,
        record_json: &str,
    ) -> amistore_core::Result<bool> {
        self.with(|db| db.record_unit(id, unit, record_json))
    }
    fn unit_recorded(&self, id: &TaskId, unit: u64) -> amistore_core::Result<bool> {
        self.with(|db| db.unit_recorded(id, unit))
    }
    fn units(&self, id: &TaskId) -> amistore_core::Result<Vec<(u64, String)>> {
        self.with(|db| db.units(id))
    }
    fn finish(
        &self,
        id: &TaskId,
        state: TaskState,
        reason: Option<&str>,
        now_ms: i64,
    ) -> amistore_core::Result<bool> {
        self.with(|db| db.finish(id, state, reason, now_ms))
    }
    fn list(
        &self,
        account: &AccountId,
        kind: TaskKind,
        now_ms: i64,
    ) -> amistore_core::Result<Vec<Task>> {
        self.with(|db| db.list(account, kind, now_ms))
    }
    fn in_progress(&self) -> amistore_core::Result<Vec<Task>> {
        self.with(|db| db.in_progress())
    }
    fn in_progress_gib(&self, account: &AccountId, kind: TaskKind) -> amistore_core::Result<u64> {
        self.with(|db| db.in_progress_gib(account, kind))
    }
    fn counters(&self) -> amistore_core::Result<Vec<(AccountId, TaskKind, u64)>> {
        self.with(|db| db.counters())
    }
    fn correct_counter(
        &self,
        account: &AccountId,
        kind: TaskKind,
        from: u64,
        to: u64,
    ) -> amistore_core::Result<bool> {
        self.with(|db| db.correct_counter(account, kind, from, to))
    }
}

fn parsed<T>(value: amistore_core::Result<T>, column: usize) -> rusqlite::Result<T> {
    value.map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn task_from_row(r: &Row<'_>) -> rusqlite::Result<Task> {
    let text = |i: usize| r.get::<_, String>(i);
    let bad = |i: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown {what}").into(),
        )
    };
    Ok(Task {
        id: parsed(text(0)?.parse(), 0)?,
        kind: TaskKind::parse(&text(1)?).ok_or_else(|| bad(1, "task kind"))?,
        account: parsed(text(2)?.parse(), 2)?,
        image_id: r
            .get::<_, Option<String>>(3)?
            .map(|s| parsed(s.parse(), 3))
            .transpose()?,
        bucket: parsed(text(4)?.parse(), 4)?,
        key: parsed(text(5)?.parse(), 5)?,
        size_gib: r.get::<_, i64>(6)? as u64,
        upload_id: r.get(7)?,
        units_total: r.get::<_, i64>(8)? as u64,
        units_done: r.get::<_, i64>(9)? as u64,
        state: TaskState::parse(&text(10)?).ok_or_else(|| bad(10, "task state"))?,
        started_at_ms: r.get(11)?,
        ended_at_ms: r.get(12)?,
        failure_reason: r.get(13)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amistore_core::task::RETENTION_MS;
    use std::sync::{Arc, Barrier};

    fn task(account: &AccountId, kind: TaskKind, gib: u64, started_at_ms: i64) -> Task {
        Task::start(
            kind,
            account.clone(),
            Some(ImageId::fresh()),
            "bkt".parse().unwrap(),
            "a/x.bin".parse().unwrap(),
            gib,
            started_at_ms,
        )
    }

    #[test]
    fn the_seed_admission_example_holds() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = TaskDb::open(&dir.path().join("tasks.db")).unwrap();
        let me = AccountId::local_default();
        let store = TaskKind::Store;
        // 100 + 200 in progress: a new task is admitted, whatever its size.
        db.admit(&task(&me, store, 100, 1), 600).unwrap();
        db.admit(&task(&me, store, 200, 2), 600).unwrap();
        db.admit(&task(&me, store, 250, 3), 600).unwrap();
        assert_eq!(db.in_progress_gib(&me, store).unwrap(), 550);

        // A single 800 GiB task is admitted when nothing else runs, then blocks.
        let other: AccountId = "111122223333".parse().unwrap();
        let big = task(&other, store, 800, 4);
        db.admit(&big, 600).unwrap();
        let err = db.admit(&task(&other, store, 1, 5), 600).unwrap_err();
        assert!(matches!(err, Error::LimitExceeded(_)), "{err}");
        assert!(err.to_string().contains("800 GiB"), "{err}");
        // Restores have their own counter and limit.
        db.admit(&task(&other, TaskKind::Restore, 10, 6), 300)
            .unwrap();
        assert!(db.finish(&big.id, TaskState::Completed, None, 7).unwrap());
        db.admit(&task(&other, store, 1, 8), 600).unwrap();
    }

    #[test]
    fn concurrent_admissions_never_pass_the_limit_and_counters_return_to_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        TaskDb::open(&path).unwrap();
        let me = AccountId::local_default();
        let start = Arc::new(Barrier::new(20));
        let admitted: Vec<Option<TaskId>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..20)
                .map(|i| {
                    let (path, me, start) = (&path, &me, start.clone());
                    s.spawn(move || {
                        let mut db = TaskDb::open(path).unwrap();
                        let t = task(me, TaskKind::Store, 100, i);
                        start.wait();
                        match db.admit(&t, 600) {
                            Ok(()) => Some(t.id),
                            Err(Error::LimitExceeded(_)) => None,
                            Err(e) => panic!("{e}"),
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ids: Vec<TaskId> = admitted.into_iter().flatten().collect();
        // Admitted at 0, 100, …, 500 GiB in progress; never at 600 or more.
        assert_eq!(ids.len(), 6);
        let mut db = TaskDb::open(&path).unwrap();
        assert_eq!(db.in_progress_gib(&me, TaskKind::Store).unwrap(), 600);
        for id in &ids {
            assert!(
                db.finish(id, TaskState::Failed, Some("cancelled"), 99)
                    .unwrap()
            );
        }
        assert_eq!(db.in_progress_gib(&me, TaskKind::Store).unwrap(), 0);
    }

    #[test]
    fn release_and_unit_counting_happen_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = TaskDb::open(&dir.path().join("tasks.db")).unwrap();
        let me = AccountId::local_default();
        let t = task(&me, TaskKind::Store, 50, 10);
        db.admit(&t, 600).unwrap();
        assert!(matches!(db.admit(&t, 600), Err(Error::Duplicate(_))));
        assert_eq!(
            db.in_progress_gib(&me, TaskKind::Store).unwrap(),
            50,
            "a rejected insert rolls back its quota"
        );

        assert!(db.record_unit(&t.id, 0, "{}").unwrap());
        assert!(!db.record_unit(&t.id, 0, "{\"retried\":true}").unwrap());
        assert!(db.record_unit(&t.id, 1, "{}").unwrap());
        let stored = db.get(&t.id).unwrap().unwrap();
        assert_eq!(stored.units_done, 2);
        assert_eq!(
            db.units(&t.id).unwrap(),
            vec![(0, "{}".to_owned()), (1, "{}".to_owned())]
        );

        assert!(
            db.finish(&t.id, TaskState::Failed, Some("disk on fire"), 20)
                .unwrap()
        );
        assert!(
            !db.finish(&t.id, TaskState::Completed, None, 21).unwrap(),
            "a second finish changes nothing"
        );
        assert_eq!(db.in_progress_gib(&me, TaskKind::Store).unwrap(), 0);
        let ended = db.get(&t.id).unwrap().unwrap();
        assert_eq!(
            (
                ended.state,
                ended.failure_reason.as_deref(),
                ended.ended_at_ms
            ),
            (TaskState::Failed, Some("disk on fire"), Some(20))
        );
        assert!(db.finish(&t.id, TaskState::InProgress, None, 22).is_err());
    }

    #[test]
    fn one_store_of_an_image_into_a_bucket_runs_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = TaskDb::open(&dir.path().join("tasks.db")).unwrap();
        let me = AccountId::local_default();
        let first = task(&me, TaskKind::Store, 1, 1);
        db.admit(&first, 600).unwrap();
        let again = Task {
            id: TaskId::fresh(),
            ..first.clone()
        };
        let err = db.admit(&again, 600).unwrap_err();
        assert!(err.to_string().contains("already being stored"), "{err}");
        assert_eq!(db.in_progress_gib(&me, TaskKind::Store).unwrap(), 1);
        let elsewhere = Task {
            id: TaskId::fresh(),
            bucket: "other-bkt".parse().unwrap(),
            ..first.clone()
        };
        db.admit(&elsewhere, 600).unwrap();
        db.finish(&first.id, TaskState::Completed, None, 2).unwrap();
        db.admit(&again, 600).unwrap();

        db.set_upload(&again.id, "up-1").unwrap();
        db.set_units_total(&again.id, 7).unwrap();
        let image = ImageId::fresh();
        db.set_image(&again.id, &image).unwrap();
        let got = db.get(&again.id).unwrap().unwrap();
        assert_eq!(
            (got.upload_id.as_deref(), got.units_total, got.image_id),
            (Some("up-1"), 7, Some(image))
        );
        assert!(matches!(
            db.set_upload(&TaskId::fresh(), "x"),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn listing_is_newest_first_within_31_days_and_per_account() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = TaskDb::open(&dir.path().join("tasks.db")).unwrap();
        let me = AccountId::local_default();
        let day = 24 * 60 * 60 * 1000;
        let old = task(&me, TaskKind::Store, 1, 0);
        let mid = task(&me, TaskKind::Store, 1, 10 * day);
        let new = task(&me, TaskKind::Store, 1, 20 * day);
        for t in [&old, &new, &mid] {
            db.admit(t, 600).unwrap();
        }
        db.admit(
            &task(&"111122223333".parse().unwrap(), TaskKind::Store, 1, 0),
            600,
        )
        .unwrap();
        db.admit(&task(&me, TaskKind::Restore, 1, 0), 300).unwrap();
        let now = 32 * day;
        let listed: Vec<TaskId> = db
            .list(&me, TaskKind::Store, now)
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(
            listed,
            vec![new.id.clone(), mid.id.clone()],
            "31 days on, the oldest is gone"
        );
        assert_eq!(db.in_progress().unwrap().len(), 5);
        assert_eq!(db.list(&me, TaskKind::Store, 0).unwrap().len(), 3);
        assert_eq!(RETENTION_MS, 31 * day);
    }
}

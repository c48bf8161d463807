//! The local task store: tasks, their units and the quota counters in SQLite,
//! with the same conditional, transactional semantics the DynamoDB table has.
//!
//! - Admission is one transaction: add the task's GiB to the account's counter
//!   only if the counter is below the limit, and insert the task. Either both
//!   happen or neither does; it is never a read-then-write.
//! - The end of a task is claimed (a conditional update) before anything with
//!   side effects happens, and the claim's holder alone finishes it: the state
//!   change and the quota release are one transaction, conditioned on the
//!   claim, so release happens exactly once.
//! - A unit is recorded with an insert-if-absent and nothing else; progress
//!   counts the unit rows, so a retried unit is counted once.
//! - At most one store of an image into a bucket is in progress: a partial
//!   unique index refuses the second admission, inside the same transaction.
//!
//! Every write transaction is `BEGIN IMMEDIATE`, so concurrent processes
//! serialise on SQLite's write lock instead of failing on upgrade. Only a busy
//! or locked database is worth retrying; any other SQLite error (a constraint,
//! a damaged schema) fails the same way again and is reported as such.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use amistore_core::ids::{AccountId, ImageId, TaskId};
use amistore_core::ports::{RateLease, TaskStore};
use amistore_core::task::{
    Claim, ClaimRequest, EndClaim, Ending, SourcePin, Task, TaskKind, TaskState,
};
use amistore_core::{Error, Result};
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};

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
    state TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER,
    failure_reason TEXT,
    expires_at_ms INTEGER NOT NULL,
    owner TEXT,
    ending TEXT,
    ending_reason TEXT,
    claimed_at_ms INTEGER,
    source_etag TEXT,
    source_digest TEXT
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
CREATE TABLE IF NOT EXISTS rate_leases (
    account TEXT NOT NULL,
    kind TEXT NOT NULL,
    holder TEXT NOT NULL,
    task_id TEXT NOT NULL,
    rate INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (account, kind, holder)
);
CREATE TABLE IF NOT EXISTS quota (
    account TEXT NOT NULL,
    kind TEXT NOT NULL,
    in_progress_gib INTEGER NOT NULL,
    PRIMARY KEY (account, kind)
);
";

/// Columns added since the first schema, added to databases made before them.
const ADDED_COLUMNS: [(&str, &str); 5] = [
    ("ending", "TEXT"),
    ("ending_reason", "TEXT"),
    ("claimed_at_ms", "INTEGER"),
    ("source_etag", "TEXT"),
    ("source_digest", "TEXT"),
];

const TASK_COLUMNS: &str = "id, kind, account, image_id, bucket, object_key, size_gib, upload_id, \
     units_total, (SELECT COUNT(*) FROM units WHERE units.task_id = tasks.id), state, \
     started_at_ms, ended_at_ms, failure_reason, ending, ending_reason, claimed_at_ms, \
     source_etag, source_digest";

/// The engine's error for a failed SQLite call: retryable only when the
/// database was busy or locked.
fn db(context: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |e| {
        let retryable = matches!(
            e.sqlite_error_code(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        );
        Error::dependency(format!("task database: {context}"), retryable, e)
    }
}

/// The SQLite task store: one connection, shared by the threads of a process
/// (SQLite serialises writers anyway; other processes open their own).
pub struct SqliteTaskStore {
    conn: Mutex<Connection>,
    owner: Option<String>,
}

impl SqliteTaskStore {
    /// Opens (creating if needed) the database at `path`. Tasks it admits are
    /// marked as run by `owner` (a process lease), so recovery can tell a live
    /// task from one whose process died.
    pub fn open(path: &Path, owner: Option<String>) -> Result<Self> {
        // SQLite gives its -wal and -shm files the database's own mode.
        crate::private::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .and_then(|_| crate::private::restrict(path))
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let conn = Connection::open(path).map_err(db("opening"))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(db("configuring"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db("configuring"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db("configuring"))?;
        conn.execute_batch(SCHEMA)
            .map_err(db("creating the schema"))?;
        let present: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('tasks')")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(db("reading the schema"))?;
        for (column, kind) in ADDED_COLUMNS {
            if !present.iter().any(|c| c == column) {
                conn.execute_batch(&format!("ALTER TABLE tasks ADD COLUMN {column} {kind}"))
                    .map_err(db("upgrading the schema"))?;
            }
        }
        Ok(Self {
            conn: Mutex::new(conn),
            owner,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A thread that panicked mid-call left no transaction open (rusqlite
        // rolls back on drop), so the connection is still sound.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands an in-progress task to this store's owner (on resumption).
    pub fn adopt(&self, id: &TaskId) -> Result<()> {
        self.set_column(id, "owner", self.owner.clone().into())
    }

    /// The lease of the process running task `id`, if one has it.
    pub fn owner_of(&self, id: &TaskId) -> Result<Option<String>> {
        self.conn()
            .query_row(
                "SELECT owner FROM tasks WHERE id = ?1",
                params![id.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(db("reading a task's owner"))
    }

    /// Every task in progress with the owner running it, oldest first.
    pub fn in_progress_owners(&self) -> Result<Vec<(Task, Option<String>)>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {TASK_COLUMNS}, owner FROM tasks WHERE state = 'InProgress' ORDER BY started_at_ms"
            ))
            .map_err(db("listing tasks"))?;
        let rows = stmt
            .query_map([], |r| Ok((task_from_row(r)?, r.get(19)?)))
            .map_err(db("listing tasks"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db("listing tasks"))
    }

    fn set_column(&self, id: &TaskId, column: &str, value: rusqlite::types::Value) -> Result<()> {
        let changed = self
            .conn()
            .execute(
                &format!("UPDATE tasks SET {column} = ?2 WHERE id = ?1"),
                params![id.as_str(), value],
            )
            .map_err(db("updating a task"))?;
        if changed == 0 {
            return Err(Error::NotFound(format!("task {id} does not exist").into()));
        }
        Ok(())
    }

    fn tasks_where(&self, condition: &str, args: impl rusqlite::Params) -> Result<Vec<Task>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE {condition}"
            ))
            .map_err(db("listing tasks"))?;
        let rows = stmt
            .query_map(args, task_from_row)
            .map_err(db("listing tasks"))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(db("listing tasks"))
    }
}

fn get_task(conn: &Connection, id: &TaskId) -> Result<Option<Task>> {
    conn.query_row(
        &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
        params![id.as_str()],
        task_from_row,
    )
    .optional()
    .map_err(db("reading a task"))
}

impl TaskStore for SqliteTaskStore {
    fn admit(&self, task: &Task, limit_gib: u64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
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
            ).into()));
        }
        let inserted = tx.execute(
            "INSERT INTO tasks (id, kind, account, image_id, bucket, object_key, size_gib, upload_id,
                                units_total, state, started_at_ms, expires_at_ms, owner,
                                source_etag, source_digest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
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
                task.state.as_str(),
                task.started_at_ms,
                task.expires_at_ms(),
                self.owner,
                task.source.as_ref().map(|s| s.etag.as_str()),
                task.source.as_ref().map(|s| s.manifest_digest.as_str()),
            ],
        );
        match inserted {
            Ok(_) => tx.commit().map_err(db("committing admission")),
            Err(rusqlite::Error::SqliteFailure(e, msg))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                let copy = msg.as_deref().is_some_and(|m| m.contains("image_id"));
                Err(Error::AlreadyExists(match (copy, &task.image_id) {
                    (true, Some(image)) => format!(
                        "image {image} is already being stored in bucket {}; an AMI can be stored once per bucket",
                        task.bucket
                    ),
                    _ => format!("task {} already exists", task.id),
                }.into()))
            }
            Err(e) => Err(db("storing the task")(e)),
        }
    }

    fn get(&self, id: &TaskId) -> Result<Option<Task>> {
        get_task(&self.conn(), id)
    }

    fn set_upload(&self, id: &TaskId, upload_id: &str) -> Result<()> {
        self.set_column(id, "upload_id", upload_id.to_owned().into())
    }

    fn set_image(&self, id: &TaskId, image: &ImageId) -> Result<()> {
        self.set_column(id, "image_id", image.to_string().into())
    }

    fn set_units_total(&self, id: &TaskId, units: u64) -> Result<()> {
        self.set_column(id, "units_total", (units as i64).into())
    }

    fn record_unit(&self, id: &TaskId, unit: u64, record_json: &str) -> Result<bool> {
        let new = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO units VALUES (?1, ?2, ?3)",
                params![id.as_str(), unit as i64, record_json],
            )
            .map_err(db("recording a unit"))?;
        Ok(new == 1)
    }

    fn unit_recorded(&self, id: &TaskId, unit: u64) -> Result<bool> {
        self.conn()
            .query_row(
                "SELECT 1 FROM units WHERE task_id = ?1 AND unit = ?2",
                params![id.as_str(), unit as i64],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(db("reading a unit"))
    }

    fn units(&self, id: &TaskId) -> Result<Vec<(u64, String)>> {
        let conn = self.conn();
        let mut stmt = conn
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

    fn claim_end(&self, id: &TaskId, request: &ClaimRequest<'_>) -> Result<Claim> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting a claim"))?;
        let task = get_task(&tx, id)?
            .ok_or_else(|| Error::NotFound(format!("task {id} does not exist").into()))?;
        if task.state != TaskState::InProgress {
            return Ok(Claim::Taken(task));
        }
        let held = match &task.claim {
            None => false,
            Some(c) if c.ending == request.ending => return Ok(Claim::Held(task)),
            Some(c) => request
                .overrule_before_ms
                .is_none_or(|before| c.at_ms >= before),
        };
        if held {
            return Ok(Claim::Taken(task));
        }
        let reason = match request.ending {
            Ending::Fail => request.reason,
            Ending::Complete => None,
        };
        tx.execute(
            "UPDATE tasks SET ending = ?2, ending_reason = ?3, claimed_at_ms = ?4 WHERE id = ?1",
            params![id.as_str(), request.ending.as_str(), reason, request.now_ms],
        )
        .map_err(db("claiming a task's end"))?;
        tx.commit().map_err(db("committing a claim"))?;
        Ok(Claim::Held(Task {
            claim: Some(EndClaim {
                ending: request.ending,
                reason: reason.map(str::to_owned),
                at_ms: request.now_ms,
            }),
            ..task
        }))
    }

    fn finish(&self, id: &TaskId, ending: Ending, now_ms: i64) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("starting to finish a task"))?;
        let ended = tx
            .execute(
                "UPDATE tasks SET state = ?2, ended_at_ms = ?3,
                        failure_reason = CASE WHEN ?2 = 'Failed' THEN ending_reason END
                 WHERE id = ?1 AND state = 'InProgress' AND ending = ?4",
                params![
                    id.as_str(),
                    ending.final_state().as_str(),
                    now_ms,
                    ending.as_str()
                ],
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

    /// An account's tasks of `kind` started in the last 31 days, newest first.
    /// (The read-time filter matters on AWS too: TTL deletion lags.)
    fn list(&self, account: &AccountId, kind: TaskKind, now_ms: i64) -> Result<Vec<Task>> {
        self.tasks_where(
            "account = ?1 AND kind = ?2 AND expires_at_ms > ?3 ORDER BY started_at_ms DESC, id DESC",
            params![account.as_str(), kind.as_str(), now_ms],
        )
    }

    fn in_progress(&self) -> Result<Vec<Task>> {
        self.tasks_where("state = 'InProgress' ORDER BY started_at_ms", [])
    }

    fn in_progress_gib(&self, account: &AccountId, kind: TaskKind) -> Result<u64> {
        let gib: Option<i64> = self
            .conn()
            .query_row(
                "SELECT in_progress_gib FROM quota WHERE account = ?1 AND kind = ?2",
                params![account.as_str(), kind.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("reading the quota"))?;
        Ok(gib.unwrap_or(0).max(0) as u64)
    }

    fn counters(&self) -> Result<Vec<(AccountId, TaskKind, u64)>> {
        let rows: Vec<(String, String, i64)> = {
            let conn = self.conn();
            let mut stmt = conn
                .prepare("SELECT account, kind, in_progress_gib FROM quota ORDER BY account, kind")
                .map_err(db("reading the counters"))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .and_then(|rows| rows.collect())
                .map_err(db("reading the counters"))?
        };
        rows.into_iter()
            .map(|(account, kind, gib)| {
                let kind = TaskKind::parse(&kind).ok_or_else(|| {
                    Error::Malformed(
                        format!("the quota table holds an unknown kind {kind:?}").into(),
                    )
                })?;
                Ok((account.parse()?, kind, gib.max(0) as u64))
            })
            .collect()
    }

    fn correct_counter(
        &self,
        account: &AccountId,
        kind: TaskKind,
        from: u64,
        to: u64,
    ) -> Result<bool> {
        let changed = self
            .conn()
            .execute(
                "UPDATE quota SET in_progress_gib = ?4 WHERE account = ?1 AND kind = ?2 AND in_progress_gib = ?3",
                params![account.as_str(), kind.as_str(), from as i64, to as i64],
            )
            .map_err(db("correcting a counter"))?;
        Ok(changed == 1)
    }

    fn renew_lease(
        &self,
        account: &AccountId,
        kind: TaskKind,
        lease: &RateLease,
        now_ms: i64,
    ) -> Result<Vec<RateLease>> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("renewing a lease"))?;
        let budget = params![account.as_str(), kind.as_str()];
        // Lapsed leases are removed here, by whoever renews next.
        tx.execute(
            "DELETE FROM rate_leases WHERE account = ?1 AND kind = ?2 AND expires_ms <= ?3",
            params![account.as_str(), kind.as_str(), now_ms],
        )
        .map_err(db("renewing a lease"))?;
        tx.execute(
            "INSERT OR REPLACE INTO rate_leases VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                account.as_str(),
                kind.as_str(),
                lease.holder,
                lease.task.as_str(),
                i64::from(lease.rate),
                lease.expires_ms
            ],
        )
        .map_err(db("renewing a lease"))?;
        let leases = tx
            .prepare(
                "SELECT holder, task_id, rate, expires_ms FROM rate_leases
                 WHERE account = ?1 AND kind = ?2 ORDER BY holder",
            )
            .and_then(|mut q| {
                q.query_map(budget, |r| {
                    Ok(RateLease {
                        holder: r.get(0)?,
                        task: parsed(r.get::<_, String>(1)?.parse(), 1)?,
                        rate: r.get(2)?,
                        expires_ms: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(db("reading the leases"))?;
        tx.commit().map_err(db("renewing a lease"))?;
        Ok(leases)
    }

    fn drop_lease(&self, account: &AccountId, kind: TaskKind, holder: &str) -> Result<()> {
        self.conn()
            .execute(
                "DELETE FROM rate_leases WHERE account = ?1 AND kind = ?2 AND holder = ?3",
                params![account.as_str(), kind.as_str(), holder],
            )
            .map_err(db("dropping a lease"))?;
        Ok(())
    }
}

fn parsed<T>(value: Result<T>, column: usize) -> rusqlite::Result<T> {
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
    let claim = match r.get::<_, Option<String>>(14)? {
        Some(ending) => Some(EndClaim {
            ending: Ending::parse(&ending).ok_or_else(|| bad(14, "ending"))?,
            reason: r.get(15)?,
            at_ms: r.get::<_, Option<i64>>(16)?.unwrap_or(0),
        }),
        None => None,
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
        claim,
        source: match (
            r.get::<_, Option<String>>(17)?,
            r.get::<_, Option<String>>(18)?,
        ) {
            (Some(etag), Some(manifest_digest)) => Some(SourcePin {
                etag,
                manifest_digest,
            }),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn claim(ending: Ending, reason: Option<&str>) -> ClaimRequest<'_> {
        ClaimRequest {
            ending,
            reason,
            overrule_before_ms: None,
            now_ms: 5,
        }
    }

    #[test]
    fn concurrent_admissions_never_pass_the_limit_and_counters_return_to_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        SqliteTaskStore::open(&path, None).unwrap();
        let me = AccountId::local_default();
        let start = Arc::new(Barrier::new(20));
        // One store per thread, as one process each would open it.
        let admitted: Vec<Option<TaskId>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..20)
                .map(|i| {
                    let (path, me, start) = (&path, &me, start.clone());
                    s.spawn(move || {
                        let db = SqliteTaskStore::open(path, None).unwrap();
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
        let db = SqliteTaskStore::open(&path, None).unwrap();
        assert_eq!(db.in_progress_gib(&me, TaskKind::Store).unwrap(), 600);
        for id in &ids {
            assert!(matches!(
                db.claim_end(id, &claim(Ending::Fail, Some("cancelled"))),
                Ok(Claim::Held(_))
            ));
            assert!(db.finish(id, Ending::Fail, 99).unwrap());
        }
        assert_eq!(db.in_progress_gib(&me, TaskKind::Store).unwrap(), 0);
    }

    #[test]
    fn a_database_made_before_claims_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        {
            // The first schema: no claim columns, a units_done counter.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE tasks (id TEXT PRIMARY KEY, kind TEXT NOT NULL, account TEXT NOT NULL,
                    image_id TEXT, bucket TEXT NOT NULL, object_key TEXT NOT NULL, size_gib INTEGER NOT NULL,
                    upload_id TEXT, units_total INTEGER NOT NULL, units_done INTEGER NOT NULL DEFAULT 0,
                    state TEXT NOT NULL, started_at_ms INTEGER NOT NULL, ended_at_ms INTEGER,
                    failure_reason TEXT, expires_at_ms INTEGER NOT NULL, owner TEXT);
                 INSERT INTO tasks VALUES ('task-0123456789abcdef0', 'store', '000000000000', NULL,
                    'bkt', 'x.bin', 3, NULL, 2, 2, 'InProgress', 1, NULL, NULL, 99999999999, NULL);",
            )
            .unwrap();
        }
        let db = SqliteTaskStore::open(&path, None).unwrap();
        let id: TaskId = "task-0123456789abcdef0".parse().unwrap();
        let old = db.get(&id).unwrap().unwrap();
        assert_eq!(
            (old.state, old.claim.clone(), old.units_total),
            (TaskState::InProgress, None, 2)
        );
        assert!(matches!(
            db.claim_end(&id, &claim(Ending::Fail, Some("upgraded")))
                .unwrap(),
            Claim::Held(_)
        ));
    }

    #[test]
    fn only_a_busy_database_is_worth_retrying() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.db");
        let store = SqliteTaskStore::open(&path, None).unwrap();
        // A constraint or schema error fails the same way again.
        let broken = store
            .conn()
            .execute("INSERT INTO units VALUES (NULL, 1, '{}')", [])
            .map_err(db("recording a unit"))
            .unwrap_err();
        assert!(!broken.is_retryable(), "{broken}");
        assert!(
            std::error::Error::source(&broken).is_some(),
            "the cause is kept"
        );
        // A database locked by another writer for longer than the busy timeout is.
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let conn = Connection::open(&path).unwrap();
        conn.busy_timeout(Duration::from_millis(10)).unwrap();
        let busy = conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(db("starting"))
            .unwrap_err();
        assert!(busy.is_retryable(), "{busy}");
    }
}

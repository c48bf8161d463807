//! The workflow steps as the state machines call them: a JSON payload in, a JSON
//! result out, and on failure an error *name* that the machines' `Retry` and
//! `Catch` clauses match exactly (Step Functions matches a Lambda's `errorType`).
//!
//! Payload: `{"step": "<name>", "taskId": "task-…", "unit": n?, "error": {...}?}`.
//! Steps: `store.plan`, `store.unit`, `store.finalize`, `store.fail`, and the same
//! four for `restore`. The Lambda functions and the local runner both call
//! [`run_step`], so a local run exercises exactly what the deployment runs.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::{Engine, FailedBy};
use crate::ids::TaskId;
use crate::task::TaskKind;
use crate::{Error, Result};

/// Work-store name of a task's Map item list.
pub const ITEMS: &str = "units.json";

/// The error name of failures that may pass on retry (throttling, I/O).
pub const RETRYABLE: &str = "Retryable";
/// The error name of failures that will not (bad data, a missing image).
pub const FATAL: &str = "Fatal";
/// Every error name a step reports.
pub const ERROR_NAMES: [&str; 2] = [RETRYABLE, FATAL];

/// A step's failure, as a Lambda function reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    /// [`RETRYABLE`] or [`FATAL`].
    pub name: &'static str,
    /// What went wrong, readable: it becomes the task's failure reason.
    pub cause: String,
}

impl From<Error> for StepError {
    fn from(e: Error) -> Self {
        Self {
            name: if e.is_retryable() { RETRYABLE } else { FATAL },
            cause: e.to_string(),
        }
    }
}

/// The `Error`/`Cause` pair a `Catch` puts into the state.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CaughtError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    cause: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StepInput {
    step: String,
    task_id: TaskId,
    #[serde(default)]
    unit: Option<u64>,
    #[serde(default)]
    error: Option<CaughtError>,
}

/// The readable reason a failed task records, from what a `Catch` caught
/// (in a unit's own execution, when `unit` is given: a Distributed Map's
/// failure does not carry its items' errors).
fn failure_reason(unit: Option<u64>, error: Option<CaughtError>) -> String {
    let reason = caught_reason(error);
    match unit {
        // A unit's own error may name it already ("unit 3 is corrupt: …").
        Some(unit) if reason.starts_with(&format!("unit {unit} ")) => reason,
        Some(unit) => format!("unit {unit}: {reason}"),
        None => reason,
    }
}

fn caught_reason(error: Option<CaughtError>) -> String {
    match error {
        Some(e) if !e.cause.is_empty() => {
            // A Lambda's cause is its error JSON; show its message.
            serde_json::from_str::<Value>(&e.cause)
                .ok()
                .and_then(|v| {
                    v.get("errorMessage")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or(e.cause)
        }
        Some(e) if !e.error.is_empty() => e.error,
        _ => "the workflow failed".into(),
    }
}

/// Runs the step `input` names.
pub fn run_step(engine: &Engine, input: &Value) -> Result<Value, StepError> {
    let input: StepInput = serde_json::from_value(input.clone()).map_err(|e| StepError {
        name: FATAL,
        cause: format!("step input is not valid: {e}"),
    })?;
    let id = &input.task_id;
    let unit = || {
        input.unit.ok_or_else(|| StepError {
            name: FATAL,
            cause: format!("step {} needs a unit", input.step),
        })
    };
    match input.step.as_str() {
        "store.plan" => plan(engine, TaskKind::Store, id),
        "restore.plan" => plan(engine, TaskKind::Restore, id),
        "store.unit" => Ok(engine.store_unit(id, unit()?).map(|()| Value::Null)?),
        "restore.unit" => Ok(engine.restore_unit(id, unit()?).map(|()| Value::Null)?),
        "store.finalize" => Ok(engine.finalize_store(id).map(|()| Value::Null)?),
        "restore.finalize" => Ok(engine.finalize_restore(id).map(|()| Value::Null)?),
        "store.fail" => Ok(engine
            .fail_store(
                id,
                &failure_reason(input.unit, input.error),
                FailedBy::Workflow,
            )
            .map(|_| Value::Null)?),
        "restore.fail" => Ok(engine
            .fail_restore(
                id,
                &failure_reason(input.unit, input.error),
                FailedBy::Workflow,
            )
            .map(|_| Value::Null)?),
        other => Err(StepError {
            name: FATAL,
            cause: format!("unknown step {other:?}"),
        }),
    }
}

/// Plans a task and writes its Map items (`[{"unit": 0}, …]`) to the work
/// store, where a Distributed Map's ItemReader reads them: a 10,000-unit list
/// would not fit in a state's 256 KiB.
fn plan(engine: &Engine, kind: TaskKind, id: &TaskId) -> Result<Value, StepError> {
    let units = match kind {
        TaskKind::Store => engine.plan_store(id)?,
        TaskKind::Restore => engine.plan_restore(id)?,
    };
    let items: Vec<Value> = (0..units).map(|u| json!({ "unit": u })).collect();
    let key = engine.put_work(id, ITEMS, &items)?;
    Ok(json!({
        "units": units,
        "itemsBucket": engine.config.work_bucket.as_str(),
        "itemsKey": key.as_str(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_come_from_the_caught_cause() {
        let caught = |e: &str, c: &str| {
            Some(CaughtError {
                error: e.into(),
                cause: c.into(),
            })
        };
        assert_eq!(
            failure_reason(
                None,
                caught(
                    "Fatal",
                    r#"{"errorType":"Fatal","errorMessage":"snapshot gone"}"#
                )
            ),
            "snapshot gone"
        );
        assert_eq!(
            failure_reason(Some(7), caught("Fatal", "plain words")),
            "unit 7: plain words"
        );
        assert_eq!(
            failure_reason(None, caught("States.Timeout", "")),
            "States.Timeout"
        );
        assert_eq!(failure_reason(None, None), "the workflow failed");
        let e: StepError = Error::Transient("throttled".into()).into();
        assert_eq!(e.name, RETRYABLE);
        let e: StepError = Error::NotFound("gone".into()).into();
        assert_eq!((e.name, e.cause.as_str()), (FATAL, "gone"));
    }
}

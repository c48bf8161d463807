//! Step Functions task input in, a step's result out.
//!
//! A failed step reports its error *name* as the Lambda `errorType`; the state
//! machines' `Retry` and `Catch` match those names exactly. [`ERROR_NAMES`] is
//! every name a function reports; `infra/` tests that the definitions match
//! nothing else (besides the Lambda service's and `States.*`).

use std::sync::Arc;

use amistore_core::engine::Engine;
use amistore_core::engine::steps::{self, StepError};
use serde_json::Value;

/// Every error name a function reports: the steps' own.
pub const ERROR_NAMES: [&str; 2] = steps::ERROR_NAMES;

/// A failed invocation: what the Lambda runtime reports as `errorType` and
/// `errorMessage`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {cause}")]
pub struct StepFailure {
    /// One of [`ERROR_NAMES`].
    pub name: &'static str,
    /// What went wrong.
    pub cause: String,
}

impl From<StepError> for StepFailure {
    fn from(e: StepError) -> Self {
        Self {
            name: e.name,
            cause: e.cause,
        }
    }
}

impl From<StepFailure> for lambda_runtime::Diagnostic {
    fn from(f: StepFailure) -> Self {
        lambda_runtime::Diagnostic {
            error_type: f.name.into(),
            error_message: f.cause,
        }
    }
}

/// Runs the step `input` names if it is one of `steps` (the ones `function`
/// runs); any other is a `Fatal` failure naming what the function runs.
pub async fn run_one_of(
    engine: Arc<Engine>,
    input: Value,
    function: &str,
    steps: &[&str],
) -> Result<Value, StepFailure> {
    let name = input.get("step").and_then(Value::as_str);
    if !name.is_some_and(|n| steps.contains(&n)) {
        return Err(StepFailure {
            name: steps::FATAL,
            cause: format!("{function} runs {steps:?}, not {name:?}"),
        });
    }
    run(engine, input).await
}

/// Runs the step `input` names (`{"step": …, "taskId": …, "unit"?: …}`).
pub async fn run(engine: Arc<Engine>, input: Value) -> Result<Value, StepFailure> {
    let step = input.get("step").and_then(Value::as_str).map(str::to_owned);
    let task = input
        .get("taskId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let unit = input.get("unit").and_then(Value::as_u64);
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || steps::run_step(&engine, &input))
        .await
        .map_err(|e| StepFailure {
            // A panic is a bug; retrying it would only repeat it.
            name: steps::FATAL,
            cause: format!("the step failed: {e}"),
        })?
        .map_err(StepFailure::from);
    tracing::info!(
        event = "step",
        step,
        taskId = task,
        unit,
        ok = result.is_ok(),
        error = result.as_ref().err().map(|e| e.name),
        cause = result.as_ref().err().map(|e| e.cause.as_str()),
        ms = started.elapsed().as_millis() as u64,
    );
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Every `ErrorEquals` name in `value`.
    fn error_names(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "ErrorEquals" {
                        out.extend(
                            v.as_array()
                                .unwrap()
                                .iter()
                                .map(|n| n.as_str().unwrap().to_owned()),
                        );
                    } else {
                        error_names(v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| error_names(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_state_machines_match_only_names_a_function_reports() {
        for (file, text) in [
            (
                "store",
                include_str!("../../../infra/statemachine/store.asl.json"),
            ),
            (
                "restore",
                include_str!("../../../infra/statemachine/restore.asl.json"),
            ),
        ] {
            let mut names = Vec::new();
            error_names(&serde_json::from_str(text).unwrap(), &mut names);
            assert!(
                names.iter().any(|n| n == "Retryable"),
                "{file} retries Retryable"
            );
            for name in &names {
                let ours = ERROR_NAMES.contains(&name.as_str());
                // The Lambda service's own failures, and Step Functions' wildcards.
                let service = name.starts_with("Lambda.") || name.starts_with("States.");
                assert!(
                    ours || service,
                    "{file}.asl.json matches {name:?}, which no function reports"
                );
            }
        }
        // And what a function reports is exactly its name, as errorType.
        for name in ERROR_NAMES {
            let d: lambda_runtime::Diagnostic = StepFailure {
                name,
                cause: "x".into(),
            }
            .into();
            assert_eq!(d.error_type, name);
        }
    }

    #[test]
    fn engine_errors_map_to_retryable_or_fatal() {
        let transient = StepFailure::from(StepError::from(amistore_core::Error::Transient(
            "SlowDown".into(),
        )));
        assert_eq!(transient.name, "Retryable");
        let fatal = StepFailure::from(StepError::from(amistore_core::Error::NotFound(
            "no such image".into(),
        )));
        assert_eq!(
            (fatal.name, fatal.cause.as_str()),
            ("Fatal", "no such image")
        );
    }
}

//! [`WorkflowRunner`] over Step Functions: one execution per task, named after
//! it (so a retried start starts nothing new), stopped on cancel, described by
//! the sweeper.

use amistore_core::ids::TaskId;
use amistore_core::ports::{ExecutionStatus, WorkflowRunner};
use amistore_core::task::TaskKind;
use amistore_core::{Error, Result};
use aws_sdk_sfn::Client;
use aws_sdk_sfn::types::ExecutionStatus as SfnStatus;

use crate::bridge::Bridge;
use crate::error::sdk;
use aws_sdk_sfn::error::ProvideErrorMetadata;

/// Step Functions as the engine's workflow runner.
#[derive(Clone, Debug)]
pub struct StepFunctionsRunner {
    client: Client,
    bridge: Bridge,
    store_machine: String,
    restore_machine: String,
    unit_concurrency: u32,
}

impl StepFunctionsRunner {
    /// A runner starting `store_machine` and `restore_machine` (state machine
    /// ARNs), each execution transferring at most `unit_concurrency` units at
    /// once (the Map's `MaxConcurrencyPath` reads it from the input).
    pub fn new(
        client: Client,
        bridge: Bridge,
        store_machine: impl Into<String>,
        restore_machine: impl Into<String>,
        unit_concurrency: u32,
    ) -> Self {
        Self {
            client,
            bridge,
            store_machine: store_machine.into(),
            restore_machine: restore_machine.into(),
            unit_concurrency,
        }
    }

    fn machine(&self, kind: TaskKind) -> &str {
        match kind {
            TaskKind::Store => &self.store_machine,
            TaskKind::Restore => &self.restore_machine,
        }
    }

    /// The ARN of `task`'s execution: the machine's ARN with `stateMachine`
    /// replaced by `execution` and the execution name appended.
    pub fn execution_arn(&self, kind: TaskKind, task: &TaskId) -> Result<String> {
        let machine = self.machine(kind);
        let (head, name) = machine.split_once(":stateMachine:").ok_or_else(|| {
            Error::InvalidInput(format!("{machine:?} is not a state machine ARN").into())
        })?;
        Ok(format!("{head}:execution:{name}:{task}"))
    }
}

impl WorkflowRunner for StepFunctionsRunner {
    fn start(&self, kind: TaskKind, task: &TaskId) -> Result<()> {
        let input = serde_json::json!({
            "taskId": task.as_str(),
            "unitConcurrency": self.unit_concurrency,
        })
        .to_string();
        let call = self
            .client
            .start_execution()
            .state_machine_arn(self.machine(kind))
            .name(task.as_str())
            .input(input)
            .send();
        match self.bridge.run(call) {
            Ok(_) => Ok(()),
            // Same name, same input: the execution this task already has.
            Err(e) if e.code() == Some("ExecutionAlreadyExists") => Ok(()),
            Err(e) => Err(sdk(format_args!("starting the workflow of {task}"), e)),
        }
    }

    fn status(&self, kind: TaskKind, task: &TaskId) -> Result<ExecutionStatus> {
        let call = self
            .client
            .describe_execution()
            .execution_arn(self.execution_arn(kind, task)?)
            .send();
        match self.bridge.run(call) {
            Ok(out) => Ok(match out.status() {
                SfnStatus::Running | SfnStatus::PendingRedrive => ExecutionStatus::Running,
                _ => ExecutionStatus::Ended,
            }),
            Err(e) if e.code() == Some("ExecutionDoesNotExist") => Ok(ExecutionStatus::Missing),
            Err(e) => Err(sdk(format_args!("describing the workflow of {task}"), e)),
        }
    }

    fn stop(&self, kind: TaskKind, task: &TaskId, cause: &str) -> Result<()> {
        let call = self
            .client
            .stop_execution()
            .execution_arn(self.execution_arn(kind, task)?)
            .error("Cancelled")
            .cause(cause)
            .send();
        match self.bridge.run(call) {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ExecutionDoesNotExist") => Ok(()),
            Err(e) => Err(sdk(format_args!("stopping the workflow of {task}"), e)),
        }
    }
}

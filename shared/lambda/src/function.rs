//! The five Lambda functions of the deployment: what each is called in
//! `infra/template.yaml`, which environment variables it reads (exactly those
//! the template gives it; a test compares), which API actions its routes
//! serve and which workflow steps it runs.

use std::fmt;

/// One of the deployment's functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Function {
    /// The create and cancel routes of the HTTP API.
    Intake,
    /// The describe routes of the HTTP API.
    Describe,
    /// The plan and unit steps.
    ChunkTransfer,
    /// The finalize and fail steps.
    Finalize,
    /// The sweep and archive-policy schedules.
    Sweeper,
}

/// Variables every function reads.
const COMMON: [&str; 3] = [
    "AMISTORE_TABLE",
    "AMISTORE_WORK_BUCKET",
    "AMISTORE_ACCOUNT_ID",
];

/// Variables of a function that admits tasks and starts their executions.
const STARTS_TASKS: [&str; 6] = [
    "AMISTORE_STORE_LIMIT_GIB",
    "AMISTORE_RESTORE_LIMIT_GIB",
    "AMISTORE_STORE_STATE_MACHINE",
    "AMISTORE_RESTORE_STATE_MACHINE",
    "AMISTORE_UNITS_PER_TASK",
    "AMISTORE_RESERVED_UNIT_CONCURRENCY",
];

impl Function {
    /// Every function.
    pub const ALL: [Function; 5] = [
        Function::Intake,
        Function::Describe,
        Function::ChunkTransfer,
        Function::Finalize,
        Function::Sweeper,
    ];

    /// Its binary's name (`functions/<name>`, `target/lambda/<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Function::Intake => "intake",
            Function::Describe => "describe",
            Function::ChunkTransfer => "chunk-transfer",
            Function::Finalize => "finalize",
            Function::Sweeper => "sweeper",
        }
    }

    /// Its resource's logical id in `infra/template.yaml`.
    pub fn logical_id(self) -> &'static str {
        match self {
            Function::Intake => "IntakeFunction",
            Function::Describe => "DescribeFunction",
            Function::ChunkTransfer => "ChunkTransferFunction",
            Function::Finalize => "FinalizeFunction",
            Function::Sweeper => "SweeperFunction",
        }
    }

    /// Every environment variable it reads, and no other.
    pub fn environment(self) -> Vec<&'static str> {
        let own: &[&str] = match self {
            Function::Intake => &STARTS_TASKS,
            Function::Describe => &["AMISTORE_TOKEN_SECRET_ARN"],
            Function::ChunkTransfer => &[
                "AMISTORE_EBS_REQUESTS_PER_SECOND",
                "AMISTORE_EBS_ACCOUNT_REQUESTS_PER_SECOND",
                "AMISTORE_EBS_CONCURRENCY",
            ],
            Function::Finalize => &[],
            Function::Sweeper => &[
                STARTS_TASKS[0],
                STARTS_TASKS[1],
                STARTS_TASKS[2],
                STARTS_TASKS[3],
                STARTS_TASKS[4],
                STARTS_TASKS[5],
                "AMISTORE_SWEEP_GRACE_SECONDS",
            ],
        };
        COMMON.iter().chain(own).copied().collect()
    }

    /// The API actions its routes serve (`POST /<Action>`), none for a
    /// function that serves no route.
    pub fn actions(self) -> &'static [&'static str] {
        match self {
            Function::Intake => &[
                "CreateStoreImageTask",
                "CreateRestoreImageTask",
                "CancelStoreImageTask",
            ],
            Function::Describe => &["DescribeStoreImageTasks", "DescribeRestoreImageTasks"],
            _ => &[],
        }
    }

    /// The workflow steps it runs (the state machines' Task states that name
    /// its ARN), none for a function no workflow calls.
    pub fn steps(self) -> &'static [&'static str] {
        match self {
            Function::ChunkTransfer => {
                &["store.plan", "store.unit", "restore.plan", "restore.unit"]
            }
            Function::Finalize => &[
                "store.finalize",
                "store.fail",
                "restore.finalize",
                "restore.fail",
            ],
            _ => &[],
        }
    }

    /// Whether it starts executions (and so needs the state machines).
    pub fn starts_tasks(self) -> bool {
        matches!(self, Function::Intake | Function::Sweeper)
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

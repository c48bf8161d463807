//! What amistore's Lambda functions share. Each function's `main.rs` is one
//! call, [`run`], with its [`Function`]: the engine is built once per cold
//! start ([`deployment::connect`]) and every event goes to [`handle`], which
//! hands it to one of:
//!
//! - [`http_api`]: API Gateway HTTP API events (payload 2.0) in, EC2 Query
//!   protocol answers out, the caller's account taken from the IAM authorizer,
//!   the route's action the only one served;
//! - [`step`]: Step Functions task input in, a step's result out; failures
//!   carry the error names the state machines match ([`step::ERROR_NAMES`]);
//! - [`schedule`]: EventBridge events for the sweeper and archive policies.
//!
//! The engine is synchronous; every call runs it on a blocking thread, where
//! the AWS adapters may block on the runtime.

pub mod deployment;
pub mod function;
pub mod http_api;
pub mod schedule;
pub mod step;
#[cfg(feature = "testing")]
pub mod testing;

use serde_json::Value;

pub use deployment::Deployment;
pub use function::Function;
use step::StepFailure;

/// A function's whole life: connect once, then answer events until the
/// runtime stops.
pub async fn run(function: Function) -> Result<(), lambda_runtime::Error> {
    // JSON lines on stdout, which Lambda sends to CloudWatch Logs; the
    // runtime's span gives every event of an invocation its `requestId`.
    amistore_api::logs::init(std::io::stdout, &["AWS_LAMBDA_LOG_LEVEL", "RUST_LOG"]);
    let deployment = std::sync::Arc::new(deployment::connect(function).await?);
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<Value>| {
            let deployment = deployment.clone();
            async move { handle(&deployment, event.payload).await }
        },
    ))
    .await
}

/// Answers one event for `deployment`'s function.
pub async fn handle(deployment: &Deployment, payload: Value) -> Result<Value, StepFailure> {
    let engine = deployment.engine.clone();
    let function = deployment.function;
    let answer = match function {
        Function::Intake | Function::Describe => {
            to_value(http_api::answer_event(engine, payload, function.actions()).await?)
        }
        Function::ChunkTransfer | Function::Finalize => {
            step::run_one_of(engine, payload, function.name(), function.steps()).await?
        }
        Function::Sweeper => to_value(
            schedule::run_event(
                engine,
                payload,
                Some(deployment.account.clone()),
                deployment.sweep_grace_ms,
            )
            .await?,
        ),
    };
    Ok(answer)
}

fn to_value(answer: impl serde::Serialize) -> Value {
    serde_json::to_value(answer).unwrap_or_else(|e| {
        // Our own types always serialise; say so if one ever does not.
        serde_json::json!({ "error": format!("the answer does not serialise: {e}") })
    })
}

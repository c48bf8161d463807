//! EventBridge events: the sweeper's schedule and the archive policies'.
//!
//! The sweep rule sends the plain scheduled event; an archive policy's rule
//! sends a constant input `{"archivePolicy": {"tag": "K=V", "bucket": "b/p"}}`.
//! A sweep covers every account's tasks; a policy stores the images of the
//! account its input names, or else of the deployment's.

use std::sync::Arc;

use amistore_core::engine::sweep::{ArchivePolicy, PolicyReport, SweepReport};
use amistore_core::engine::{Engine, now_ms};
use amistore_core::ids::AccountId;
use aws_lambda_events::cloudwatch_events::CloudWatchEvent;
use serde::{Deserialize, Serialize};

use crate::step::StepFailure;

/// What the sweeper function receives.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ScheduleEvent {
    /// An archive policy rule's constant input.
    Policy {
        /// The policy.
        #[serde(rename = "archivePolicy")]
        archive_policy: ArchivePolicy,
        /// The account whose images it stores (the deployment's when absent).
        #[serde(default)]
        account: Option<AccountId>,
    },
    /// EventBridge's scheduled event.
    Scheduled(ScheduledEvent),
}

/// EventBridge's `Scheduled Event` (EventBridge is CloudWatch Events renamed;
/// the event's shape is the same).
pub type ScheduledEvent = CloudWatchEvent;

/// What the sweeper did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleOutcome {
    /// The sweep's report, if this was a sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepReport>,
    /// What an archive policy run did, if this was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyReport>,
}

/// Runs what a Lambda event's payload asks for (see [`run`]); a payload that is
/// neither event is a `Fatal` failure.
pub async fn run_event(
    engine: Arc<Engine>,
    payload: serde_json::Value,
    deployment_account: Option<AccountId>,
    grace_ms: i64,
) -> Result<ScheduleOutcome, StepFailure> {
    let event: ScheduleEvent = serde_json::from_value(payload).map_err(|e| StepFailure {
        name: amistore_core::engine::steps::FATAL,
        cause: format!("the event is neither a scheduled event nor an archive policy: {e}"),
    })?;
    run(engine, event, deployment_account, grace_ms).await
}

/// Runs a sweep (leaving tasks younger than `grace_ms` alone) or an archive
/// policy. `deployment_account` is the account the functions run in.
pub async fn run(
    engine: Arc<Engine>,
    event: ScheduleEvent,
    deployment_account: Option<AccountId>,
    grace_ms: i64,
) -> Result<ScheduleOutcome, StepFailure> {
    let outcome = tokio::task::spawn_blocking(move || match event {
        ScheduleEvent::Scheduled(e) => {
            let (detail_type, source) = (e.detail_type.as_deref(), e.source.as_deref());
            if detail_type != Some("Scheduled Event") || source != Some("aws.events") {
                return Err(amistore_core::Error::InvalidInput(
                    format!(
                        "the sweeper runs on scheduled events, not {} from {}",
                        quoted(detail_type),
                        quoted(source)
                    )
                    .into(),
                ));
            }
            Ok(ScheduleOutcome {
                sweep: Some(engine.sweep(now_ms(), grace_ms)?),
                policy: None,
            })
        }
        ScheduleEvent::Policy {
            archive_policy,
            account,
        } => {
            let account = account.or(deployment_account).ok_or_else(|| {
                amistore_core::Error::InvalidInput(
                    "the archive policy names no account and the deployment's is unknown".into(),
                )
            })?;
            Ok(ScheduleOutcome {
                sweep: None,
                policy: Some(engine.apply_archive_policy(&account, &archive_policy)?),
            })
        }
    })
    .await
    .map_err(|e| StepFailure {
        name: amistore_core::engine::steps::FATAL,
        cause: format!("the sweeper failed: {e}"),
    })?
    .map_err(|e| StepFailure::from(amistore_core::engine::steps::StepError::from(e)))?;
    tracing::info!(
        event = "schedule",
        sweep = outcome.sweep.as_ref().map(json_text),
        policy = outcome.policy.as_ref().map(json_text),
    );
    // The sweep went on past what failed; the invocation still fails, so the
    // function's Errors metric (and an alarm on it) shows it.
    if let Some(errors) = outcome
        .sweep
        .as_ref()
        .map(|s| &s.errors)
        .filter(|e| !e.is_empty())
    {
        return Err(StepFailure {
            name: amistore_core::engine::steps::RETRYABLE,
            cause: format!(
                "the sweep went on past {} failure(s): {}",
                errors.len(),
                errors.join("; ")
            ),
        });
    }
    Ok(outcome)
}

/// A field's value as it was written, or `(none)`.
fn quoted(value: Option<&str>) -> String {
    value.map_or_else(|| "(none)".to_owned(), |v| format!("{v:?}"))
}

/// A report as one JSON text, for a log field.
fn json_text(report: &impl serde::Serialize) -> String {
    serde_json::to_string(report).unwrap_or_else(|e| format!("(does not serialise: {e})"))
}

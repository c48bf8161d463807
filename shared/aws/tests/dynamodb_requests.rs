//! The DynamoDB task store fed DynamoDB's real answers under contention
//! (aws-smithy-mocks): moto serialises transactions and never throttles, so
//! it never sends these. A transaction cancelled because another one was
//! writing the same item (`TransactionConflict`) or because the table was
//! throttled may pass on retry; one whose condition failed is an answer; the
//! SDK retries none of them, so the classification decides what the step does.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use amistore_aws::Bridge;
use amistore_aws::task_store::DynamoTaskStore;
use amistore_core::Error;
use amistore_core::ports::TaskStore;
use amistore_core::task::Ending;
use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::error::{
    ConditionalCheckFailedException, ProvisionedThroughputExceededException,
    TransactionCanceledException,
};
use aws_sdk_dynamodb::types::{AttributeValue, CancellationReason};
use aws_smithy_mocks::{RuleMode, mock, mock_client};

const TASK: &str = "task-0123456789abcdef0";

/// The error metadata DynamoDB's answer carries (its `__type`).
fn code(code: &str) -> aws_smithy_types::error::ErrorMetadata {
    aws_smithy_types::error::ErrorMetadata::builder()
        .code(code)
        .build()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A store task in progress whose failure is claimed.
fn claimed_task() -> HashMap<String, AttributeValue> {
    let s = |v: &str| AttributeValue::S(v.into());
    let n = |v: i64| AttributeValue::N(v.to_string());
    HashMap::from([
        ("pk".into(), s(&format!("TASK#{TASK}"))),
        ("sk".into(), s("TASK")),
        ("id".into(), s(TASK)),
        ("kind".into(), s("store")),
        ("account".into(), s("123456789012")),
        ("imageId".into(), s("ami-0123456789abcdef0")),
        ("bucket".into(), s("archive")),
        ("objectKey".into(), s("ami-0123456789abcdef0.bin")),
        ("sizeGib".into(), n(8)),
        ("unitsTotal".into(), n(4)),
        ("state".into(), s("InProgress")),
        ("startedAt".into(), n(1)),
        ("ending".into(), s("fail")),
        ("endingReason".into(), s("cancelled")),
        ("claimedAt".into(), n(2)),
    ])
}

/// The store's `finish` when DynamoDB cancels the transaction for `codes`.
fn finish_cancelled_with(codes: &[&str]) -> Result<bool, Error> {
    let rt = runtime();
    let get = mock!(aws_sdk_dynamodb::Client::get_item).then_output(|| {
        GetItemOutput::builder()
            .set_item(Some(claimed_task()))
            .build()
    });
    let reasons: Vec<CancellationReason> = codes
        .iter()
        .map(|c| CancellationReason::builder().code(*c).build())
        .collect();
    let transact = mock!(aws_sdk_dynamodb::Client::transact_write_items).then_error(move || {
        TransactWriteItemsError::TransactionCanceledException(
            TransactionCanceledException::builder()
                .message(
                    "Transaction cancelled, please refer cancellation reasons for specific reasons",
                )
                .set_cancellation_reasons(Some(reasons.clone()))
                .build(),
        )
    });
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::MatchAny, [&get, &transact]);
    let store = DynamoTaskStore::new(client, Bridge::new(rt.handle().clone()), "tasks");
    store.finish(&TASK.parse().unwrap(), Ending::Fail, 10)
}

#[test]
fn a_transaction_conflict_or_throttle_is_transient_and_a_failed_condition_an_answer() {
    // Another transaction was writing the task or the account's counter.
    for codes in [
        ["None", "TransactionConflict", "None"],
        ["None", "None", "ThrottlingError"],
        ["ProvisionedThroughputExceeded", "None", "None"],
    ] {
        let err = finish_cancelled_with(&codes).unwrap_err();
        assert!(err.is_retryable(), "{codes:?}: {err}");
        assert!(
            err.to_string()
                .contains(codes.iter().find(|c| **c != "None").unwrap()),
            "{err}"
        );
    }
    // The state changed meanwhile: the task was ended by someone else.
    assert!(!finish_cancelled_with(&["ConditionalCheckFailed", "None", "None"]).unwrap());
    // A failed condition decides even beside a conflict on another item.
    assert!(
        !finish_cancelled_with(&["ConditionalCheckFailed", "TransactionConflict", "None"]).unwrap()
    );
    // Anything else is not worth a retry.
    let err = finish_cancelled_with(&["ValidationError", "None", "None"]).unwrap_err();
    assert!(!err.is_retryable(), "{err}");
}

#[test]
fn a_unit_is_recorded_with_one_conditional_put_and_nothing_else() {
    // No transaction and no shared item: units finishing together cannot
    // conflict. A repeated unit is a failed condition, i.e. already recorded.
    let rt = runtime();
    let first = mock!(aws_sdk_dynamodb::Client::put_item)
        .match_requests(|r| {
            r.condition_expression() == Some("attribute_not_exists(pk)")
                && r.item().is_some_and(|i| {
                    i.get("sk") == Some(&AttributeValue::S("UNIT#0000000003".into()))
                })
        })
        .sequence()
        .output(|| aws_sdk_dynamodb::operation::put_item::PutItemOutput::builder().build())
        .error(|| {
            PutItemError::ConditionalCheckFailedException(
                ConditionalCheckFailedException::builder()
                    .message("The conditional request failed")
                    .meta(code("ConditionalCheckFailedException"))
                    .build(),
            )
        })
        .error(|| {
            PutItemError::ProvisionedThroughputExceededException(
                ProvisionedThroughputExceededException::builder()
                    .message("throttled")
                    .meta(code("ProvisionedThroughputExceededException"))
                    .build(),
            )
        })
        // The SDK retries throttling itself, then gives up.
        .repeatedly()
        .build();
    let client = mock_client!(aws_sdk_dynamodb, RuleMode::Sequential, [&first]);
    let store = DynamoTaskStore::new(client, Bridge::new(rt.handle().clone()), "tasks");
    let id = TASK.parse().unwrap();
    assert!(store.record_unit(&id, 3, "{}").unwrap());
    assert!(!store.record_unit(&id, 3, "{}").unwrap(), "counted once");
    let err = store.record_unit(&id, 3, "{}").unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("ProvisionedThroughputExceeded"),
        "{err}"
    );
}

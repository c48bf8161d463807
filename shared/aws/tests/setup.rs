//! Setting up over moto's server: what a function reports when what it needs
//! to start is missing, with the service's answer kept as the cause.

#![allow(clippy::unwrap_used)]

use amistore_aws::SetupError;
use amistore_aws::testing::Aws;

#[test]
fn a_missing_secret_is_named_with_the_service_s_answer_behind_it() {
    let aws = Aws::connect();
    let arn = format!(
        "arn:aws:secretsmanager:{}:{}:secret:amistore-missing-AbCdEf",
        aws.region(),
        aws.ports.account
    );
    let err = aws
        .runtime
        .block_on(aws.ports.read_secret(&arn))
        .unwrap_err();
    assert!(matches!(err, SetupError::Secret { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot read secret {arn}: ResourceNotFoundException"
        )),
        "{text}"
    );
    let call = std::error::Error::source(&err).expect("the call's error");
    assert!(text.ends_with(&call.to_string()), "{text} / {call}");
    assert!(
        call.source().is_some(),
        "the SDK's own error is kept behind the call's"
    );

    let stored = aws.create_secret("amistore-present", "value");
    assert_eq!(
        aws.runtime
            .block_on(aws.ports.read_secret(&stored))
            .unwrap(),
        "value"
    );
}

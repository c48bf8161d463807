//! The port contract suites (written once in `amistore-core`), run against the
//! AWS adapters on moto's server.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use amistore_aws::testing::Aws;
use amistore_core::ports::contract;

/// The object store contract, clause by clause, each in a bucket of its own.
mod s3_object_store {
    use super::*;
    use amistore_core::ports::contract::ObjectStoreFixture;

    amistore_core::object_store_contract!({
        let aws = Aws::connect();
        let scratch = tempfile::tempdir().unwrap();
        let bucket = format!("contract-{}", &amistore_core::ids::unique_token()[..10]);
        aws.create_bucket(&bucket);
        let fixture = ObjectStoreFixture {
            store: aws.ports.objects.clone(),
            owner: aws.ports.account.clone(),
            bucket: bucket.parse().unwrap(),
            missing: "no-such-bucket-amistore".parse().unwrap(),
            scratch: scratch.path().to_owned(),
            // S3's minimum part size: moto enforces it too.
            min_part: 5 * 1024 * 1024,
        };
        ((aws, scratch), fixture)
    });
}

/// The task store contract, clause by clause, each on a table of its own.
mod dynamodb_task_store {
    use super::*;

    amistore_core::task_store_contract!({
        let aws = Aws::connect();
        aws.ports.tasks.ensure_table().unwrap();
        aws.ports.tasks.ensure_table().unwrap(); // a second call finds it
        let store = aws.ports.tasks.clone() as Arc<dyn amistore_core::ports::TaskStore>;
        (aws, store)
    });
}

#[test]
fn ec2_and_ebs_keep_the_catalog_and_snapshot_contracts() {
    // The contract lists every image of the account: a region of its own.
    let aws = Aws::connect_in("eu-west-1");
    contract::catalog_and_snapshots(
        aws.ports.images.as_ref(),
        aws.ports.images.as_ref(),
        &aws.ports.account,
        // moto completes a snapshot at once and checks no CompleteSnapshot
        // count; tests/requests.rs shows the count amistore sends.
        false,
    );
}

//! The port contract suites (written once in `amistore-core`), run against the
//! AWS adapters on moto's server.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use amistore_aws::testing::Aws;

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

/// The catalog and snapshot store contract over EC2 and the EBS direct APIs,
/// clause by clause. A clause lists every image of the account, and moto keeps
/// EC2 and EBS state per region: each clause runs in a region of its own.
mod ec2_images {
    use super::*;
    use amistore_core::ids::ResourceState;
    use amistore_core::ports::ImageCatalog;
    use amistore_core::ports::contract::CatalogFixture;

    fn region_of(clause: &str) -> &'static str {
        match clause {
            "snapshots_start_once_per_token_for_their_account_only" => "eu-west-1",
            "blocks_are_written_within_the_volume_completed_and_read_back" => "eu-west-2",
            "images_register_once_per_token_and_once_per_name" => "eu-west-3",
            "an_image_s_state_is_its_snapshots_and_deregistering_removes_both" => "eu-central-1",
            other => panic!("give the new clause {other} a region of its own here"),
        }
    }

    amistore_core::catalog_contract!(|clause: &str| {
        let aws = Aws::connect_in(region_of(clause));
        // The account has no images: a run that failed on this server may
        // have left one.
        let images = aws.ports.images.as_ref() as &dyn ImageCatalog;
        for left in images.list_images(&aws.ports.account).unwrap() {
            images
                .set_image_state(
                    &aws.ports.account,
                    &left.image_id,
                    ResourceState::Failed,
                    None,
                )
                .unwrap();
            images
                .deregister_image(&aws.ports.account, &left.image_id)
                .unwrap();
        }
        let fixture = CatalogFixture {
            catalog: aws.ports.images.clone(),
            snapshots: aws.ports.images.clone(),
            account: aws.ports.account.clone(),
            // moto completes a snapshot at once and checks no CompleteSnapshot
            // count; tests/requests.rs shows the count amistore sends.
            models_lifecycle: false,
        };
        (aws, fixture)
    });
}

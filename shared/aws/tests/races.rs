//! The races between a task's endings (written once in
//! `amistore_core::ports::races`), run over the AWS adapters on moto's
//! server: DynamoDB's conditional writes decide who holds a task's end.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use amistore_aws::testing::{Aws, SeedDisk};
use amistore_core::blocks::BLOCK_SIZE;
use amistore_core::engine::{Engine, EngineConfig};
use amistore_core::ids::ImageId;
use amistore_core::image::Encryption;
use amistore_core::ports::races::{self, Manual};

/// An engine over the AWS adapters (a fresh table, work bucket and archive
/// bucket), an image to store, and the archive bucket's name.
struct World {
    aws: Aws,
    engine: Engine,
    image: ImageId,
    bucket: String,
    _spool: tempfile::TempDir,
}

fn world(name: &str) -> World {
    let aws = Aws::connect();
    aws.ports.tasks.ensure_table().unwrap();
    aws.create_bucket(aws.settings.work_bucket.as_str());
    let bucket = format!("races-{}", &amistore_core::ids::unique_token()[..10]);
    aws.create_bucket(&bucket);
    let block = |seed: u8| vec![seed; BLOCK_SIZE as usize];
    let (image, _) = aws.seed_image(
        name,
        &[SeedDisk {
            device: "/dev/xvda",
            bytes: 16 * BLOCK_SIZE,
            blocks: vec![(0, block(1)), (3, block(2)), (15, block(3))],
        }],
        &Encryption::Unencrypted,
        &[],
    );
    let spool = tempfile::tempdir().unwrap();
    let ports = &aws.ports;
    let engine = Engine {
        catalog: ports.images.clone(),
        snapshots: ports.images.clone(),
        objects: ports.objects.clone(),
        work: ports.objects.clone(),
        tasks: ports.tasks.clone(),
        runner: Arc::new(Manual::default()),
        config: EngineConfig::new(
            aws.settings.work_bucket.clone(),
            spool.path().to_owned(),
            [7; 32],
        ),
        progress: None,
        moved: Default::default(),
    };
    World {
        aws,
        engine,
        image,
        bucket,
        _spool: spool,
    }
}

#[test]
fn a_cancel_and_finalize_racing_leave_one_consistent_end() {
    let w = world(&format!(
        "raced-{}",
        &amistore_core::ids::unique_token()[..8]
    ));
    races::cancel_against_finalize(
        &w.engine,
        &w.aws.ports.account,
        &w.image,
        &format!("{}/races", w.bucket).parse().unwrap(),
    );
}

#[test]
fn a_sweep_failing_a_restore_and_its_finalize_racing_leave_one_consistent_end() {
    let w = world(&format!(
        "stored-{}",
        &amistore_core::ids::unique_token()[..8]
    ));
    let account = &w.aws.ports.account;
    let (bucket, key) = races::stored(&w.engine, account, &w.image, &w.bucket.parse().unwrap());
    let prefix = format!("raced-{}", &amistore_core::ids::unique_token()[..8]);
    races::fail_against_finalize_restore(&w.engine, account, &bucket, &key, &prefix);
}

#[test]
fn every_ending_of_a_store_at_once_in_random_orders_leaves_one_consistent_end() {
    let w = world(&format!(
        "raced-{}",
        &amistore_core::ids::unique_token()[..8]
    ));
    let runs = races::random_store_endings(
        &w.engine,
        &w.aws.ports.account,
        &w.image,
        &format!("{}/random", w.bucket).parse().unwrap(),
        0..12,
    );
    assert_eq!(runs, 12);
}

#[test]
fn two_failures_of_a_restore_at_once_show_one_reason() {
    let w = world(&format!(
        "stored-{}",
        &amistore_core::ids::unique_token()[..8]
    ));
    let account = &w.aws.ports.account;
    let (bucket, key) = races::stored(&w.engine, account, &w.image, &w.bucket.parse().unwrap());
    let name = format!("failed-{}", &amistore_core::ids::unique_token()[..8]);
    races::two_failures_agree_on_one_reason(&w.engine, account, &bucket, &key, &name);
}

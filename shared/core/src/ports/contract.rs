//! Contract suites: what every adapter of a port must do, written once and run
//! against each adapter (the local ones in `amistore-local`'s tests, the AWS ones
//! against moto). A failed expectation panics with what was expected; these are
//! test helpers, compiled only with the `contract` feature.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::Error;
use crate::blocks::{BLOCK_SIZE, BlockRanges};
use crate::ids::{AccountId, ImageId, ResourceState, TaskId};
use crate::image::{Architecture, DeviceName, EbsMapping, Encryption, ImageMetadata, VolumeType};
use crate::ports::{
    BucketAdmin, CompletedPart, ImageCatalog, ObjectStore, RateLease, SnapshotStore, TaskStore,
};
use crate::storage::{BucketName, ObjectKey};
use crate::task::{Claim, ClaimRequest, Ending, Task, TaskKind, TaskState};

/// Whether `upload` is among the bucket's uploads in progress.
fn listed(store: &dyn ObjectStore, bucket: &BucketName, upload: &str) -> bool {
    store
        .list_multipart_uploads(bucket)
        .unwrap()
        .iter()
        .any(|(u, _)| u == upload)
}

fn key(s: &str) -> ObjectKey {
    s.parse().unwrap()
}

/// The bucket administration contract as named clauses, over a store with no
/// buckets yet that is also an [`ObjectStore`] (to put objects to list);
/// [`bucket_admin_contract!`](crate::bucket_admin_contract) makes one `#[test]`
/// per clause for an adapter.
pub mod bucket_admin {
    use super::*;

    /// A bucket is created once, for one account: again by its owner is
    /// fine, by another account it is taken. Each account lists its own, by
    /// name, and the owner of any bucket can be looked up.
    pub fn buckets_are_created_for_one_account_and_listed_by_name(
        store: &(impl BucketAdmin + ObjectStore),
    ) {
        let me: AccountId = "111122223333".parse().unwrap();
        let other: AccountId = "444455556666".parse().unwrap();
        let (a, b): (BucketName, BucketName) =
            ("admin-a".parse().unwrap(), "admin-b".parse().unwrap());
        assert!(store.list_buckets(&me).unwrap().is_empty());
        store.create_bucket(&me, &b).unwrap();
        store.create_bucket(&me, &a).unwrap();
        store.create_bucket(&me, &a).unwrap(); // again: fine
        assert!(
            matches!(
                store.create_bucket(&other, &a),
                Err(Error::AlreadyExists(_))
            ),
            "another account's bucket name is taken"
        );
        let names = |account: &AccountId| -> Vec<String> {
            store
                .list_buckets(account)
                .unwrap()
                .into_iter()
                .map(|b| b.name.to_string())
                .collect()
        };
        assert_eq!(names(&me), ["admin-a", "admin-b"], "by name");
        assert!(names(&other).is_empty(), "only the account's own");
        assert!(store.bucket_exists(&me, &a).unwrap());
        assert_eq!(store.owner_of(&a).unwrap(), Some(me.clone()));
        assert_eq!(
            store.owner_of(&"admin-none".parse().unwrap()).unwrap(),
            None
        );
    }

    /// Objects are listed in key order, by prefix, a page after a key; an
    /// upload in progress is not an object.
    pub fn objects_are_listed_in_key_order_by_prefix_and_page(
        store: &(impl BucketAdmin + ObjectStore),
    ) {
        let me: AccountId = "111122223333".parse().unwrap();
        let a: BucketName = "admin-a".parse().unwrap();
        store.create_bucket(&me, &a).unwrap();
        for k in ["p/2.bin", "p/1.bin", "q/x/3.bin", "root.bin", "p/sub/4.bin"] {
            store.put_object(&a, &key(k), k.as_bytes()).unwrap();
        }
        let keys = |prefix: &str, after: &str, max: usize| -> Vec<String> {
            store
                .list_objects(&a, prefix, after, max)
                .unwrap()
                .into_iter()
                .map(|o| o.key.to_string())
                .collect()
        };
        assert_eq!(
            keys("", "", 1000),
            ["p/1.bin", "p/2.bin", "p/sub/4.bin", "q/x/3.bin", "root.bin"],
            "in key order"
        );
        assert_eq!(keys("p/", "", 1000), ["p/1.bin", "p/2.bin", "p/sub/4.bin"]);
        assert_eq!(keys("p/", "p/1.bin", 1), ["p/2.bin"], "a page after a key");
        assert_eq!(keys("q/x", "", 1000), ["q/x/3.bin"]);
        assert!(keys("zzz", "", 1000).is_empty());
        let listed = store.list_objects(&a, "root", "", 10).unwrap();
        assert_eq!(listed[0].size, 8);
        assert_eq!(
            listed[0].etag,
            store
                .head_object(&a, &key("root.bin"))
                .unwrap()
                .unwrap()
                .etag
        );
        // An upload in progress is not an object.
        store
            .create_multipart(&a, &key("p/3.bin"), &BTreeMap::new(), &[])
            .unwrap();
        assert_eq!(keys("p/", "", 1000).len(), 3);
    }
}

/// One `#[test]` per clause of the bucket administration contract
/// ([`contract::bucket_admin`](crate::ports::contract::bucket_admin)). `$make`
/// gives `(guard, store)`: a store with no buckets, and `guard` kept alive for
/// the test; it is evaluated once per clause.
#[macro_export]
macro_rules! bucket_admin_contract {
    ($make:expr) => {
        $crate::bucket_admin_contract!(@clauses $make;
            buckets_are_created_for_one_account_and_listed_by_name,
            objects_are_listed_in_key_order_by_prefix_and_page);
    };
    (@clauses $make:expr; $($clause:ident),+) => {
        $(
            #[test]
            fn $clause() {
                let (_guard, store) = $make;
                $crate::ports::contract::bucket_admin::$clause(&store);
            }
        )+
    };
}

/// An object store to run the contract's clauses on. `bucket` exists, is
/// empty and belongs to `owner`; `missing` does not exist; `scratch` is a
/// directory for part files; parts of `min_part` bytes are accepted as
/// non-last parts.
pub struct ObjectStoreFixture {
    pub store: Arc<dyn ObjectStore>,
    pub owner: AccountId,
    pub bucket: BucketName,
    pub missing: BucketName,
    pub scratch: std::path::PathBuf,
    pub min_part: usize,
}

/// The object store contract as named clauses (see [`task_store`] for why);
/// [`object_store_contract!`](crate::object_store_contract) makes one
/// `#[test]` per clause for an adapter.
pub mod object_store {
    use super::*;

    /// A bucket exists for its owner, not for another account; one that does
    /// not exist takes no upload.
    pub fn buckets_exist_for_their_owner_only(fixture: &ObjectStoreFixture) {
        let store = fixture.store.as_ref();
        let owner = &fixture.owner;
        let bucket = &fixture.bucket;
        let missing = &fixture.missing;
        assert!(store.bucket_exists(owner, bucket).unwrap());
        assert!(!store.bucket_exists(owner, missing).unwrap());
        let stranger: AccountId = "999999999999".parse().unwrap();
        assert!(
            !store.bucket_exists(&stranger, bucket).unwrap(),
            "another account's bucket is not there for it"
        );
        let k = key("p1/p2/ami-0123456789abcdef0.bin");
        assert!(matches!(
            store.create_multipart(missing, &k, &BTreeMap::new(), &[]),
            Err(Error::NotFound(_))
        ));
    }

    /// Multipart: parts in any order, a retried part replaces the first, the
    /// object appears whole only at completion, with its metadata and tags.
    pub fn an_upload_appears_whole_at_completion_with_its_metadata_and_tags(
        fixture: &ObjectStoreFixture,
    ) {
        let store = fixture.store.as_ref();
        let bucket = &fixture.bucket;
        let scratch = fixture.scratch.as_path();
        let min_part = fixture.min_part;
        let k = key("p1/p2/ami-0123456789abcdef0.bin");
        let metadata = BTreeMap::from([
            ("ami-name".to_owned(), "contract".to_owned()),
            ("ami-description".to_owned(), "=?UTF-8?B?w6k=?=".to_owned()),
        ]);
        let tags = vec!["team=storage".parse().unwrap(), "env=test".parse().unwrap()];
        let upload = store
            .create_multipart(bucket, &k, &metadata, &tags)
            .unwrap();
        let bodies: Vec<Vec<u8>> = vec![vec![1; min_part], vec![2; min_part + 7], vec![3; 10]];
        let mut etags = BTreeMap::new();
        for n in [3u32, 1, 2, 1] {
            let path = scratch.join(format!("part{n}"));
            let mut body = bodies[n as usize - 1].clone();
            if etags.contains_key(&n) {
                // The retry carries the same bytes; a first try with different ones
                // must not survive it.
            } else if n == 1 {
                body = vec![9; min_part];
            }
            std::fs::write(&path, &body).unwrap();
            let etag = store.upload_part(bucket, &k, &upload, n, &path).unwrap();
            assert!(path.exists(), "the part file stays the caller's");
            etags.insert(n, etag);
        }
        assert_eq!(
            store.head_object(bucket, &k).unwrap(),
            None,
            "nothing before completion"
        );
        assert!(listed(store, bucket, &upload));
        let parts: Vec<CompletedPart> = etags
            .iter()
            .map(|(&part_number, etag)| CompletedPart {
                part_number,
                etag: etag.clone(),
            })
            .collect();
        store
            .complete_multipart(bucket, &k, &upload, &parts)
            .unwrap();
        let size = bodies.iter().map(Vec::len).sum::<usize>() as u64;
        let info = store
            .head_object(bucket, &k)
            .unwrap()
            .expect("completed object");
        assert_eq!(info.size, size);
        assert_eq!(info.metadata, metadata);
        let mut got_tags = info.tags.clone();
        got_tags.sort_by(|a, b| a.key().cmp(b.key()));
        assert_eq!(got_tags, vec![tags[1].clone(), tags[0].clone()]);
        assert!(!info.etag.is_empty(), "an object has an ETag");
        let edge = store
            .get_range(
                bucket,
                &k,
                (min_part as u64 - 1)..(min_part as u64 + 1),
                Some(&info.etag),
            )
            .unwrap();
        assert_eq!(
            edge,
            vec![1, 2],
            "the retried part 1 replaced the first try"
        );
        assert!(!listed(store, bucket, &upload));
    }

    /// A failed completion publishes nothing; an aborted upload leaves nothing.
    pub fn a_failed_completion_publishes_nothing_and_an_abort_leaves_nothing(
        fixture: &ObjectStoreFixture,
    ) {
        let store = fixture.store.as_ref();
        let bucket = &fixture.bucket;
        let scratch = fixture.scratch.as_path();
        let k2 = key("aborted.bin");
        let upload = store
            .create_multipart(bucket, &k2, &BTreeMap::new(), &[])
            .unwrap();
        let small = scratch.join("small");
        std::fs::write(&small, b"tiny").unwrap();
        let e1 = store.upload_part(bucket, &k2, &upload, 1, &small).unwrap();
        let e2 = store.upload_part(bucket, &k2, &upload, 2, &small).unwrap();
        let too_small = [
            CompletedPart {
                part_number: 1,
                etag: e1,
            },
            CompletedPart {
                part_number: 2,
                etag: e2,
            },
        ];
        assert!(
            store
                .complete_multipart(bucket, &k2, &upload, &too_small)
                .is_err()
        );
        assert_eq!(store.head_object(bucket, &k2).unwrap(), None);
        store.abort_multipart(bucket, &k2, &upload).unwrap();
        assert!(!listed(store, bucket, &upload));
        assert!(matches!(
            store.abort_multipart(bucket, &k2, &upload),
            Err(Error::NotFound(_))
        ));
    }

    /// Small objects: put, read, delete (deleting twice is fine); a replaced
    /// object has another ETag, and reads pinned to the first fail.
    pub fn small_objects_are_put_read_pinned_to_their_etag_and_deleted(
        fixture: &ObjectStoreFixture,
    ) {
        let store = fixture.store.as_ref();
        let bucket = &fixture.bucket;
        let k3 = key("tasks/t1/plan.json");
        store.put_object(bucket, &k3, b"{\"plan\":1}").unwrap();
        let first = store.head_object(bucket, &k3).unwrap().unwrap();
        assert_eq!(first.size, 10);
        assert_eq!(store.get_range(bucket, &k3, 2..6, None).unwrap(), b"plan");
        assert_eq!(
            store
                .get_range(bucket, &k3, 2..6, Some(&first.etag))
                .unwrap(),
            b"plan"
        );
        // A replaced object has another ETag, and reads pinned to the first fail.
        std::thread::sleep(std::time::Duration::from_millis(20));
        store.put_object(bucket, &k3, b"{\"PLAN\":2}").unwrap();
        let second = store.head_object(bucket, &k3).unwrap().unwrap();
        assert_ne!(second.etag, first.etag, "replacing changes the ETag");
        assert!(matches!(
            store.get_range(bucket, &k3, 2..6, Some(&first.etag)),
            Err(Error::IncorrectState(_))
        ));
        assert_eq!(
            store
                .get_range(bucket, &k3, 2..6, Some(&second.etag))
                .unwrap(),
            b"PLAN"
        );
        store.delete_object(bucket, &k3).unwrap();
        store.delete_object(bucket, &k3).unwrap();
        assert_eq!(store.head_object(bucket, &k3).unwrap(), None);
    }
}

/// One `#[test]` per clause of the object store contract
/// ([`contract::object_store`](crate::ports::contract::object_store)). `$make`
/// gives `(guard, fixture)`: an [`ObjectStoreFixture`] with an empty bucket,
/// and `guard` kept alive for the test; it is evaluated once per clause.
#[macro_export]
macro_rules! object_store_contract {
    ($make:expr) => {
        $crate::object_store_contract!(@clauses $make;
            buckets_exist_for_their_owner_only,
            an_upload_appears_whole_at_completion_with_its_metadata_and_tags,
            a_failed_completion_publishes_nothing_and_an_abort_leaves_nothing,
            small_objects_are_put_read_pinned_to_their_etag_and_deleted);
    };
    (@clauses $make:expr; $($clause:ident),+) => {
        $(
            #[test]
            fn $clause() {
                let (_guard, fixture) = $make;
                $crate::ports::contract::object_store::$clause(&fixture);
            }
        )+
    };
}

fn task(
    account: &AccountId,
    kind: TaskKind,
    image: Option<ImageId>,
    bucket: &str,
    gib: u64,
    t: i64,
) -> Task {
    Task::start(
        kind,
        account.clone(),
        image,
        bucket.parse().unwrap(),
        "k/x.bin".parse().unwrap(),
        gib,
        t,
    )
}

/// The rate-lease clause of the task store contract, on a store with no
/// leases: renewals publish and replace, lapsed leases stop counting, budgets
/// are per account and per kind, and withdrawing is idempotent.
pub fn rate_leases(store: &dyn TaskStore) {
    let me: AccountId = "123456789012".parse().unwrap();
    let other: AccountId = "210987654321".parse().unwrap();
    let (a, b) = (TaskId::fresh(), TaskId::fresh());
    let lease = |task: &TaskId, unit: u64, rate: u32, expires_ms: i64| RateLease {
        holder: format!("{task}#{unit}"),
        task: task.clone(),
        rate,
        expires_ms,
    };
    let now = 1_000_000;
    let a0 = lease(&a, 0, 0, now + 10_000);
    assert_eq!(
        store.renew_lease(&me, TaskKind::Store, &a0, now).unwrap(),
        vec![a0.clone()]
    );
    // A renewal replaces the holder's lease.
    let a0 = lease(&a, 0, 60, now + 12_000);
    let b1 = lease(&b, 1, 30, now + 10_000);
    store.renew_lease(&me, TaskKind::Store, &a0, now).unwrap();
    let mut both = vec![a0.clone(), b1.clone()];
    both.sort_by(|x, y| x.holder.cmp(&y.holder));
    assert_eq!(
        store.renew_lease(&me, TaskKind::Store, &b1, now).unwrap(),
        both
    );
    // Budgets are per account and per kind (EBS limits Get and Put apart).
    let other_lease = lease(&b, 2, 5, now + 10_000);
    assert_eq!(
        store
            .renew_lease(&other, TaskKind::Store, &other_lease, now)
            .unwrap(),
        vec![other_lease.clone()]
    );
    assert_eq!(
        store
            .renew_lease(&me, TaskKind::Restore, &other_lease, now)
            .unwrap(),
        vec![other_lease.clone()]
    );
    // Once lapsed, a lease is not returned (its unit died without dropping it).
    let later = now + 11_000;
    let b1 = lease(&b, 1, 30, later + 10_000);
    let mut live = vec![a0.clone(), b1.clone()];
    live.sort_by(|x, y| x.holder.cmp(&y.holder));
    assert_eq!(
        store.renew_lease(&me, TaskKind::Store, &b1, later).unwrap(),
        live,
        "a0 (expiring at +12 s) is still live at +11 s"
    );
    let much_later = now + 13_000;
    assert_eq!(
        store
            .renew_lease(&me, TaskKind::Store, &b1, much_later)
            .unwrap(),
        vec![b1.clone()],
        "a0 lapsed at +12 s"
    );
    // Withdrawn leases are gone; withdrawing twice is fine.
    store.drop_lease(&me, TaskKind::Store, &b1.holder).unwrap();
    store.drop_lease(&me, TaskKind::Store, &b1.holder).unwrap();
    store
        .drop_lease(&me, TaskKind::Store, "task-never#0")
        .unwrap();
    let a1 = lease(&a, 1, 1, much_later + 10_000);
    assert_eq!(
        store
            .renew_lease(&me, TaskKind::Store, &a1, much_later)
            .unwrap(),
        vec![a1]
    );
}

/// The task store contract as named clauses, each on an empty store, so that
/// a broken clause is reported by name and does not hide the others.
/// [`task_store_contract!`](crate::task_store_contract) makes one `#[test]`
/// per clause for an adapter.
pub mod task_store {
    use super::*;

    pub use super::rate_leases;

    fn me() -> AccountId {
        "123456789012".parse().unwrap()
    }

    fn other() -> AccountId {
        "210987654321".parse().unwrap()
    }

    fn store_task(account: &AccountId, gib: u64, t: i64) -> Task {
        task(
            account,
            TaskKind::Store,
            Some(ImageId::fresh()),
            "bkt",
            gib,
            t,
        )
    }

    fn fail(reason: &str, overrule: Option<i64>, now_ms: i64) -> ClaimRequest<'_> {
        ClaimRequest {
            ending: Ending::Fail,
            reason: Some(reason),
            overrule_before_ms: overrule,
            now_ms,
        }
    }

    fn complete(overrule: Option<i64>, now_ms: i64) -> ClaimRequest<'static> {
        ClaimRequest {
            ending: Ending::Complete,
            reason: None,
            overrule_before_ms: overrule,
            now_ms,
        }
    }

    /// The seed's example: 100 + 200 in progress admits; a lone 800 blocks;
    /// accounts and kinds count apart; a refused task is not stored.
    pub fn admission_holds_each_account_and_kind_to_its_limit(store: &dyn TaskStore) {
        let (me, other) = (me(), other());
        store.admit(&store_task(&me, 100, 1), 600).unwrap();
        store.admit(&store_task(&me, 200, 2), 600).unwrap();
        store.admit(&store_task(&me, 800, 3), 600).unwrap();
        assert_eq!(store.in_progress_gib(&me, TaskKind::Store).unwrap(), 1100);
        let refused = store_task(&me, 1, 4);
        assert!(matches!(
            store.admit(&refused, 600),
            Err(Error::LimitExceeded(_))
        ));
        assert_eq!(
            store.get(&refused.id).unwrap(),
            None,
            "a refused task is not stored"
        );
        store.admit(&store_task(&other, 800, 5), 600).unwrap();
        assert!(matches!(
            store.admit(&store_task(&other, 1, 6), 600),
            Err(Error::LimitExceeded(_))
        ));
        // Restores count separately.
        let restore = task(&other, TaskKind::Restore, None, "bkt", 10, 7);
        store.admit(&restore, 300).unwrap();
        assert_eq!(
            store.in_progress_gib(&other, TaskKind::Restore).unwrap(),
            10
        );
        assert_eq!(store.in_progress_gib(&me, TaskKind::Restore).unwrap(), 0);
    }

    /// One store of an image into a bucket at a time (checked below the
    /// limit), and another once it has ended.
    pub fn one_store_of_an_image_into_a_bucket_at_a_time(store: &dyn TaskStore) {
        let a = store_task(&me(), 100, 1);
        store.admit(&a, 600).unwrap();
        let again = Task {
            id: TaskId::fresh(),
            started_at_ms: 8,
            ..a.clone()
        };
        assert!(matches!(
            store.admit(&again, 600),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            store.claim_end(&a.id, &fail("gone", None, 9)).unwrap(),
            Claim::Held(_)
        ));
        assert!(store.finish(&a.id, Ending::Fail, 9).unwrap());
        store.admit(&again, 600).unwrap();
    }

    /// Setters, and units: recorded once, counted once.
    pub fn units_are_recorded_once_and_counted(store: &dyn TaskStore) {
        let a = store_task(&me(), 100, 1);
        store.admit(&a, 600).unwrap();
        store.set_upload(&a.id, "upload-1").unwrap();
        store.set_units_total(&a.id, 3).unwrap();
        let r = task(&other(), TaskKind::Restore, None, "bkt", 10, 2);
        store.admit(&r, 300).unwrap();
        let img = ImageId::fresh();
        store.set_image(&r.id, &img).unwrap();
        assert_eq!(store.get(&r.id).unwrap().unwrap().image_id, Some(img));
        assert!(store.record_unit(&a.id, 1, "{\"u\":1}").unwrap());
        assert!(!store.record_unit(&a.id, 1, "{\"u\":\"retry\"}").unwrap());
        assert!(store.record_unit(&a.id, 0, "{\"u\":0}").unwrap());
        assert!(store.unit_recorded(&a.id, 1).unwrap());
        assert!(!store.unit_recorded(&a.id, 2).unwrap());
        let got = store.get(&a.id).unwrap().unwrap();
        assert_eq!(
            (got.units_done, got.units_total, got.upload_id.as_deref()),
            (2, 3, Some("upload-1"))
        );
        assert_eq!(
            store.units(&a.id).unwrap(),
            vec![(0, "{\"u\":0}".to_owned()), (1, "{\"u\":1}".to_owned())]
        );
    }

    /// The end is claimed before it happens: one claimant at a time, the same
    /// ending re-entered (keeping the first reason), another refused unless it
    /// may overrule a claim that old; the holder alone finishes, once, and
    /// the quota is released with it.
    pub fn an_end_is_claimed_before_it_happens_and_released_once(store: &dyn TaskStore) {
        let me = me();
        let a = store_task(&me, 100, 1);
        let b = store_task(&me, 200, 2);
        store.admit(&a, 600).unwrap();
        store.admit(&b, 600).unwrap();
        assert!(
            !store.finish(&a.id, Ending::Fail, 9).unwrap(),
            "nothing claimed yet"
        );
        let Claim::Held(held) = store
            .claim_end(&a.id, &fail("disk on fire", None, 10))
            .unwrap()
        else {
            panic!("an unclaimed task's end is held by its first claimant")
        };
        assert_eq!(
            held.claim.as_ref().map(|c| (c.ending, c.at_ms)),
            Some((Ending::Fail, 10))
        );
        assert_eq!(held.state, TaskState::InProgress, "claimed, not ended");
        match store
            .claim_end(&a.id, &fail("a later reason", None, 10))
            .unwrap()
        {
            Claim::Held(t) => assert_eq!(
                t.claim.and_then(|c| c.reason).as_deref(),
                Some("disk on fire"),
                "re-entered, first reason kept"
            ),
            other => panic!("the same ending re-enters its claim: {other:?}"),
        }
        assert!(matches!(
            store.claim_end(&a.id, &complete(None, 11)).unwrap(),
            Claim::Taken(_)
        ));
        assert!(
            matches!(
                store.claim_end(&a.id, &complete(Some(10), 11)).unwrap(),
                Claim::Taken(_)
            ),
            "a claim made at 10 is not older than 10"
        );
        assert!(
            !store.finish(&a.id, Ending::Complete, 11).unwrap(),
            "not the holder"
        );
        assert!(store.finish(&a.id, Ending::Fail, 12).unwrap());
        assert!(
            !store.finish(&a.id, Ending::Fail, 13).unwrap(),
            "ended once"
        );
        assert!(matches!(
            store.claim_end(&a.id, &fail("too late", Some(i64::MAX), 14)).unwrap(),
            Claim::Taken(t) if t.state == TaskState::Failed
        ));
        assert_eq!(store.in_progress_gib(&me, TaskKind::Store).unwrap(), 200);
        let failed = store.get(&a.id).unwrap().unwrap();
        assert_eq!(
            (
                failed.state,
                failed.failure_reason.as_deref(),
                failed.ended_at_ms
            ),
            (TaskState::Failed, Some("disk on fire"), Some(12))
        );
        assert!(matches!(
            store.claim_end(&TaskId::fresh(), &fail("x", None, 15)),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            store.claim_end(&b.id, &complete(None, 12)).unwrap(),
            Claim::Held(_)
        ));
        assert!(store.finish(&b.id, Ending::Complete, 13).unwrap());
        let completed = store.get(&b.id).unwrap().unwrap();
        assert_eq!(
            (completed.state, completed.failure_reason),
            (TaskState::Completed, None)
        );
        assert_eq!(store.in_progress_gib(&me, TaskKind::Store).unwrap(), 0);
    }

    /// A completion whose claimant died is overruled by one allowed to
    /// overrule claims that old (the sweeper), which then ends the task.
    pub fn a_claim_older_than_allowed_is_overruled(store: &dyn TaskStore) {
        let me = me();
        let c = store_task(&me, 800, 3);
        store.admit(&c, 600).unwrap();
        assert!(matches!(
            store.claim_end(&c.id, &complete(None, 20)).unwrap(),
            Claim::Held(_)
        ));
        assert!(matches!(
            store.claim_end(&c.id, &fail("abandoned", Some(21), 21)).unwrap(),
            Claim::Held(t) if t.ending() == Some(Ending::Fail)
        ));
        assert!(
            !store.finish(&c.id, Ending::Complete, 22).unwrap(),
            "overruled"
        );
        assert!(store.finish(&c.id, Ending::Fail, 22).unwrap());
        assert_eq!(
            store.get(&c.id).unwrap().unwrap().failure_reason.as_deref(),
            Some("abandoned")
        );
        assert_eq!(store.in_progress_gib(&me, TaskKind::Store).unwrap(), 0);
    }

    /// Listing: per account and kind, newest first, within 31 days; and the
    /// tasks in progress, oldest first.
    pub fn tasks_are_listed_per_account_and_kind_newest_first_within_31_days(
        store: &dyn TaskStore,
    ) {
        let (me, other) = (me(), other());
        let a = store_task(&me, 100, 1);
        let b = store_task(&me, 200, 2);
        let c = store_task(&me, 50, 3);
        let r = task(&other, TaskKind::Restore, None, "bkt", 10, 4);
        for t in [&a, &b, &c] {
            store.admit(t, 600).unwrap();
        }
        store.admit(&r, 300).unwrap();
        assert!(matches!(
            store.claim_end(&b.id, &complete(None, 5)).unwrap(),
            Claim::Held(_)
        ));
        assert!(store.finish(&b.id, Ending::Complete, 5).unwrap());
        let listed: Vec<TaskId> = store
            .list(&me, TaskKind::Store, 20)
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(listed, vec![c.id.clone(), b.id.clone(), a.id.clone()]);
        let day = 86_400_000;
        assert!(
            store
                .list(&me, TaskKind::Store, 31 * day + 2)
                .unwrap()
                .iter()
                .all(|t| t.started_at_ms > 2),
            "only the last 31 days"
        );
        assert_eq!(store.list(&other, TaskKind::Restore, 20).unwrap().len(), 1);
        assert!(store.list(&other, TaskKind::Store, 20).unwrap().is_empty());
        let live: Vec<TaskId> = store
            .in_progress()
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(live, vec![a.id, c.id, r.id]);
    }

    /// Counters, as the sweeper reconciles them: corrected only from the
    /// value read, so a concurrent admission or release wins.
    pub fn counters_are_corrected_only_from_the_value_read(store: &dyn TaskStore) {
        let (me, other) = (me(), other());
        store.admit(&store_task(&me, 100, 1), 600).unwrap();
        store.admit(&store_task(&other, 800, 2), 600).unwrap();
        store
            .admit(&task(&other, TaskKind::Restore, None, "bkt", 10, 3), 300)
            .unwrap();
        let mut counters = store.counters().unwrap();
        counters.sort_by(|x, y| (x.0.as_str(), x.1.as_str()).cmp(&(y.0.as_str(), y.1.as_str())));
        assert_eq!(
            counters,
            vec![
                (me.clone(), TaskKind::Store, 100),
                (other.clone(), TaskKind::Restore, 10),
                (other.clone(), TaskKind::Store, 800),
            ]
        );
        assert!(
            !store.correct_counter(&me, TaskKind::Store, 99, 7).unwrap(),
            "the counter no longer reads 99"
        );
        assert!(store.correct_counter(&me, TaskKind::Store, 100, 7).unwrap());
        assert_eq!(store.in_progress_gib(&me, TaskKind::Store).unwrap(), 7);
        assert!(store.correct_counter(&me, TaskKind::Store, 7, 100).unwrap());
    }
}

/// One `#[test]` per clause of the task store contract
/// ([`contract::task_store`](crate::ports::contract::task_store)). `$make` is
/// an expression giving `(guard, store)` with `store: Arc<dyn TaskStore>`
/// empty, and `guard` kept alive for the test (a temporary directory, a
/// connection); it is evaluated once per clause.
#[macro_export]
macro_rules! task_store_contract {
    ($make:expr) => {
        $crate::task_store_contract!(@clauses $make;
            admission_holds_each_account_and_kind_to_its_limit,
            one_store_of_an_image_into_a_bucket_at_a_time,
            units_are_recorded_once_and_counted,
            an_end_is_claimed_before_it_happens_and_released_once,
            a_claim_older_than_allowed_is_overruled,
            tasks_are_listed_per_account_and_kind_newest_first_within_31_days,
            counters_are_corrected_only_from_the_value_read,
            rate_leases);
    };
    (@clauses $make:expr; $($clause:ident),+) => {
        $(
            #[test]
            fn $clause() {
                let (_guard, store) = $make;
                $crate::ports::contract::task_store::$clause(store.as_ref());
            }
        )+
    };
}

/// An image catalog and snapshot store to run the contract's clauses on.
/// `account` starts with no images. `models_lifecycle`: whether the store
/// keeps a started snapshot `pending` until it is completed and refuses a
/// CompleteSnapshot whose changed-block count is wrong (EBS does; moto shows a
/// started snapshot completed at once and checks no count, so the AWS
/// adapter's requests are checked by a request-capturing test instead).
pub struct CatalogFixture {
    pub catalog: Arc<dyn ImageCatalog>,
    pub snapshots: Arc<dyn SnapshotStore>,
    pub account: AccountId,
    pub models_lifecycle: bool,
}

/// The image catalog and snapshot store contract as named clauses, in a
/// restore's order (snapshots, their blocks, the image, its states) and then
/// a store's reads; [`catalog_contract!`](crate::catalog_contract) makes one
/// `#[test]` per clause for an adapter.
pub mod catalog_and_snapshots {
    use super::*;
    use crate::ids::SnapshotId;

    /// An account other than the fixture's.
    fn other() -> AccountId {
        "999999999999".parse().unwrap()
    }

    /// Eight blocks.
    const VOLUME: u64 = 8 * BLOCK_SIZE;

    /// Two blocks written at block 3 of an eight-block volume: data, then
    /// zeros (written zeros are present blocks).
    fn written() -> Vec<u8> {
        let mut data = vec![0u8; 2 * BLOCK_SIZE as usize];
        data[..BLOCK_SIZE as usize].fill(0xab);
        data
    }

    /// A completed eight-block snapshot holding [`written`] at block 3 and
    /// tagged `disk=root`, and a completed empty two-block one.
    fn completed_pair(f: &CatalogFixture, token: &str) -> (SnapshotId, SnapshotId) {
        let s0 = f
            .snapshots
            .start_snapshot(
                &f.account,
                VOLUME,
                &["disk=root".parse().unwrap()],
                &Encryption::Unencrypted,
                &format!("{token}-0"),
            )
            .unwrap();
        let s1 = f
            .snapshots
            .start_snapshot(
                &f.account,
                2 * BLOCK_SIZE,
                &[],
                &Encryption::Unencrypted,
                &format!("{token}-1"),
            )
            .unwrap();
        f.snapshots.write_blocks(&s0, 3, &written()).unwrap();
        f.snapshots.complete_snapshot(&s0, 2).unwrap();
        f.snapshots.complete_snapshot(&s1, 0).unwrap();
        (s0, s1)
    }

    /// The metadata of an image named `name` over two disks.
    fn two_disks(name: &str) -> ImageMetadata {
        let mapping = |device: &str, disk: usize, gib: u64| crate::image::BlockDeviceMapping {
            device_name: device.parse::<DeviceName>().unwrap(),
            ebs: Some(EbsMapping {
                disk: Some(disk),
                volume_size_gib: gib,
                volume_type: VolumeType::Gp3,
                iops: Some(3000),
                throughput: Some(125),
                delete_on_termination: true,
                encrypted: false,
                kms_key_id: None,
            }),
            virtual_name: None,
            no_device: false,
        };
        ImageMetadata {
            description: Some("from the contract".into()),
            block_device_mappings: vec![mapping("/dev/xvda", 0, 1), mapping("/dev/xvdb", 1, 1)],
            tags: vec!["Name=contract".parse().unwrap()],
            ..ImageMetadata::minimal(
                name.parse().unwrap(),
                Architecture::Arm64,
                "/dev/xvda".parse().unwrap(),
            )
        }
    }

    /// A snapshot is started once per client token, and only its account
    /// sees it or finds it by the token; a started snapshot keeps its size
    /// and tags (and is `pending` where the store models that).
    pub fn snapshots_start_once_per_token_for_their_account_only(f: &CatalogFixture) {
        let (account, snapshots) = (&f.account, f.snapshots.as_ref());
        let s0 = snapshots
            .start_snapshot(
                account,
                VOLUME,
                &["disk=root".parse().unwrap()],
                &Encryption::Unencrypted,
                "ct-0",
            )
            .unwrap();
        assert_eq!(
            snapshots
                .start_snapshot(account, VOLUME, &[], &Encryption::Unencrypted, "ct-0")
                .unwrap(),
            s0,
            "idempotent by token"
        );
        let s1 = snapshots
            .start_snapshot(
                account,
                2 * BLOCK_SIZE,
                &[],
                &Encryption::Unencrypted,
                "ct-1",
            )
            .unwrap();
        assert_ne!(s0, s1);
        assert_eq!(
            snapshots.find_snapshot_by_token(account, "ct-1").unwrap(),
            Some(s1.clone())
        );
        assert_eq!(
            snapshots.find_snapshot_by_token(account, "ct-9").unwrap(),
            None
        );
        assert_eq!(
            snapshots.find_snapshot_by_token(&other(), "ct-1").unwrap(),
            None
        );

        let started = snapshots.describe_snapshot(account, &s0).unwrap();
        assert_eq!((&started.snapshot_id, started.volume_size), (&s0, VOLUME));
        if f.models_lifecycle {
            assert_eq!(
                started.state,
                ResourceState::Pending,
                "a started snapshot is pending"
            );
        }
        assert_eq!(started.tags, vec!["disk=root".parse().unwrap()]);
        assert!(
            matches!(
                snapshots.describe_snapshot(&other(), &s0),
                Err(crate::Error::NotFound(_))
            ),
            "another account's snapshot is not found"
        );
    }

    /// Blocks are written within the volume (again, harmlessly), completed
    /// with their count, and read back: present blocks, written zeros
    /// included, and absent ones as zeros.
    pub fn blocks_are_written_within_the_volume_completed_and_read_back(f: &CatalogFixture) {
        let (account, snapshots) = (&f.account, f.snapshots.as_ref());
        let start = |size: u64, token: &str| {
            snapshots
                .start_snapshot(account, size, &[], &Encryption::Unencrypted, token)
                .unwrap()
        };
        let (s0, s1) = (start(VOLUME, "bw-0"), start(2 * BLOCK_SIZE, "bw-1"));
        let data = written();
        snapshots.write_blocks(&s0, 3, &data).unwrap(); // block 3 data, block 4 written zeros
        snapshots.write_blocks(&s0, 3, &data).unwrap(); // rewriting is harmless
        assert!(
            snapshots.write_blocks(&s0, 7, &data).is_err(),
            "past the end"
        );
        if f.models_lifecycle {
            assert!(
                snapshots.complete_snapshot(&s0, 5).is_err(),
                "wrong changed-block count"
            );
        }
        snapshots.complete_snapshot(&s0, 2).unwrap();
        snapshots.complete_snapshot(&s1, 0).unwrap();
        assert_eq!(
            snapshots.describe_snapshot(account, &s0).unwrap().state,
            ResourceState::Available,
            "a completed snapshot is available"
        );

        // What a store reads back: present blocks (written zeros included) and data.
        assert_eq!(
            snapshots.list_blocks(account, &s0).unwrap(),
            BlockRanges::from_unsorted(vec![3..5])
        );
        assert_eq!(
            snapshots.list_blocks(account, &s1).unwrap(),
            BlockRanges::default()
        );
        let mut back = vec![1u8; 3 * BLOCK_SIZE as usize];
        snapshots.read_blocks(&s0, 2, &mut back).unwrap();
        assert!(
            back[..BLOCK_SIZE as usize].iter().all(|&b| b == 0),
            "absent blocks read as zeros"
        );
        assert_eq!(&back[BLOCK_SIZE as usize..], &data[..]);
        assert!(matches!(
            snapshots.list_blocks(&other(), &s0),
            Err(Error::NotFound(_))
        ));
    }

    /// An image is registered once per client token over its snapshots, with
    /// its metadata as given; its name is then taken in its account only,
    /// and only its account lists it or finds it by the token. A second image
    /// of the same name is refused, and the snapshot left loose is found by
    /// its token until it is deleted.
    pub fn images_register_once_per_token_and_once_per_name(f: &CatalogFixture) {
        let (account, catalog, snapshots) = (&f.account, f.catalog.as_ref(), f.snapshots.as_ref());
        let (s0, s1) = completed_pair(f, "reg");
        let metadata = two_disks("contract image");
        let name = metadata.name.clone();
        assert!(!catalog.image_name_taken(account, &name).unwrap());
        let id = catalog
            .register_image(account, &metadata, &[s0.clone(), s1.clone()], "img-token")
            .unwrap();
        assert_eq!(
            catalog
                .register_image(account, &metadata, &[s0.clone(), s1.clone()], "img-token")
                .unwrap(),
            id,
            "idempotent by token"
        );
        assert!(catalog.image_name_taken(account, &name).unwrap());
        assert!(!catalog.image_name_taken(&other(), &name).unwrap());
        let listed: Vec<ImageId> = catalog
            .list_images(account)
            .unwrap()
            .into_iter()
            .map(|i| i.image_id)
            .collect();
        assert_eq!(listed, vec![id.clone()]);
        assert!(catalog.list_images(&other()).unwrap().is_empty());
        let image = catalog.describe_image(account, &id).unwrap();
        assert_eq!(image.state, ResourceState::Pending);
        assert_eq!(image.owner_id, *account);
        assert_eq!(
            image.metadata.description.as_deref(),
            Some("from the contract")
        );
        assert_eq!(
            image.metadata.block_device_mappings,
            metadata.block_device_mappings
        );
        assert_eq!(image.metadata.tags, metadata.tags);
        let snaps: Vec<_> = image
            .snapshots
            .iter()
            .map(|s| {
                (
                    s.snapshot_id.clone(),
                    s.device_name.to_string(),
                    s.volume_size,
                )
            })
            .collect();
        assert_eq!(
            snaps,
            vec![
                (s0.clone(), "/dev/xvda".into(), VOLUME),
                (s1.clone(), "/dev/xvdb".into(), 2 * BLOCK_SIZE)
            ]
        );
        assert_eq!(image.snapshots[0].tags, vec!["disk=root".parse().unwrap()]);
        assert_eq!(
            catalog
                .find_image_by_token(account, "img-token")
                .unwrap()
                .map(|i| i.image_id),
            Some(id.clone())
        );
        assert_eq!(catalog.find_image_by_token(account, "nope").unwrap(), None);

        let mut other_meta = metadata.clone();
        other_meta.block_device_mappings.truncate(1);
        let s2 = snapshots
            .start_snapshot(account, VOLUME, &[], &Encryption::Unencrypted, "ct-2")
            .unwrap();
        assert!(matches!(
            catalog.register_image(
                account,
                &other_meta,
                std::slice::from_ref(&s2),
                "img-token-2"
            ),
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(
            snapshots.find_snapshot_by_token(account, "ct-2").unwrap(),
            Some(s2.clone()),
            "a loose snapshot is found by its token"
        );
        snapshots.delete_snapshot(&s2).unwrap();
        assert_eq!(
            snapshots.find_snapshot_by_token(account, "ct-2").unwrap(),
            None,
            "a deleted snapshot is not"
        );
        // Leaves the account as it found it, for a second run on one server
        // (a pending image cannot be deregistered).
        catalog
            .set_image_state(account, &id, ResourceState::Failed, Some("contract"))
            .unwrap();
        catalog.deregister_image(account, &id).unwrap();
    }

    /// An image's state (and reason) is its snapshots' too; only its account
    /// sees it or deregisters it, and deregistering removes the image and
    /// its snapshots.
    pub fn an_image_s_state_is_its_snapshots_and_deregistering_removes_both(f: &CatalogFixture) {
        let (account, catalog, snapshots) = (&f.account, f.catalog.as_ref(), f.snapshots.as_ref());
        let (s0, s1) = completed_pair(f, "st");
        let id = catalog
            .register_image(
                account,
                &two_disks("contract states"),
                &[s0.clone(), s1],
                "st-image",
            )
            .unwrap();
        catalog
            .set_image_state(account, &id, ResourceState::Available, None)
            .unwrap();
        let image = catalog.describe_image(account, &id).unwrap();
        assert_eq!(image.state, ResourceState::Available);
        assert!(
            image
                .snapshots
                .iter()
                .all(|s| s.state == ResourceState::Available)
        );

        // Other accounts see nothing.
        assert!(matches!(
            catalog.describe_image(&other(), &id),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            catalog.describe_image(account, &ImageId::fresh()),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            catalog.deregister_image(&other(), &id),
            Err(Error::NotFound(_))
        ));

        catalog
            .set_image_state(account, &id, ResourceState::Failed, Some("contract"))
            .unwrap();
        let failed = catalog.describe_image(account, &id).unwrap();
        assert_eq!(
            (failed.state, failed.state_reason.as_deref()),
            (ResourceState::Failed, Some("contract"))
        );
        assert!(
            failed
                .snapshots
                .iter()
                .all(|s| s.state == ResourceState::Failed)
        );
        catalog.deregister_image(account, &id).unwrap();
        assert!(matches!(
            catalog.describe_image(account, &id),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            snapshots.list_blocks(account, &s0),
            Err(Error::NotFound(_))
        ));
    }
}

/// One `#[test]` per clause of the catalog and snapshot store contract
/// ([`contract::catalog_and_snapshots`](crate::ports::contract::catalog_and_snapshots)).
/// `$make` is a closure from the clause's name to `(guard, fixture)`: a
/// [`CatalogFixture`] whose account has no images, and `guard` kept alive for
/// the test (a backend whose images are shared between tests can give each
/// clause a place of its own by its name).
#[macro_export]
macro_rules! catalog_contract {
    ($make:expr) => {
        $crate::catalog_contract!(@clauses $make;
            snapshots_start_once_per_token_for_their_account_only,
            blocks_are_written_within_the_volume_completed_and_read_back,
            images_register_once_per_token_and_once_per_name,
            an_image_s_state_is_its_snapshots_and_deregistering_removes_both);
    };
    (@clauses $make:expr; $($clause:ident),+) => {
        $(
            #[test]
            fn $clause() {
                let (_guard, fixture) = ($make)(stringify!($clause));
                $crate::ports::contract::catalog_and_snapshots::$clause(&fixture);
            }
        )+
    };
}

//! The port contract suites (written once in `amistore-core`), run against the
//! local adapters.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use amistore_core::ports::contract;
use amistore_local::image_library::ImageLibrary;
use amistore_local::object_store::FolderObjectStore;
use amistore_local::task_store::SqliteTaskStore;

/// The object store contract, clause by clause, each in a fresh data directory.
mod folder_object_store {
    use super::*;
    use amistore_core::ports::contract::ObjectStoreFixture;

    amistore_core::object_store_contract!({
        let dir = tempfile::tempdir().unwrap();
        let store = FolderObjectStore::open(&dir.path().join("data"))
            .unwrap()
            .with_min_part_size(1024);
        let bucket = "contract-bucket".parse().unwrap();
        store.create_bucket(&bucket).unwrap();
        let fixture = ObjectStoreFixture {
            store: Arc::new(store),
            owner: amistore_core::ids::AccountId::local_default(),
            bucket,
            missing: "no-such-bucket".parse().unwrap(),
            scratch: dir.path().to_owned(),
            min_part: 1024,
        };
        (dir, fixture)
    });
}

#[test]
fn folder_object_store_keeps_the_bucket_admin_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract::bucket_admin(&FolderObjectStore::open(&dir.path().join("data")).unwrap());
}

/// The task store contract, clause by clause, on a fresh SQLite database each.
mod sqlite_task_store {
    use super::*;

    amistore_core::task_store_contract!({
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteTaskStore::open(&dir.path().join("tasks.db"), None).unwrap();
        (
            dir,
            Arc::new(db) as Arc<dyn amistore_core::ports::TaskStore>,
        )
    });
}

#[test]
fn image_library_keeps_the_catalog_and_snapshot_contracts() {
    let dir = tempfile::tempdir().unwrap();
    let library = ImageLibrary::open(dir.path()).unwrap();
    contract::catalog_and_snapshots(&library, &library, &"123456789012".parse().unwrap(), true);
}

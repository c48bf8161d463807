//! The port contract suites (written once in `amistore-core`), run against the
//! local adapters.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

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

/// The bucket administration contract, clause by clause, each in a fresh
/// data directory.
mod folder_bucket_admin {
    use super::*;

    amistore_core::bucket_admin_contract!({
        let dir = tempfile::tempdir().unwrap();
        let store = FolderObjectStore::open(&dir.path().join("data")).unwrap();
        (dir, store)
    });
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

/// The catalog and snapshot store contract, clause by clause, each on a fresh
/// image library.
mod image_library {
    use super::*;
    use amistore_core::ports::contract::CatalogFixture;

    amistore_core::catalog_contract!(|_clause: &str| {
        let dir = tempfile::tempdir().unwrap();
        let library = Arc::new(ImageLibrary::open(dir.path()).unwrap());
        let fixture = CatalogFixture {
            catalog: library.clone(),
            snapshots: library,
            account: "123456789012".parse().unwrap(),
            models_lifecycle: true,
        };
        (dir, fixture)
    });
}

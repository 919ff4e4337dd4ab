//! Reclaiming expired object-lock versions (prune's object-lock step) is a
//! deletion: its audit record must be in the repository before the first
//! version is deleted, so a crash between the two can leave a record of a
//! deletion that did not happen, never a deletion nobody can see.
//!
//! The storage here is an in-memory repository with a versioned side that
//! holds a few non-current versions (expired or still locked) and records,
//! in order, every audit put and every version delete.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use lifeboat_repo::audit;
use lifeboat_repo::objectlock::{ObjectLockConfig, maintain};
use lifeboat_storage::{
    BoundedGet, BucketLock, Capabilities, DefaultRetention, DynStorage, Kind, LockMode,
    MemoryStorage, ObjectInfo, ObjectKey, ObjectVersion, Result, Retention, Storage,
    VersionedStorage,
};

#[allow(dead_code)]
#[path = "../../testkit/src/repo.rs"]
mod fixtures;

#[derive(Debug)]
struct Versioned {
    inner: MemoryStorage,
    /// Non-current versions and, for the locked ones, their retain-until.
    old: Mutex<Vec<(ObjectVersion, Option<jiff::Timestamp>)>>,
    /// "audit" for every put of an audit record, "delete <version>" for
    /// every version deleted, in the order they happened.
    events: Mutex<Vec<String>>,
}

#[async_trait]
impl Storage for Versioned {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<()> {
        let r = self.inner.put(key, data).await;
        if key.kind() == Kind::Audit && r.is_ok() {
            self.events.lock().unwrap().push("audit".into());
        }
        r
    }
    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes> {
        self.inner.get_range(key, offset, len).await
    }
    async fn get_at_most(&self, key: &ObjectKey, max: u64) -> Result<BoundedGet> {
        self.inner.get_at_most(key, max).await
    }
    async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>> {
        self.inner.stat(key).await
    }
    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        self.inner.list(kind).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.inner.delete(key).await
    }
    fn versioned(&self) -> Option<&dyn VersionedStorage> {
        Some(self)
    }
}

#[async_trait]
impl VersionedStorage for Versioned {
    async fn bucket_lock(&self) -> Result<BucketLock> {
        Ok(BucketLock {
            enabled: true,
            default_retention: Some(DefaultRetention {
                mode: LockMode::Governance,
                days: 1,
            }),
        })
    }
    async fn set_default_retention(&self, _: DefaultRetention) -> Result<()> {
        Ok(())
    }
    async fn list_versions(&self, kind: Kind) -> Result<Vec<ObjectVersion>> {
        let mut out: Vec<ObjectVersion> = self
            .inner
            .list(kind)
            .await?
            .into_iter()
            .map(|i| ObjectVersion {
                key: i.key,
                version_id: "current".into(),
                last_modified: jiff::Timestamp::now(),
                size_bytes: i.size_bytes,
                delete_marker: false,
                latest: true,
                etag: None,
            })
            .collect();
        out.extend(
            self.old
                .lock()
                .unwrap()
                .iter()
                .filter(|(v, _)| v.key.kind() == kind)
                .map(|(v, _)| v.clone()),
        );
        Ok(out)
    }
    async fn get_version(&self, key: &ObjectKey, _: &str) -> Result<Bytes> {
        self.inner.get(key).await
    }
    async fn get_version_range(
        &self,
        key: &ObjectKey,
        _: &str,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        self.inner.get_range(key, offset, len).await
    }
    async fn retention(&self, key: &ObjectKey, version_id: &str) -> Result<Option<Retention>> {
        Ok(self
            .old
            .lock()
            .unwrap()
            .iter()
            .find(|(v, _)| &v.key == key && v.version_id == version_id)
            .and_then(|(_, until)| {
                until.map(|until| Retention {
                    mode: LockMode::Governance,
                    until,
                })
            }))
    }
    async fn set_retention(&self, _: &ObjectKey, _: &str, _: Retention) -> Result<()> {
        Ok(())
    }
    async fn delete_version(&self, key: &ObjectKey, version_id: &str) -> Result<()> {
        self.old
            .lock()
            .unwrap()
            .retain(|(v, _)| !(&v.key == key && v.version_id == version_id));
        self.events
            .lock()
            .unwrap()
            .push(format!("delete {version_id}"));
        Ok(())
    }
    async fn copy_version_to_current(&self, _: &ObjectKey, _: &str) -> Result<()> {
        unreachable!("a prune never copies a version back")
    }
}

fn old_version(kind: Kind, name: &str, size: u64) -> ObjectVersion {
    ObjectVersion {
        key: ObjectKey::new(kind, name.to_string()),
        version_id: format!("old-{name}"),
        last_modified: jiff::Timestamp::UNIX_EPOCH,
        size_bytes: size,
        delete_marker: false,
        latest: false,
        etag: None,
    }
}

#[tokio::test]
async fn reclaim_writes_its_audit_record_before_it_deletes_any_version() {
    // Witnesses of the audit log go to a scratch state directory.
    let state = tempfile::tempdir().unwrap();
    audit::set_witness_dir(Some(state.path().to_path_buf()));
    let storage = Arc::new(Versioned {
        inner: MemoryStorage::new(),
        old: Mutex::new(Vec::new()),
        events: Mutex::new(Vec::new()),
    });
    let repo = fixtures::init_on(storage.clone() as DynStorage, fixtures::init_options()).await;
    let later = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(24))
        .unwrap();
    storage.old.lock().unwrap().extend([
        (old_version(Kind::Packs, &"a".repeat(64), 1000), None),
        (old_version(Kind::Snapshots, &"b".repeat(64), 200), None),
        (old_version(Kind::Packs, &"c".repeat(64), 5000), Some(later)),
    ]);
    storage.events.lock().unwrap().clear();

    let config = ObjectLockConfig {
        mode: LockMode::Governance,
        days: 1,
    };
    let m = maintain(&repo, config).await.unwrap();
    assert_eq!(m.reclaim.versions_deleted, 2);
    assert_eq!(m.reclaim.bytes_deleted, 1200);
    assert_eq!(m.reclaim.versions_deferred, 1);

    // The `lock extend` record, then the `lock reclaim` record, and only
    // then the deletes.
    let events = storage.events.lock().unwrap().clone();
    let first_delete = events
        .iter()
        .position(|e| e.starts_with("delete"))
        .expect("versions were deleted");
    let audits_before = events[..first_delete]
        .iter()
        .filter(|e| *e == "audit")
        .count();
    assert_eq!(
        audits_before, 2,
        "the reclaim's audit record must be written before its first delete: {events:?}"
    );
    assert_eq!(events.len(), 4, "{events:?}");

    // And the record says what was deleted.
    let log = audit::read_log(&repo).await.unwrap();
    let reclaim = log
        .records
        .iter()
        .map(|r| &r.record)
        .find(|r| r.op == "lock-reclaim")
        .expect("a lock reclaim record");
    assert_eq!(reclaim.bytes_deleted, 1200);
    assert_eq!(reclaim.args["versions_deleted"], 2);
    assert_eq!(reclaim.args["versions_deferred"], 1);
    // The locked version is still there.
    assert_eq!(storage.old.lock().unwrap().len(), 1);
}

//! In-memory backend: the reference implementation of the contract, used by
//! API tests and by the fault/crash simulations in `lifeboat-testkit`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Capabilities, Error, ErrorKind, Kind, ObjectInfo, ObjectKey, Result, Storage};

#[derive(Debug, Default, Clone)]
pub struct MemoryStorage {
    objects: Arc<Mutex<BTreeMap<ObjectKey, Bytes>>>,
    /// What [`Capabilities::round_trips`] says (false unless a test asks
    /// the memory store to behave like object storage).
    round_trips: bool,
}

impl MemoryStorage {
    /// The same objects, declaring [`Capabilities::round_trips`]: for tests
    /// of the code paths meant for object storage.
    pub fn with_round_trips(&self) -> Self {
        MemoryStorage {
            objects: self.objects.clone(),
            round_trips: true,
        }
    }

    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces an object's bytes behind the contract's back, for damage tests.
    pub fn tamper(&self, key: &ObjectKey, data: Bytes) {
        self.objects.lock().unwrap().insert(key.clone(), data);
    }

    /// Every object, for inspection in tests.
    pub fn snapshot(&self) -> BTreeMap<ObjectKey, Bytes> {
        self.objects.lock().unwrap().clone()
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn location(&self) -> String {
        "memory:".into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_connections: 16,
            atomic_create: true,
            list_after_write: true,
            round_trips: self.round_trips,
        }
    }

    async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<()> {
        let mut objects = self.objects.lock().unwrap();
        if objects.contains_key(key) {
            return Err(Error::already_exists(key));
        }
        objects.insert(key.clone(), data);
        Ok(())
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::not_found(key))
    }

    async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes> {
        let data = self.get(key).await?;
        slice_range(key, &data, offset, len)
    }

    async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .map(|d| d.len() as u64))
    }

    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        Ok(self
            .objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| {
                k.kind() == kind && (kind != Kind::Config || **k == ObjectKey::config())
            })
            .map(|(k, v)| ObjectInfo {
                key: k.clone(),
                size_bytes: v.len() as u64,
            })
            .collect())
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }
}

/// Cuts `offset..offset+len` out of a whole object, enforcing the range rule
/// of the contract. Shared by backends that fetch whole objects.
pub(crate) fn slice_range(key: &ObjectKey, data: &Bytes, offset: u64, len: u64) -> Result<Bytes> {
    let end = offset.checked_add(len);
    match end {
        Some(end) if end <= data.len() as u64 => Ok(data.slice(offset as usize..end as usize)),
        _ => Err(Error::new(
            ErrorKind::InvalidRange,
            format!(
                "range {offset}+{len} is outside object {key} of {} bytes",
                data.len()
            ),
        )),
    }
}

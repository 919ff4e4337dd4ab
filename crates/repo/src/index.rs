//! The index: which pack holds each blob.
//!
//! Stored as index objects, each `seal(postcard(IndexFile), INDEX_AAD)` and
//! named by the BLAKE3 of the sealed bytes. Every write session adds its own
//! index objects; readers merge all of them. An index object may list packs
//! that other index objects list too (harmless); `supersedes` names index
//! objects this one replaces (written by `repair index`), which are deleted
//! only after it is durable.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::crypto::MasterKey;
use crate::pack::{BlobType, PackEntry};
use crate::{Error, Id, Result};

pub(crate) const INDEX_AAD: &[u8] = b"lifeboat index v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexPack {
    pub id: Id,
    pub entries: Vec<PackEntry>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexFile {
    pub packs: Vec<IndexPack>,
    pub supersedes: Vec<Id>,
}

impl IndexFile {
    pub fn encode(&self, key: &MasterKey) -> Vec<u8> {
        key.seal(
            &postcard::to_allocvec(self).expect("index serializes"),
            INDEX_AAD,
        )
    }

    pub fn decode(key: &MasterKey, object: &str, sealed: &[u8]) -> Result<Self> {
        let plain = key
            .open(sealed, INDEX_AAD)
            .ok_or_else(|| Error::corrupt(object, "authentication failed"))?;
        postcard::from_bytes(&plain).map_err(|e| Error::corrupt(object, e))
    }
}

/// Where one blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: Id,
    pub entry: PackEntry,
}

/// The merged in-memory index.
#[derive(Debug, Default, Clone)]
pub struct Index {
    blobs: HashMap<Id, BlobLocation>,
    /// Packs named by some index object, with their blob count.
    packs: HashMap<Id, u32>,
}

impl Index {
    pub fn add_pack(&mut self, pack: &IndexPack) {
        *self.packs.entry(pack.id).or_default() += pack.entries.len() as u32;
        for e in &pack.entries {
            self.blobs.entry(e.id).or_insert(BlobLocation {
                pack: pack.id,
                entry: *e,
            });
        }
    }

    pub fn get(&self, id: &Id) -> Option<&BlobLocation> {
        self.blobs.get(id)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn has_pack(&self, id: &Id) -> bool {
        self.packs.contains_key(id)
    }

    pub fn packs(&self) -> impl Iterator<Item = &Id> {
        self.packs.keys()
    }

    pub fn blobs(&self) -> impl Iterator<Item = (&Id, &BlobLocation)> {
        self.blobs.iter()
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    pub fn blob_count_of(&self, t: BlobType) -> usize {
        self.blobs
            .values()
            .filter(|l| l.entry.blob_type == t)
            .count()
    }
}

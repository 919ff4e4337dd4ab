//! Size bounds on untrusted objects and length fields.
//!
//! Objects are read whole (config, key files, locks, index objects,
//! snapshot records). Anyone who can write to the storage, password or
//! not, can plant one of any size, and a reader that simply read it would
//! allocate that much: a 2 GiB sparse file in `locks/` would cost every
//! backup 2 GiB. So each kind has a maximum stored size, checked from the
//! listing (or, for an object not found by a listing, a size probe)
//! *before* the object is read, and an object over it is refused as
//! corrupt, naming it. The bounds are far above anything lifeboat writes
//! and are stated in docs/security.md; the fuzz targets feed no more than
//! them.
//!
//! Length fields inside authenticated objects (an index entry's blob
//! length) come from a key holder, or from a bug: they are bounded
//! likewise when an index object is decoded, so no entry can make a
//! reader allocate more than [`MAX_BLOB_LEN`] per blob.

use bytes::Bytes;
use lifeboat_storage::{BoundedGet, DynStorage, Kind, ObjectKey};

use crate::{Error, Result};

/// `config`: about 300 bytes of JSON plus a cold-tier location.
pub const MAX_CONFIG_LEN: u64 = 64 * 1024;
/// A key file: about 800 bytes of JSON.
pub const MAX_KEY_FILE_LEN: u64 = 64 * 1024;
/// A lock: about 200 bytes.
pub const MAX_LOCK_LEN: u64 = 64 * 1024;
/// A snapshot record: its paths, tags and connector data; a backup of
/// tens of thousands of paths stays far below.
pub const MAX_SNAPSHOT_LEN: u64 = 16 * 1024 * 1024;
/// An audit record: one operation's who, what and which snapshots (a
/// `forget` of thousands of snapshots lists each, about 300 bytes apiece).
pub const MAX_AUDIT_LEN: u64 = 16 * 1024 * 1024;
/// A protection: about 200 bytes.
pub const MAX_PROTECT_LEN: u64 = 64 * 1024;
/// An index object. Writers split index objects so that none holds more
/// than [`MAX_INDEX_ENTRIES`] entries (at most 49 bytes each, so under
/// 47 MiB); the bound leaves room for the postcard framing.
pub const MAX_INDEX_LEN: u64 = 64 * 1024 * 1024;
/// Entries a writer puts in one index object (see [`MAX_INDEX_LEN`]).
pub const MAX_INDEX_ENTRIES: usize = 1_000_000;
/// Plaintext of one blob: data blobs are at most the chunker's largest
/// `max_size` (16 MiB); trees are bounded here, and a backup refuses a
/// directory whose listing would be larger (about two million entries).
pub const MAX_BLOB_LEN: u32 = 256 * 1024 * 1024;

/// The maximum stored size of an object of this kind, for the kinds read
/// whole (`None` for packs, read by range, and archive objects, bounded by
/// their own format).
pub fn max_object_len(kind: Kind) -> Option<u64> {
    match kind {
        Kind::Config => Some(MAX_CONFIG_LEN),
        Kind::Keys => Some(MAX_KEY_FILE_LEN),
        Kind::Locks => Some(MAX_LOCK_LEN),
        Kind::Snapshots => Some(MAX_SNAPSHOT_LEN),
        Kind::Index => Some(MAX_INDEX_LEN),
        Kind::Audit => Some(MAX_AUDIT_LEN),
        Kind::Protect => Some(MAX_PROTECT_LEN),
        Kind::Packs | Kind::Archive => None,
    }
}

/// The error for an object larger than its kind allows.
pub(crate) fn too_large(key: &ObjectKey, size: Option<u64>, max: u64) -> Error {
    let size = size.map_or_else(|| "larger".to_string(), |s| format!("{s} bytes"));
    Error::corrupt(
        key,
        format!("{size}, more than the {max} bytes such an object may have (not read)"),
    )
}

/// Reads a whole object after checking its size against its kind's bound:
/// `listed` is the size a listing gave; without it the object is read
/// through [`Storage::get_at_most`](lifeboat_storage::Storage::get_at_most),
/// which never holds much more than the bound (a missing object fails as a
/// read would, `NotFound`).
pub(crate) async fn get_bounded(
    storage: &DynStorage,
    key: &ObjectKey,
    listed: Option<u64>,
) -> Result<Bytes> {
    let Some(max) = max_object_len(key.kind()) else {
        return Ok(storage.get(key).await?);
    };
    let Some(size) = listed else {
        // No listing: one bounded read instead of a size probe and a read.
        return match storage.get_at_most(key, max).await? {
            BoundedGet::Whole(bytes) => Ok(bytes),
            BoundedGet::TooLarge(size) => Err(too_large(key, size, max)),
        };
    };
    if size > max {
        return Err(too_large(key, Some(size), max));
    }
    let bytes = storage.get(key).await?;
    // Replaced by a larger object between the listing and the read.
    if bytes.len() as u64 > max {
        return Err(too_large(key, Some(bytes.len() as u64), max));
    }
    Ok(bytes)
}

//! OpenDAL-backed remote storage (S3-compatible object storage, SFTP).
//! TODO(storage helper): implement.

use crate::{Capabilities, DynStorage, Result};

#[derive(Debug)]
pub struct OpendalStorage {
    _op: opendal::Operator,
}

//! Repository locations as URLs. TODO(storage helper): implement s3://, sftp://.

use std::path::PathBuf;
use std::sync::Arc;

use crate::{DynStorage, LocalStorage, Result};

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
}

impl Location {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(Location::Local(PathBuf::from(s)))
    }
}

/// Opens the storage behind a location (with retries for remote backends).
pub async fn open_location(location: &Location) -> Result<DynStorage> {
    match location {
        Location::Local(p) => Ok(Arc::new(LocalStorage::new(p.clone()))),
    }
}

//! Retry wrapper. TODO(storage helper): implement.
#[derive(Debug, Clone)]
pub struct RetryPolicy;
#[derive(Debug)]
pub struct RetryStorage;

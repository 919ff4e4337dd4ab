//! Object names: a [`Kind`] (the namespace) and a name within it.

use std::fmt;

/// The namespaces of a repository. Each maps to one directory (or key prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The single `config` object.
    Config,
    Keys,
    /// Pack files, fanned out by the first two hex digits of their name so no
    /// directory holds more than a few thousand entries.
    Packs,
    Index,
    Snapshots,
    Locks,
    /// Archive objects: database log files (PostgreSQL WAL first), one
    /// sealed object per file, outside packs (`lifeboat_repo::archive`).
    /// The prefix stays `wal`, the name it had when PostgreSQL WAL was its
    /// only content: existing repositories keep their objects where they
    /// are.
    Archive,
    /// The audit log: one sealed record per mutating operation, hash-linked
    /// (`lifeboat_repo::audit`).
    Audit,
    /// Protections: one object per protected snapshot and end date
    /// (`lifeboat_repo::protect`); `forget` keeps what they name.
    Protect,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Config,
        Kind::Keys,
        Kind::Packs,
        Kind::Index,
        Kind::Snapshots,
        Kind::Locks,
        Kind::Archive,
        Kind::Audit,
        Kind::Protect,
    ];

    /// Directory (prefix) of this namespace, relative to the repository root.
    pub fn dir(self) -> &'static str {
        match self {
            Kind::Config => "",
            Kind::Keys => "keys",
            Kind::Packs => "data",
            Kind::Index => "index",
            Kind::Snapshots => "snapshots",
            Kind::Locks => "locks",
            Kind::Archive => "wal",
            Kind::Audit => "audit",
            Kind::Protect => "protect",
        }
    }
}

/// A validated object name. Names are restricted to `[0-9a-z._-]`, 1..=128
/// bytes, so they are safe as file names and S3 keys on every backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    kind: Kind,
    name: String,
}

impl ObjectKey {
    /// Panics if `name` is not a valid object name: names are produced by the
    /// program (hex digests, fixed words), so an invalid one is a bug. Use
    /// [`ObjectKey::parse`] for names read from a listing.
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        let name = name.into();
        assert!(valid_name(&name), "invalid object name {name:?}");
        Self { kind, name }
    }

    pub fn parse(kind: Kind, name: &str) -> Option<Self> {
        valid_name(name).then(|| Self {
            kind,
            name: name.to_string(),
        })
    }

    pub fn config() -> Self {
        Self::new(Kind::Config, "config")
    }

    /// The location marker: the plain-text object that names the
    /// repository a location belongs to (docs/format.md, "Location
    /// markers"). Written at `init` in every cold tier.
    pub fn marker() -> Self {
        Self::new(Kind::Config, "marker")
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path relative to the repository root, with `/` separators.
    pub fn path(&self) -> String {
        match self.kind {
            Kind::Config => self.name.clone(),
            Kind::Packs => {
                let fan = self.name.get(..2).unwrap_or("00");
                format!("{}/{}/{}", self.kind.dir(), fan, self.name)
            }
            k => format!("{}/{}", k.dir(), self.name),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b"._-".contains(&b))
}

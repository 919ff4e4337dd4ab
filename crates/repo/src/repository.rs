//! Opening and creating a repository, and reading from it.
//!
//! [`Repository`] is the read handle: it holds the storage, the master key and
//! the config, and loads the index on first use. Writing goes through a
//! [`crate::WriteSession`]; key management, check and repair are free
//! functions in their own modules that take the handle.
//!
//! Tiers: a repository created with a cold tier keeps its *data* packs in a
//! second storage (the cold tier) and everything else — config, keys, index,
//! snapshot records, locks and the packs of tree blobs — in its own storage
//! (the hot tier). Packs never mix blob types, so a pack's tier follows from
//! the type of its blobs as the index records them ([`Repository::tier_of`]):
//! no per-pack table, no extra lookup. The cold storage is opened on first
//! use, so commands that only read trees (listing, `ls`, `find`, `diff`,
//! `forget`) never contact it at all.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use lifeboat_storage::{DynStorage, ErrorKind, Kind, ObjectKey};
use lifeboat_storage::{Location, ObjectInfo, open_location};
use serde::Serialize;
use tokio::sync::Mutex as AsyncMutex;
use tokio::sync::OnceCell;

use crate::config::{ChunkerParams, ColdTierConfig, Config};
use crate::crypto::MasterKey;
use crate::diskcache::DiskCache;
use crate::index::{BlobLocation, Index, IndexFile};
use crate::keyfile::{KdfParams, KeyFile, Permission, Role};
use crate::limits::get_bounded;
use crate::local::LocalState;
use crate::pack::BlobType;
use crate::packread::TreePacks;
use crate::record::{Snapshot, SnapshotRecord};
use crate::tree::Tree;
use crate::{Error, Id, Result};

/// Parameters of a new repository.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub kdf: KdfParams,
    pub compression_level: i32,
    /// Target pack size in bytes. 16 MiB: few enough objects for object
    /// storage listing and request costs, small enough to keep upload buffers
    /// (and restore range reads) modest.
    pub pack_size: u32,
    /// Reuse another repository's chunker parameters so both chunk alike.
    pub chunker: Option<ChunkerParams>,
    /// Keep data packs in this cold tier (recorded in the config).
    pub cold: Option<ColdInit>,
    /// Lock every object with S3 Object Lock (checked and set on the
    /// bucket, recorded in the config).
    pub object_lock: Option<crate::objectlock::ObjectLockConfig>,
    /// Take write-only keys (`key add --write-only`): format version 4
    /// (docs/format.md §18). Fixed at init, like the cold tier.
    pub write_only_keys: bool,
}

/// The cold tier of a new repository: the location to record and the
/// storage it opens to.
#[derive(Debug, Clone)]
pub struct ColdInit {
    /// Path or URL (no secrets) written into the config.
    pub location: String,
    pub storage: DynStorage,
}

/// Which storage a pack lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The repository's own storage.
    Hot,
    /// The cold tier: data packs of a repository that has one.
    Cold,
}

/// The cold tier of an open repository, opened on first use.
#[derive(Debug)]
struct ColdTier {
    location: String,
    storage: OnceCell<DynStorage>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            kdf: KdfParams::DEFAULT,
            compression_level: 3,
            pack_size: 16 * 1024 * 1024,
            chunker: None,
            cold: None,
            object_lock: None,
            write_only_keys: false,
        }
    }
}

#[derive(Debug)]
pub struct Repository {
    storage: DynStorage,
    key: MasterKey,
    config: Config,
    /// The config object as read at open (or written at init): the hot
    /// tier's marker, compared again before a snapshot record is written.
    config_bytes: Bytes,
    key_id: Id,
    /// What the key `key_id` may do.
    role: Role,
    /// The merged index, loaded on first use and dropped by
    /// [`Repository::invalidate_index`] when a write session adds to it.
    index: AsyncMutex<Option<Arc<Index>>>,
    /// Set exactly when the config names a cold tier.
    cold: Option<ColdTier>,
    /// Whole tree packs read so far, bounded (one request per tree pack
    /// instead of one per tree).
    tree_packs: TreePacks,
    /// This machine's memory of the repository, if the caller gave one.
    local: Option<LocalState>,
    /// `latest` may pass over damaged snapshot records.
    skip_damaged: bool,
    /// Local copies of index objects, snapshot records and tree packs, on
    /// storage where each request is a round trip ([`crate::diskcache`]).
    disk_cache: Option<DiskCache>,
    /// Readers in flight that must see the repository's own bytes, not
    /// cached copies ([`Repository::bypass_cache`]).
    cache_bypass: std::sync::atomic::AtomicUsize,
    /// Snapshot records this handle listed or wrote, with their stored
    /// sizes: a lookup by full id then needs no size probe (the record
    /// itself usually comes from the metadata cache).
    known_records: std::sync::Mutex<HashMap<Id, u64>>,
}

/// While alive, reads of its repository skip the metadata cache
/// ([`Repository::bypass_cache`]).
pub struct CacheBypass<'a>(&'a Repository);

impl Drop for CacheBypass<'_> {
    fn drop(&mut self) {
        self.0
            .cache_bypass
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Key files an open tries at most (each costs one KDF run, a quarter of a
/// second at the default parameters): far more than the people and
/// machines of one repository, few enough that key files planted by a
/// storage writer cannot make an open take minutes. The key that last
/// opened the repository on this machine is tried first.
pub const MAX_KEY_FILES_TRIED: usize = 16;

impl Repository {
    /// Creates a repository in empty storage, wrapping a new master key under
    /// `password`.
    pub async fn init(storage: DynStorage, password: &[u8], options: InitOptions) -> Result<Self> {
        if storage.stat(&ObjectKey::config()).await?.is_some() {
            return Err(Error::AlreadyInitialized {
                location: storage.location(),
            });
        }
        if !(0..=22).contains(&options.compression_level) {
            return Err(Error::BadInput(
                "compression level must be 0 (off) to 22".into(),
            ));
        }
        if !(1024 * 1024..=1024 * 1024 * 1024).contains(&options.pack_size) {
            return Err(Error::BadInput(
                "pack size must be between 1 MiB and 1 GiB".into(),
            ));
        }
        if let Some(cold) = &options.cold {
            check_cold_storage(&storage, &cold.storage).await?;
        }
        // Before anything is written, so every object (the key file and
        // config included) gets the bucket's default retention.
        if let Some(lock) = options.object_lock {
            crate::objectlock::enable(&storage, lock).await?;
        }
        // The only place a location's root is ever created.
        storage.create_root().await?;
        let mut key = MasterKey::generate();
        let write_only = if options.write_only_keys {
            let public = key.derived_public()?;
            key = key.with_write_only_public(&public)?;
            Some(crate::config::WriteOnlyConfig { public })
        } else {
            None
        };
        let config = Config {
            repository_id: Id(crate::crypto::os_random()),
            chunker: options.chunker.unwrap_or_else(ChunkerParams::generate),
            compression_level: options.compression_level,
            pack_size: options.pack_size,
            created: jiff::Timestamp::now(),
            cold: options.cold.as_ref().map(|c| ColdTierConfig {
                location: c.location.clone(),
            }),
            object_lock: options.object_lock,
            write_only,
        };
        config.chunker.validate()?;
        if let Some(cold) = &options.cold {
            cold.storage.create_root().await?;
            put_idempotent(
                &cold.storage,
                &ObjectKey::marker(),
                marker_bytes(&config.repository_id),
            )
            .await?;
        }
        let key_id = {
            let key = key.clone();
            let password = password.to_vec();
            let kf = blocking(move || KeyFile::create(&key, &password, options.kdf)).await??;
            write_key_file(&storage, &kf).await?
        };
        // The config goes last: a crash before it leaves no repository, just a
        // stray key file, and a second init succeeds.
        let config_bytes = Bytes::from(config.encode(&key));
        match storage
            .put(&ObjectKey::config(), config_bytes.clone())
            .await
        {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(Error::AlreadyInitialized {
                    location: storage.location(),
                });
            }
            r => r?,
        }
        let cold = options.cold.map(|c| ColdTier {
            location: c.location,
            storage: OnceCell::new_with(Some(c.storage)),
        });
        let repo = Repository::handle(storage, key, config, config_bytes, key_id, cold, None);
        // The audit log's first record (the repository exists already: a
        // failure here is a warning, and the next operation starts the log).
        crate::audit::append_after(
            &repo,
            crate::audit::Entry::new("init")
                .arg("compression_level", repo.config.compression_level)
                .arg("pack_size", repo.config.pack_size)
                .arg("cold", repo.config.cold.as_ref().map(|c| &c.location))
                .arg("object_lock", repo.config.object_lock)
                .arg("write_only_keys", repo.config.write_only.is_some()),
        )
        .await;
        Ok(repo)
    }

    /// A new handle: nothing loaded or cached yet.
    fn handle(
        storage: DynStorage,
        key: MasterKey,
        config: Config,
        config_bytes: Bytes,
        key_id: Id,
        cold: Option<ColdTier>,
        local: Option<LocalState>,
    ) -> Repository {
        Repository {
            storage,
            key,
            config,
            config_bytes,
            key_id,
            // Set by an open from the key file; `init` makes a full key.
            role: Role::Full,
            index: AsyncMutex::new(None),
            tree_packs: TreePacks::default(),
            disk_cache: None,
            cache_bypass: Default::default(),
            known_records: Default::default(),
            cold,
            local,
            skip_damaged: false,
        }
    }

    /// Opens a repository: checks the format version, then tries the key
    /// files with `password` (see [`Repository::open_with`]), without local
    /// state.
    pub async fn open(storage: DynStorage, password: &[u8]) -> Result<Self> {
        Self::open_with(storage, password, None).await
    }

    /// Opens a repository (docs/format.md §12.1): checks the format
    /// version, then tries key files with `password`, the one that last
    /// opened this repository on this machine (`local`) first, then the
    /// others in name order. Damaged or planted key files are skipped: one
    /// that does not decode or fails the checks of [`KeyFile::decode`], and
    /// one that unwraps but does not open the config (a key file wrapping
    /// another master key under the same password). At most
    /// [`MAX_KEY_FILES_TRIED`] key files are tried, so planted key files
    /// cannot make an open run the KDF without end.
    pub async fn open_with(
        storage: DynStorage,
        password: &[u8],
        local: Option<LocalState>,
    ) -> Result<Self> {
        let config_bytes = Self::read_config(&storage).await?;
        Self::open_with_config(storage, config_bytes, password, local).await
    }

    /// The stored config of the repository at `storage` (size-bounded, one
    /// request), or [`Error::NoRepository`] when there is none: a caller
    /// that must name a wrong location before asking for a password reads
    /// it first and passes it to [`Repository::open_with_config`], so the
    /// config is fetched once.
    pub async fn read_config(storage: &DynStorage) -> Result<Bytes> {
        match get_bounded(storage, &ObjectKey::config(), None).await {
            Err(e) if e.storage_kind() == Some(ErrorKind::NotFound) => Err(Error::NoRepository {
                location: storage.location(),
            }),
            r => r,
        }
    }

    /// [`Repository::open_with`], with the config already read by
    /// [`Repository::read_config`] from the same storage.
    pub async fn open_with_config(
        storage: DynStorage,
        config_bytes: Bytes,
        password: &[u8],
        local: Option<LocalState>,
    ) -> Result<Self> {
        Config::check_version(&config_bytes)?;
        let hint = local.as_ref().and_then(|l| l.key_hint(&config_bytes));
        let mut keys = storage.list(Kind::Keys).await?;
        keys.retain(|info| Id::from_hex(info.key.name()).is_some());
        let is_hint =
            |info: &ObjectInfo| Some(info.key.name()) == hint.map(|h| h.to_hex()).as_deref();
        keys.sort_by(|a, b| is_hint(b).cmp(&is_hint(a)).then_with(|| a.key.cmp(&b.key)));
        let total = keys.len();
        let mut last_corrupt = None;
        // A key that unwrapped but did not open the config: the config is
        // damaged, or the key file was planted with another master key.
        let mut config_error = None;
        let mut tried = 0;
        for info in keys {
            let bytes = match get_bounded(&storage, &info.key, Some(info.size_bytes)).await {
                Ok(bytes) => bytes,
                Err(e @ Error::Corrupt { .. }) => {
                    last_corrupt = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let decoded = if Id::of_bytes(&bytes).to_hex() != info.key.name() {
                Err(Error::corrupt(&info.key, "content does not match its name"))
            } else {
                KeyFile::decode(&info.key.to_string(), &bytes)
            };
            let kf = match decoded {
                Ok(kf) => kf,
                Err(e) => {
                    tracing::warn!("skipping key file: {e}");
                    last_corrupt = Some(e);
                    continue;
                }
            };
            // Only a key file that would cost a KDF run counts.
            if tried == MAX_KEY_FILES_TRIED {
                return Err(Error::TooManyKeyFiles { tried, total });
            }
            tried += 1;
            let legacy = kf.is_legacy();
            let role = kf.role();
            let password = password.to_vec();
            let unwrapped = match blocking(move || kf.unwrap_key(&password)).await? {
                Ok(k) => k,
                Err(e) => {
                    last_corrupt = Some(e);
                    continue;
                }
            };
            let Some(key) = unwrapped else { continue };
            let config = match Config::decode(&config_bytes, &key) {
                Ok(config) => config,
                Err(e @ Error::Corrupt { .. }) => {
                    tracing::warn!(
                        "{} opens with this password but not the config: skipped (a key file of \
                         another repository, or planted)",
                        info.key
                    );
                    config_error = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let key = match &config.write_only {
                Some(wo) => key.with_write_only_public(&wo.public)?,
                None => key,
            };
            let key_id = Id::from_hex(info.key.name()).expect("names checked above");
            if legacy {
                tracing::warn!(
                    "{} is a version 1 key file: its KDF parameters, host, user and time are \
                     not authenticated; `lifeboat key passwd` rewrites it in the current form",
                    info.key
                );
            }
            if let Some(local) = &local {
                local.save_key_hint(&config_bytes, key_id);
            }
            let cold = config.cold.as_ref().map(|c| ColdTier {
                location: c.location.clone(),
                storage: OnceCell::new(),
            });
            let mut repo =
                Repository::handle(storage, key, config, config_bytes, key_id, cold, local);
            repo.role = role;
            return Ok(repo);
        }
        if let Some(e) = config_error {
            return Err(e);
        }
        // A wrong password, unless no key file could even be read.
        match last_corrupt {
            Some(e) if tried == 0 => Err(e),
            _ => Err(Error::WrongPassword),
        }
    }

    /// The hot storage: everything but the data packs of a repository with a
    /// cold tier.
    pub fn storage(&self) -> &DynStorage {
        &self.storage
    }

    /// Uses `storage` as the cold tier instead of opening the recorded
    /// location (tests, or a caller that opened it itself). Fails if the
    /// repository has no cold tier.
    pub fn with_cold_storage(mut self, storage: DynStorage) -> Result<Self> {
        let cold = self.cold.as_mut().ok_or_else(no_cold_tier)?;
        cold.storage = OnceCell::new_with(Some(storage));
        Ok(self)
    }

    /// Opens the cold tier at `location` instead of the one recorded at init
    /// (the same data reached another way, e.g. from another machine).
    pub fn with_cold_location(mut self, location: String) -> Result<Self> {
        Location::parse(&location)?;
        let cold = self.cold.as_mut().ok_or_else(no_cold_tier)?;
        cold.location = location;
        cold.storage = OnceCell::new();
        Ok(self)
    }

    /// The cold tier's location (as it will be or was opened), if any.
    pub fn cold_location(&self) -> Option<&str> {
        self.cold.as_ref().map(|c| c.location.as_str())
    }

    pub fn has_cold_tier(&self) -> bool {
        self.cold.is_some()
    }

    /// The tiers packs may live in: `[Hot]`, or `[Hot, Cold]`.
    pub fn tiers(&self) -> &'static [Tier] {
        if self.cold.is_some() {
            &[Tier::Hot, Tier::Cold]
        } else {
            &[Tier::Hot]
        }
    }

    /// The tier of a pack holding blobs of this type.
    pub fn tier_of(&self, blob_type: BlobType) -> Tier {
        if self.cold.is_some() && blob_type == BlobType::Data {
            Tier::Cold
        } else {
            Tier::Hot
        }
    }

    /// The storage of a tier; the cold one is opened on first use.
    pub async fn tier_storage(&self, tier: Tier) -> Result<&DynStorage> {
        let cold = match (tier, &self.cold) {
            (Tier::Hot, _) => return Ok(&self.storage),
            (Tier::Cold, None) => return Err(no_cold_tier()),
            (Tier::Cold, Some(cold)) => cold,
        };
        cold.storage
            .get_or_try_init(|| async {
                let opened = match Location::parse(&cold.location) {
                    Ok(location) => open_location(&location).await,
                    Err(e) => Err(e),
                };
                let storage = opened.map_err(|e| {
                    Error::Storage(lifeboat_storage::Error::new(
                        e.kind(),
                        format!(
                            "cannot open the cold tier at {}: {e}; if it moved, name it with \
                             --cold-location (or LIFEBOAT_COLD_LOCATION)",
                            cold.location
                        ),
                    ))
                })?;
                self.check_cold_marker(&storage, &cold.location).await?;
                Ok::<_, Error>(storage)
            })
            .await
    }

    /// Checks that `storage` is this repository's cold tier: its marker
    /// names this repository. A tier made before markers existed has none;
    /// it is accepted while it holds packs, or while the index names no
    /// data pack at all (nothing could be missing from it). An empty
    /// location without a marker where the index names data packs is an
    /// unmounted or moved tier: unreachable.
    /// Returns whether the marker is there.
    async fn check_cold_marker(&self, storage: &DynStorage, location: &str) -> Result<bool> {
        let unreachable = |why: String| {
            Error::Unreachable(format!(
                "cold tier unreachable (use --cold-location): {location} {why}; nothing was \
                 read from or written to it"
            ))
        };
        match storage.get(&ObjectKey::marker()).await {
            Ok(bytes) => match parse_marker(&bytes) {
                Some(id) if id == self.config.repository_id => Ok(true),
                Some(id) => Err(unreachable(format!(
                    "belongs to another repository ({})",
                    id.short()
                ))),
                None => Err(unreachable("has a damaged location marker".into())),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if !storage.list(Kind::Packs).await?.is_empty() {
                    return Ok(false);
                }
                let index = self.index().await?;
                if index.blob_count_of(BlobType::Data) > 0 {
                    Err(unreachable(
                        "holds no marker and no packs, but the index names data packs \
                         there (unmounted or moved?)"
                            .into(),
                    ))
                } else {
                    Ok(false)
                }
            }
            Err(e) if e.kind() == ErrorKind::Unreachable => Err(unreachable(e.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks that every location this handle wrote to is still this
    /// repository: the hot tier's config is unchanged and an opened cold
    /// tier still holds its marker. Called before a snapshot record is
    /// written, so a location that vanished mid-run (an unmount, a moved
    /// directory) is reported instead of a snapshot that is not there.
    pub async fn verify_locations(&self) -> Result<()> {
        match self.storage.get(&ObjectKey::config()).await {
            Ok(bytes) if bytes == self.config_bytes => {}
            Ok(_) => {
                return Err(Error::Unreachable(format!(
                    "the repository at {} changed under this run (its config is another \
                     repository's); no snapshot was saved",
                    self.storage.location()
                )));
            }
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Unreachable) => {
                // Gone, or the storage itself unreachable: say which.
                let why = match e.kind() {
                    ErrorKind::NotFound => "its config is gone".to_string(),
                    _ => format!("reading its config failed: {e}"),
                };
                return Err(Error::Unreachable(format!(
                    "the repository at {} is unreachable (unmounted or moved during this \
                     run?): {why}; no snapshot was saved",
                    self.storage.location()
                )));
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(cold) = &self.cold
            && let Some(storage) = cold.storage.get()
        {
            match storage.get(&ObjectKey::marker()).await {
                Ok(bytes) if parse_marker(&bytes) == Some(self.config.repository_id) => {}
                Ok(_) => {
                    return Err(Error::Unreachable(format!(
                        "cold tier unreachable (use --cold-location): {} holds another \
                         repository's marker; no snapshot was saved",
                        cold.location
                    )));
                }
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Unreachable) => {
                    return Err(Error::Unreachable(format!(
                        "cold tier unreachable (use --cold-location): {} lost its marker \
                         (unmounted or moved during this run?); no snapshot was saved",
                        cold.location
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Opens the cold tier (checking it, see [`Repository::tier_storage`])
    /// and writes its marker if it has none yet (a tier made before
    /// markers existed). Write sessions call this before writing.
    pub async fn ensure_cold_marker(&self) -> Result<()> {
        let Some(cold) = &self.cold else {
            return Ok(());
        };
        let storage = self.tier_storage(Tier::Cold).await?;
        // Checked again: a storage given with `with_cold_storage` was not.
        if !self.check_cold_marker(storage, &cold.location).await? {
            tracing::info!(
                "writing the location marker of the cold tier {}",
                cold.location
            );
            put_idempotent(
                storage,
                &ObjectKey::marker(),
                marker_bytes(&self.config.repository_id),
            )
            .await?;
        }
        Ok(())
    }

    /// Every pack object in every tier, with its tier (listing only: no
    /// pack content is read).
    pub async fn list_packs(&self) -> Result<Vec<(Tier, ObjectInfo)>> {
        let mut out = Vec::new();
        for &tier in self.tiers() {
            let storage = self.tier_storage(tier).await?;
            out.extend(
                storage
                    .list(Kind::Packs)
                    .await?
                    .into_iter()
                    .map(|info| (tier, info)),
            );
        }
        Ok(out)
    }

    pub fn key(&self) -> &MasterKey {
        &self.key
    }

    /// Whether this handle was opened with a write-only key: it can add
    /// snapshots but read nothing stored.
    pub fn is_write_only(&self) -> bool {
        self.key.is_write_only()
    }

    /// Fails with [`Error::WriteOnlyKey`] naming `what` when the handle
    /// was opened with a write-only key: the reading operations call it
    /// first, so a write-only key gets one clear error instead of an
    /// "authentication failed" per object.
    pub fn require_full_key(&self, what: &str) -> Result<()> {
        if self.is_write_only() {
            return Err(Error::WriteOnlyKey { what: what.into() });
        }
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The key file this handle was opened with.
    pub fn key_id(&self) -> Id {
        self.key_id
    }

    /// The role of the key file this handle was opened with.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Fails with [`Error::NotAllowed`] unless this handle's key may do
    /// what `needs` names; `operation` completes "it cannot …". What needs
    /// [`Permission::Full`] also needs a key that reads the repository, so
    /// a write-only key fails it with [`Error::WriteOnlyKey`].
    pub fn require(&self, needs: Permission, operation: &str) -> Result<()> {
        if !self.role.allows(needs) {
            return Err(Error::NotAllowed {
                key: self.key_id.short(),
                role: self.role,
                operation: operation.to_string(),
            });
        }
        if matches!(needs, Permission::Full) {
            self.require_full_key(operation)?;
        }
        Ok(())
    }

    /// The merged index, loaded from storage on first call.
    pub async fn index(&self) -> Result<Arc<Index>> {
        let mut cached = self.index.lock().await;
        if let Some(index) = &*cached {
            return Ok(index.clone());
        }
        let index = Arc::new(self.load_index().await?);
        if let Some(cache) = &self.disk_cache {
            // Tree packs no index names any more were pruned.
            cache.retain_packs(|pack| index.has_pack(pack));
        }
        *cached = Some(index.clone());
        Ok(index)
    }

    /// Uses (or, with `None`, stops using) a metadata cache under `root`
    /// ([`crate::diskcache`]). A handle has none unless given one: the
    /// library never reads the environment for it.
    pub fn with_disk_cache(mut self, root: Option<&std::path::Path>) -> Self {
        self.disk_cache = root.and_then(|r| DiskCache::open(r, &self.config.repository_id));
        self
    }

    /// The cache a command-line user expects: the user's cache directory
    /// ([`lifeboat_storage::cachedir::cache_root`]), on storage where each
    /// request is a round trip (a local repository is its own cache), unless
    /// the process turned caching off
    /// ([`crate::diskcache::disable_for_process`]).
    pub fn with_user_disk_cache(self) -> Self {
        let root = self
            .storage
            .capabilities()
            .round_trips
            .then(lifeboat_storage::cachedir::cache_root)
            .flatten();
        self.with_disk_cache(root.as_deref())
    }

    /// Until the returned guard is dropped, every read of this handle goes
    /// to the repository, never to the metadata cache: `check` verifies
    /// what the repository holds, not a local copy of it (a damaged object
    /// must not pass because its cached copy is good), and the tree packs
    /// the handle holds in memory are dropped first. What it reads is still
    /// written to the cache.
    pub fn bypass_cache(&self) -> CacheBypass<'_> {
        self.cache_bypass
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Tree packs this handle holds in memory may have come from the
        // cache: read them again too.
        self.tree_packs.clear();
        CacheBypass(self)
    }

    /// This machine's local state and the repository's `config` bytes that
    /// name it there, when the handle has local state.
    pub(crate) fn local_state(&self) -> Option<(&LocalState, &[u8])> {
        self.local.as_ref().map(|l| (l, &self.config_bytes[..]))
    }

    /// The metadata cache in use, if any.
    pub fn disk_cache(&self) -> Option<&DiskCache> {
        self.disk_cache.as_ref()
    }

    /// The stored bytes of an index object, snapshot record or tree pack:
    /// from the metadata cache when it holds a verified copy, else from
    /// the storage (size-bounded, [`get_bounded`]) and then cached.
    pub(crate) async fn get_cached(&self, key: &ObjectKey, listed: Option<u64>) -> Result<Bytes> {
        if let Some(cache) = &self.disk_cache
            && self.cache_bypass.load(std::sync::atomic::Ordering::SeqCst) == 0
        {
            let (c, k) = (cache.clone(), key.clone());
            if let Some(bytes) = blocking(move || c.get(&k, listed)).await? {
                return Ok(bytes);
            }
        }
        let bytes = get_bounded(&self.storage, key, listed).await?;
        self.cache_copy(key, &bytes).await;
        Ok(bytes)
    }

    /// Keeps a copy of an object just read or written in the metadata
    /// cache (a no-op without one).
    pub(crate) async fn cache_copy(&self, key: &ObjectKey, bytes: &Bytes) {
        if let Some(cache) = &self.disk_cache {
            let (c, k, b) = (cache.clone(), key.clone(), bytes.clone());
            let _ = blocking(move || c.put(&k, &b)).await;
        }
    }

    /// Forgets the cached index so the next [`Repository::index`] call reads
    /// what has been written since.
    pub async fn invalidate_index(&self) {
        *self.index.lock().await = None;
    }

    /// Reads every index object (several at once) and merges them, one
    /// object at a time as it arrives, in listing order: the load holds
    /// the index being built and the few objects in flight, never every
    /// decoded object at once. An object that vanishes between the listing
    /// and its read was superseded by a prune (which writes the new index
    /// objects before deleting the old ones), so the listing is read again.
    pub async fn load_index(&self) -> Result<Index> {
        Ok(self.load_index_visiting(|_, _| {}).await?.0)
    }

    /// [`Repository::load_index`], showing each index object to `visit` as
    /// it is merged, and returning the ids of the index objects merged. On
    /// a retry (an object superseded mid-read) objects are shown again, so
    /// what `visit` keeps must not mind seeing one twice.
    pub(crate) async fn load_index_visiting(
        &self,
        mut visit: impl FnMut(Id, &IndexFile),
    ) -> Result<(Index, Vec<Id>)> {
        let mut attempt = 0;
        loop {
            let list = self.storage.list(Kind::Index).await?;
            self.retain_cached(Kind::Index, &list);
            let mut index = index_builder_for(&list);
            let mut files = self.index_files(list);
            let mut failed = None;
            let mut ids = Vec::new();
            while let Some(file) = files.next().await {
                match file {
                    Ok((id, file)) => {
                        file.packs.iter().for_each(|p| index.add_pack(p));
                        visit(id, &file);
                        ids.push(id);
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => return Ok((index.build(), ids)),
                Some(e)
                    if attempt < 3
                        && e.storage_kind() == Some(lifeboat_storage::ErrorKind::NotFound) =>
                {
                    attempt += 1;
                }
                Some(e) => return Err(e),
            }
        }
    }

    /// The index objects of `list`, read and decoded several at once,
    /// delivered in listing order.
    fn index_files(
        &self,
        list: Vec<ObjectInfo>,
    ) -> impl futures::Stream<Item = Result<(Id, IndexFile)>> + '_ {
        let in_flight = index_reads_in_flight(&list, self.concurrency());
        futures::stream::iter(list)
            .map(move |info| async move {
                let id = Id::from_hex(info.key.name())
                    .ok_or_else(|| Error::corrupt(&info.key, "index name is not an id"))?;
                let bytes = self.get_cached(&info.key, Some(info.size_bytes)).await?;
                let key = self.key.clone();
                let name = info.key.to_string();
                let file = blocking(move || IndexFile::decode(&key, &name, &bytes)).await??;
                Ok::<_, Error>((id, file))
            })
            .buffered(in_flight)
    }

    /// Drops cached objects of `kind` that `listing` (the repository's,
    /// just read) no longer names.
    pub(crate) fn retain_cached(&self, kind: Kind, listing: &[ObjectInfo]) {
        if let Some(cache) = &self.disk_cache {
            let live = listing.iter().map(|i| i.key.name()).collect();
            cache.retain(kind, &live);
        }
    }

    pub fn concurrency(&self) -> usize {
        self.storage.capabilities().max_connections.max(1)
    }

    /// Where the blob of this type and id is (its first indexed location).
    pub async fn locate(&self, blob_type: BlobType, id: &Id) -> Result<BlobLocation> {
        self.index()
            .await?
            .get(blob_type, id)
            .ok_or_else(|| not_indexed(blob_type, id))
    }

    /// Reads, decrypts and verifies one data blob (a file chunk). A blob
    /// indexed in several packs is read from the next one when a read
    /// fails (a missing or damaged pack); the first error is returned when
    /// none works.
    pub async fn read_blob(&self, id: &Id) -> Result<Bytes> {
        self.require_full_key("reading file contents")?;
        let locations = self.index().await?.locations(BlobType::Data, id);
        self.first_readable(BlobType::Data, id, &locations, |loc| async move {
            self.read_blob_at(id, &loc).await
        })
        .await
    }

    /// Reads and decodes one tree. Only a blob indexed as a tree is read: a
    /// data blob with the same id (a file whose bytes are a directory
    /// listing) is another blob. Falls back on another indexed copy as
    /// [`Repository::read_blob`] does.
    pub async fn read_tree(&self, id: &Id) -> Result<Tree> {
        self.require_full_key("reading a snapshot's trees")?;
        let locations = self.index().await?.locations(BlobType::Tree, id);
        self.first_readable(BlobType::Tree, id, &locations, |loc| async move {
            let bytes = self.read_tree_blob_at(id, &loc).await?;
            Tree::decode(id, &bytes)
        })
        .await
    }

    /// `read` of the first location that works, in index order.
    async fn first_readable<T, F, Fut>(
        &self,
        blob_type: BlobType,
        id: &Id,
        locations: &[BlobLocation],
        read: F,
    ) -> Result<T>
    where
        F: Fn(BlobLocation) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut first_error = None;
        for loc in locations {
            match read(*loc).await {
                Ok(v) => return Ok(v),
                // Only damage moves on to another copy: an unreachable
                // storage would fail the same for every copy.
                Err(e) if crate::packread::another_copy_may_help(&e) => {
                    if locations.len() > 1 {
                        tracing::warn!("{e}; trying another copy of blob {id}");
                    }
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(first_error.unwrap_or_else(|| not_indexed(blob_type, id)))
    }

    /// This process's whole tree packs (see [`crate::packread`]).
    pub(crate) fn tree_packs(&self) -> &TreePacks {
        &self.tree_packs
    }

    /// Every readable snapshot, oldest first. A damaged snapshot record is
    /// left out with a warning (logged), so one bad record does not hide
    /// every other snapshot; [`Repository::snapshot_listing`] returns it,
    /// and `check` reports it.
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let listing = self.snapshot_listing().await?;
        for d in &listing.damaged {
            tracing::warn!(
                "skipping damaged snapshot record {}: {} (run `lifeboat check`)",
                d.id,
                d.reason
            );
        }
        Ok(listing.snapshots)
    }

    /// Every snapshot record: the readable ones, oldest first, and the
    /// damaged ones (name not an id, bytes not matching the name, not
    /// decodable). A record deleted between the listing and its read (a
    /// concurrent `forget`) is left out. Other storage errors fail the call.
    ///
    /// Also keeps this machine's high-water mark of snapshot ids (when the
    /// handle has local state): ids seen by an earlier listing that are no
    /// longer listed are warned about once, as a rollback or deletion of
    /// the storage would remove them (or a `forget` from another machine).
    pub async fn snapshot_listing(&self) -> Result<SnapshotListing> {
        self.require_full_key("listing snapshots")?;
        let list = self.storage.list(Kind::Snapshots).await?;
        self.retain_cached(Kind::Snapshots, &list);
        *self.known_records.lock().unwrap() = list
            .iter()
            .filter_map(|i| Some((Id::from_hex(i.key.name())?, i.size_bytes)))
            .collect();
        let read: Vec<(ObjectKey, Result<Snapshot>)> = futures::stream::iter(list)
            .map(|info| async move {
                let r = self
                    .read_snapshot_key(&info.key, Some(info.size_bytes))
                    .await;
                (info.key, r)
            })
            .buffer_unordered(self.concurrency())
            .collect()
            .await;
        let mut listing = SnapshotListing::default();
        for (key, r) in read {
            match r {
                Ok(s) => listing.snapshots.push(s),
                Err(Error::Corrupt { reason, .. }) => listing.damaged.push(DamagedSnapshot {
                    id: key.name().to_string(),
                    reason,
                }),
                // Listed, then gone before it was read: a `forget` running
                // at the same time deleted it. It is no longer a snapshot.
                Err(e) if e.storage_kind() == Some(lifeboat_storage::ErrorKind::NotFound) => {
                    tracing::debug!("snapshot record vanished while listing: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        listing
            .snapshots
            .sort_by(|a, b| a.record.time.cmp(&b.record.time).then(a.id.cmp(&b.id)));
        listing.damaged.sort_by(|a, b| a.id.cmp(&b.id));
        self.note_snapshots_seen(&listing);
        Ok(listing)
    }

    /// Compares a listing with the local high-water mark, warns about
    /// snapshots that vanished, and records the listing as the new mark.
    fn note_snapshots_seen(&self, listing: &SnapshotListing) {
        let Some(local) = &self.local else { return };
        let now: BTreeSet<Id> = listing
            .snapshots
            .iter()
            .map(|s| s.id)
            .chain(listing.damaged.iter().filter_map(|d| Id::from_hex(&d.id)))
            .collect();
        let known = local.known_snapshots(&self.config_bytes);
        let gone: Vec<String> = known.difference(&now).map(|id| id.short()).collect();
        if !gone.is_empty() {
            tracing::warn!(
                "{} snapshot(s) this machine saw in {} are gone: {}; if no `forget` removed \
                 them, the storage was rolled back or records were deleted (docs/security.md)",
                gone.len(),
                self.storage.location(),
                gone.join(" ")
            );
        }
        local.save_known_snapshots(&self.config_bytes, &now);
    }

    /// Adds a snapshot this process wrote to the high-water mark, and drops
    /// the ones it forgot.
    pub(crate) fn note_snapshots_changed(&self, added: &[Id], removed: &[Id]) {
        {
            let mut known = self.known_records.lock().unwrap();
            for id in removed {
                known.remove(id);
            }
        }
        let Some(local) = &self.local else { return };
        let mut known = local.known_snapshots(&self.config_bytes);
        known.extend(added.iter().copied());
        for id in removed {
            known.remove(id);
        }
        local.save_known_snapshots(&self.config_bytes, &known);
    }

    /// Whether `latest` may skip damaged snapshot records
    /// ([`Repository::with_skip_damaged`]).
    pub fn skip_damaged(&self) -> bool {
        self.skip_damaged
    }

    /// Lets `latest` mean the newest readable snapshot even when damaged
    /// snapshot records exist (which might be newer). Without it, `latest`
    /// fails naming them.
    pub fn with_skip_damaged(mut self, skip: bool) -> Self {
        self.skip_damaged = skip;
        self
    }

    async fn read_snapshot_key(&self, key: &ObjectKey, listed: Option<u64>) -> Result<Snapshot> {
        let bytes = self.get_cached(key, listed).await?;
        let id =
            Id::from_hex(key.name()).ok_or_else(|| Error::corrupt(key, "name is not an id"))?;
        if Id::of_bytes(&bytes) != id {
            return Err(Error::corrupt(key, "content does not match its name"));
        }
        let record = SnapshotRecord::decode(&self.key, &key.to_string(), &bytes)?;
        Ok(Snapshot { id, record })
    }

    /// Resolves `latest`, a full id or a unique id prefix among all snapshots.
    pub async fn find_snapshot(&self, query: &str) -> Result<Snapshot> {
        self.find_snapshot_matching(query, &SnapshotFilter::default())
            .await
    }

    /// [`Repository::find_snapshot`] where `latest` is the newest snapshot
    /// `filter` allows ([`SnapshotFilter`]). A damaged record is named, not
    /// passed over: an id or prefix that matches one is an error saying it
    /// is damaged, and `latest` fails while damaged records exist (one
    /// might be newer) unless [`Repository::with_skip_damaged`].
    pub async fn find_snapshot_matching(
        &self,
        query: &str,
        filter: &SnapshotFilter,
    ) -> Result<Snapshot> {
        self.require_full_key("reading a snapshot")?;
        // A full id is read directly, so a damaged record is reported as
        // damaged rather than as missing.
        if let Some(id) = Id::from_hex(query) {
            let key = ObjectKey::new(Kind::Snapshots, id.to_hex());
            let known = self.known_records.lock().unwrap().get(&id).copied();
            let size = match known {
                Some(size) => Some(size),
                None => self.storage.stat(&key).await?,
            };
            if let Some(size) = size {
                return self.read_snapshot_key(&key, Some(size)).await;
            }
        }
        let listing = self.snapshot_listing().await?;
        listing.resolve(query, filter, self.skip_damaged).cloned()
    }

    /// Writes a snapshot record; returns its id. Checks first that the
    /// repository's locations are still there ([`Repository::verify_locations`]).
    pub async fn write_snapshot(&self, record: &SnapshotRecord) -> Result<Id> {
        self.verify_locations().await?;
        self.put_snapshot_record(record).await
    }

    /// Writes a snapshot record without [`Repository::verify_locations`],
    /// for a caller that has just run it (a write session checks the
    /// locations, then its lock, then writes).
    pub(crate) async fn put_snapshot_record(&self, record: &SnapshotRecord) -> Result<Id> {
        self.require(Permission::Append, "write snapshots")?;
        let mut record = record.clone();
        if let Some(creator) = &mut record.creator {
            creator.key = Some(self.key_id);
        }
        let bytes = record.encode(&self.key);
        let id = Id::of_bytes(&bytes);
        let key = ObjectKey::new(Kind::Snapshots, id.to_hex());
        let size = bytes.len() as u64;
        put_idempotent(&self.storage, &key, bytes.clone()).await?;
        self.cache_copy(&key, &bytes.into()).await;
        self.known_records.lock().unwrap().insert(id, size);
        self.note_snapshots_changed(&[id], &[]);
        Ok(id)
    }

    pub async fn write_index(&self, file: &IndexFile) -> Result<Id> {
        let bytes = file.encode(&self.key);
        let id = Id::of_bytes(&bytes);
        let key = ObjectKey::new(Kind::Index, id.to_hex());
        put_idempotent(&self.storage, &key, bytes.clone()).await?;
        self.cache_copy(&key, &bytes.into()).await;
        // The next reader of the index must see this object.
        self.invalidate_index().await;
        Ok(id)
    }
}

/// A snapshot record that could not be read: its name and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedSnapshot {
    /// The record's object name (normally the snapshot id).
    pub id: String,
    pub reason: String,
}

/// Every snapshot record of a repository ([`Repository::snapshot_listing`]).
#[derive(Debug, Clone, Default)]
pub struct SnapshotListing {
    /// The readable snapshots, oldest first.
    pub snapshots: Vec<Snapshot>,
    /// The records that could not be read, by name.
    pub damaged: Vec<DamagedSnapshot>,
}

impl SnapshotListing {
    /// Picks a snapshot by `latest` (the newest `filter` allows), full id
    /// or unique prefix, never passing over a damaged record silently: an
    /// id or prefix matching only a damaged record is that record's damage
    /// (exit 14, not "no snapshot matches"), one matching a damaged and a
    /// readable record is ambiguous, and `latest` fails while any damaged
    /// record exists unless `skip_damaged`. A damaged record's time is
    /// unknown (it is inside the damaged bytes, and not every backend lists
    /// modification times), so any one might be the newest snapshot.
    pub fn resolve(
        &self,
        query: &str,
        filter: &SnapshotFilter,
        skip_damaged: bool,
    ) -> Result<&Snapshot> {
        if query == "latest" {
            if let Some(d) = self.damaged.first().filter(|_| !skip_damaged) {
                let newest = resolve_snapshot_matching(&self.snapshots, query, filter)
                    .map(|s| format!("the newest readable one, {}", s.id.short()))
                    .unwrap_or_else(|_| "any readable one".into());
                return Err(Error::Damaged(format!(
                    "snapshot record snapshots/{} is damaged ({}){}; it might be newer than {newest}, \
                     so `latest` is not resolved: run `lifeboat check`, remove the record with \
                     `lifeboat forget {}`, or pass --skip-damaged to use the newest readable \
                     snapshot",
                    d.id,
                    d.reason,
                    if self.damaged.len() > 1 {
                        format!(" (and {} more)", self.damaged.len() - 1)
                    } else {
                        String::new()
                    },
                    d.id
                )));
            }
            return resolve_snapshot_matching(&self.snapshots, query, filter);
        }
        let q = query.to_ascii_lowercase();
        let damaged: Vec<&DamagedSnapshot> = self
            .damaged
            .iter()
            .filter(|d| !q.is_empty() && d.id.starts_with(&q))
            .collect();
        match resolve_snapshot(&self.snapshots, query) {
            Err(Error::SnapshotNotFound { .. }) if damaged.len() == 1 => {
                Err(damaged_record(damaged[0]))
            }
            Err(Error::SnapshotNotFound { .. }) if damaged.len() > 1 => {
                Err(Error::AmbiguousSnapshot {
                    query: query.into(),
                    count: damaged.len(),
                })
            }
            Ok(_) if !damaged.is_empty() => Err(Error::AmbiguousSnapshot {
                query: query.into(),
                count: damaged.len() + 1,
            }),
            Err(Error::AmbiguousSnapshot { count, .. }) => Err(Error::AmbiguousSnapshot {
                query: query.into(),
                count: count + damaged.len(),
            }),
            r => r,
        }
    }

    /// The record names (readable and damaged) an id or unique prefix
    /// names, for commands that act on records whatever their state
    /// (`forget ID`).
    pub fn resolve_record(&self, query: &str) -> Result<String> {
        let q = query.to_ascii_lowercase();
        let names: Vec<String> = self
            .snapshots
            .iter()
            .map(|s| s.id.to_hex())
            .chain(self.damaged.iter().map(|d| d.id.clone()))
            .filter(|n| !q.is_empty() && n.starts_with(&q))
            .collect();
        match names.len() {
            1 => Ok(names.into_iter().next().expect("one")),
            0 => Err(Error::SnapshotNotFound {
                query: query.into(),
            }),
            n => Err(Error::AmbiguousSnapshot {
                query: query.into(),
                count: n,
            }),
        }
    }
}

fn damaged_record(d: &DamagedSnapshot) -> Error {
    Error::corrupt(
        format!("snapshot record snapshots/{}", d.id),
        format!(
            "{}; run `lifeboat check`, or remove it with `lifeboat forget {}`",
            d.reason, d.id
        ),
    )
}

/// Picks a snapshot by `latest`, full id or unique prefix.
pub fn resolve_snapshot<'a>(all: &'a [Snapshot], query: &str) -> Result<&'a Snapshot> {
    if query == "latest" {
        return all.last().ok_or_else(|| Error::SnapshotNotFound {
            query: query.into(),
        });
    }
    let q = query.to_ascii_lowercase();
    let matches: Vec<&Snapshot> = all
        .iter()
        .filter(|s| !q.is_empty() && s.id.to_hex().starts_with(&q))
        .collect();
    match matches.len() {
        1 => Ok(matches[0]),
        0 => Err(Error::SnapshotNotFound {
            query: query.into(),
        }),
        n => Err(Error::AmbiguousSnapshot {
            query: query.into(),
            count: n,
        }),
    }
}

/// Which snapshots `latest` may mean: those of one host, with every one of
/// some tags, and with every one of some backed-up paths (restic's
/// `--host`, `--tag` and `--path`). An id or a prefix names its snapshot
/// whatever the filter says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFilter {
    pub host: Option<String>,
    pub tags: Vec<String>,
    pub paths: Vec<String>,
}

impl SnapshotFilter {
    pub fn is_empty(&self) -> bool {
        self.host.is_none() && self.tags.is_empty() && self.paths.is_empty()
    }

    /// Whether `s` is one of the snapshots the filter allows. Paths compare
    /// without trailing `/`, as recorded paths are written.
    pub fn matches(&self, s: &Snapshot) -> bool {
        let trim = |p: &str| p.trim_end_matches('/').to_string();
        self.host.as_ref().is_none_or(|h| &s.record.host == h)
            && self.tags.iter().all(|t| s.record.tags.contains(t))
            && self
                .paths
                .iter()
                .all(|p| s.record.paths.iter().any(|q| trim(q) == trim(p)))
    }

    /// `query` with the filter, for messages: `latest (host web1, tag db)`.
    fn describe(&self, query: &str) -> String {
        let mut parts = Vec::new();
        if let Some(h) = &self.host {
            parts.push(format!("host {h}"));
        }
        parts.extend(self.tags.iter().map(|t| format!("tag {t}")));
        parts.extend(self.paths.iter().map(|p| format!("path {p}")));
        if parts.is_empty() {
            query.to_string()
        } else {
            format!("{query} ({})", parts.join(", "))
        }
    }
}

/// [`resolve_snapshot`] where `latest` is the newest snapshot `filter`
/// allows.
pub fn resolve_snapshot_matching<'a>(
    all: &'a [Snapshot],
    query: &str,
    filter: &SnapshotFilter,
) -> Result<&'a Snapshot> {
    if query != "latest" {
        return resolve_snapshot(all, query);
    }
    all.iter()
        .rev()
        .find(|s| filter.matches(s))
        .ok_or_else(|| Error::SnapshotNotFound {
            query: filter.describe(query),
        })
}

/// The error for a blob the index does not hold under this type.
pub(crate) fn not_indexed(blob_type: BlobType, id: &Id) -> Error {
    match blob_type {
        BlobType::Data => Error::BlobNotIndexed { id: id.to_hex() },
        BlobType::Tree => Error::TreeNotIndexed { id: id.to_hex() },
    }
}

/// The content of a location marker (docs/format.md, "Location markers").
fn marker_bytes(repository_id: &Id) -> Vec<u8> {
    format!(
        "lifeboat location marker v1\nrepository {}\ntier cold\n",
        repository_id.to_hex()
    )
    .into_bytes()
}

/// The repository id a marker names, or `None` if it is not a marker.
fn parse_marker(bytes: &[u8]) -> Option<Id> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    if lines.next()? != "lifeboat location marker v1" {
        return None;
    }
    lines
        .find_map(|l| l.strip_prefix("repository "))
        .and_then(Id::from_hex)
}

fn no_cold_tier() -> Error {
    Error::BadInput("this repository has no cold tier".into())
}

/// Refuses a cold tier that is the repository's own storage, or that already
/// holds a repository or packs: a tier's packs belong to one repository,
/// and prune deletes what its index does not name.
async fn check_cold_storage(hot: &DynStorage, cold: &DynStorage) -> Result<()> {
    if Arc::ptr_eq(hot, cold) {
        return Err(Error::BadInput(format!(
            "the cold tier must be another location than the repository itself ({})",
            cold.location()
        )));
    }
    if cold.stat(&ObjectKey::config()).await?.is_some() {
        return Err(Error::BadInput(format!(
            "the cold tier {} holds a lifeboat repository; give an empty location",
            cold.location()
        )));
    }
    if !cold.list(Kind::Packs).await?.is_empty() {
        return Err(Error::BadInput(format!(
            "the cold tier {} already holds packs; give an empty location (each repository needs its own)",
            cold.location()
        )));
    }
    Ok(())
}

/// Puts a content-addressed object; an existing object with the same name is
/// success (same name, same bytes).
pub(crate) async fn put_idempotent(
    storage: &DynStorage,
    key: &ObjectKey,
    bytes: Vec<u8>,
) -> Result<()> {
    match storage.put(key, bytes.into()).await {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        r => Ok(r?),
    }
}

pub(crate) async fn write_key_file(storage: &DynStorage, kf: &KeyFile) -> Result<Id> {
    let bytes = kf.encode();
    let id = Id::of_bytes(&bytes);
    put_idempotent(storage, &ObjectKey::new(Kind::Keys, id.to_hex()), bytes).await?;
    Ok(id)
}

/// Runs CPU-bound work (KDF, decryption, decompression) on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(e.to_string()))
}

/// Encoded index bytes [`Repository::load_index`] (and `check`) reads ahead at most: a
/// decoded index object takes about twice its encoded size, so this bounds
/// what loading holds beside the index being built (about 200 MiB) however
/// large the objects are (prune writes objects of up to a million entries,
/// about 45 MiB each).
const INDEX_READ_AHEAD_BYTES: u64 = 64 * 1024 * 1024;

/// A builder with room for every entry the index objects of `list` can
/// hold: an entry takes at least 36 bytes of an object (a type byte, a
/// 32-byte id and three varints). Grown by doubling instead, the slot array
/// would peak at up to twice the index (`check` did: 4.0 GiB at 50M blobs);
/// the excess is trimmed once built.
pub(crate) fn index_builder_for(list: &[ObjectInfo]) -> crate::IndexBuilder {
    let room = list.iter().map(|i| i.size_bytes).sum::<u64>() / 36;
    crate::IndexBuilder::with_capacity(usize::try_from(room).unwrap_or(usize::MAX))
}

/// How many index objects of `list` to read at once: the storage's
/// connection count, fewer when the largest object would take the
/// read-ahead over [`INDEX_READ_AHEAD_BYTES`] (never fewer than one).
pub(crate) fn index_reads_in_flight(list: &[ObjectInfo], connections: usize) -> usize {
    let largest = list.iter().map(|i| i.size_bytes).max().unwrap_or(0).max(1);
    let fit = (INDEX_READ_AHEAD_BYTES / largest).max(1);
    connections.clamp(1, usize::try_from(fit).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_read_ahead_is_bounded_by_bytes_not_only_by_connections() {
        let objects = |sizes: &[u64]| -> Vec<ObjectInfo> {
            sizes
                .iter()
                .enumerate()
                .map(|(i, &size_bytes)| ObjectInfo {
                    key: ObjectKey::new(Kind::Index, format!("{i:064x}")),
                    size_bytes,
                })
                .collect()
        };
        // Small objects (what backups write): every connection.
        assert_eq!(index_reads_in_flight(&objects(&[40_000, 90_000]), 16), 16);
        // Objects of a prune's size: as many as fit the read-ahead.
        let big = 45 * 1024 * 1024;
        assert_eq!(index_reads_in_flight(&objects(&[1_000, big]), 16), 1);
        assert_eq!(index_reads_in_flight(&objects(&[16 * 1024 * 1024]), 16), 4);
        // Never none, whatever the sizes or the connection count.
        assert_eq!(index_reads_in_flight(&objects(&[u64::MAX]), 16), 1);
        assert_eq!(index_reads_in_flight(&objects(&[]), 0), 1);
    }
}

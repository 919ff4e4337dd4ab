//! S3 Object Lock: object versions, retention, and reading a bucket as it
//! was at a point in time.
//!
//! This module owns [`VersionedStorage`] (what a backend with versions and
//! retention offers beyond [`Storage`]), its S3 implementation's signed
//! requests that OpenDAL does not make ([`S3LockApi`]: Get/Put
//! `ObjectLockConfiguration`, Get/Put `ObjectRetention`, and CopyObject of
//! an old version with the integrity header a locked bucket wants), and
//! [`AsOfStorage`], a read-only [`Storage`] that serves, for every key, the
//! newest version written at or before a given time. Versioned reads,
//! listings and deletes by version id go through OpenDAL; only the calls
//! above are signed here, with the SigV4 signer OpenDAL itself uses
//! (`reqsign-aws-v4`).
//!
//! What Object Lock guarantees (AWS S3 user guide, "Locking objects with
//! Object Lock"): a locked *version* cannot be deleted or overwritten until
//! its retain-until date. A plain delete still succeeds by adding a delete
//! marker, and a plain put still succeeds by adding a newer version; both
//! hide the locked version from plain reads without destroying it. Reading
//! the repository back after such an attack therefore means reading
//! versions, which is what [`AsOfStorage`] does.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{Capabilities, Error, ErrorKind, Kind, ObjectInfo, ObjectKey, Result, Storage};

/// How strictly a locked version is held (S3's two retention modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` can still shorten or lift
    /// the retention and delete the version.
    Governance,
    /// Nobody, not even the account's root user, can delete the version or
    /// shorten its retention before the date.
    Compliance,
}

impl LockMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "governance" => Some(Self::Governance),
            "compliance" => Some(Self::Compliance),
            _ => None,
        }
    }

    /// The spelling S3 uses on the wire.
    pub fn as_s3(self) -> &'static str {
        match self {
            Self::Governance => "GOVERNANCE",
            Self::Compliance => "COMPLIANCE",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Governance => "governance",
            Self::Compliance => "compliance",
        }
    }
}

/// A bucket's default retention: what every new version gets without
/// per-request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultRetention {
    pub mode: LockMode,
    pub days: u32,
}

/// A bucket's Object Lock configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketLock {
    /// The bucket was created with Object Lock (and so is versioned).
    pub enabled: bool,
    pub default_retention: Option<DefaultRetention>,
}

/// One version of an object (or a delete marker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub key: ObjectKey,
    pub version_id: String,
    pub last_modified: jiff::Timestamp,
    pub size_bytes: u64,
    /// A delete marker: the object looked deleted from this time on.
    pub delete_marker: bool,
    /// The version a plain read returns (or the marker that hides them all).
    pub latest: bool,
    /// S3's entity tag of the version's content (the MD5 of its bytes for
    /// a plain upload; a server-side copy keeps it), when listed.
    pub etag: Option<String>,
}

/// The retention of one object version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub mode: LockMode,
    pub until: jiff::Timestamp,
}

/// What a backend with object versions and Object Lock offers beyond
/// [`Storage`]. Only S3 buckets implement it ([`Storage::versioned`]).
#[async_trait]
pub trait VersionedStorage: Send + Sync {
    /// The bucket's Object Lock configuration; `enabled: false` when the
    /// bucket has none.
    async fn bucket_lock(&self) -> Result<BucketLock>;
    async fn set_default_retention(&self, retention: DefaultRetention) -> Result<()>;
    /// Every version and delete marker of every object of `kind`.
    async fn list_versions(&self, kind: Kind) -> Result<Vec<ObjectVersion>>;
    async fn get_version(&self, key: &ObjectKey, version_id: &str) -> Result<Bytes>;
    async fn get_version_range(
        &self,
        key: &ObjectKey,
        version_id: &str,
        offset: u64,
        len: u64,
    ) -> Result<Bytes>;
    /// The version's retention, `None` when it has none.
    async fn retention(&self, key: &ObjectKey, version_id: &str) -> Result<Option<Retention>>;
    /// Sets the version's retention; S3 refuses to shorten a compliance
    /// one (and a governance one without bypass permission).
    async fn set_retention(
        &self,
        key: &ObjectKey,
        version_id: &str,
        retention: Retention,
    ) -> Result<()>;
    /// Removes one version for good (a plain delete only adds a marker).
    /// Refused with [`ErrorKind::PermissionDenied`] while it is locked.
    async fn delete_version(&self, key: &ObjectKey, version_id: &str) -> Result<()>;
    /// Makes an older version of `key` the current one again: a
    /// server-side copy of that version onto the same key (S3 CopyObject
    /// with `versionId` in the copy source). The copy is a new version,
    /// locked by the bucket's default retention like any other write; the
    /// versions in between stay as they are.
    async fn copy_version_to_current(&self, key: &ObjectKey, version_id: &str) -> Result<()>;
}

/// Signed S3 requests for the Object Lock calls OpenDAL does not make (or
/// not with the headers a locked bucket needs).
pub(crate) struct S3LockApi {
    client: reqwest::Client,
    signer: reqsign_core::Signer<reqsign_aws_v4::Credential>,
    /// `scheme://host[/bucket]`: the bucket's URL without a trailing `/`.
    bucket_url: String,
    /// Key prefix of the repository (no leading or trailing `/`).
    root: String,
    bucket: String,
    location: String,
}

/// Characters S3 wants percent-encoded in a path segment or query value:
/// everything but RFC 3986's unreserved set.
const S3_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

impl S3LockApi {
    pub(crate) fn new(options: &crate::S3Options, region: &str, location: String) -> Result<Self> {
        let bucket_url = match &options.endpoint {
            Some(endpoint) => format!("{}/{}", endpoint.trim_end_matches('/'), options.bucket),
            None => format!("https://{}.s3.{region}.amazonaws.com", options.bucket),
        };
        let ctx = reqsign_core::Context::new()
            .with_file_read(reqsign_file_read_tokio::TokioFileRead)
            .with_env(reqsign_core::OsEnv);
        let request_signer = reqsign_aws_v4::RequestSigner::new("s3", region);
        let signer = match (&options.access_key_id, &options.secret_access_key) {
            (Some(id), Some(secret)) => {
                let mut provider = reqsign_aws_v4::StaticCredentialProvider::new(id, secret);
                if let Some(token) = &options.session_token {
                    provider = provider.with_session_token(token);
                }
                reqsign_core::Signer::new(ctx, provider, request_signer)
            }
            _ => reqsign_core::Signer::new(
                ctx,
                reqsign_aws_v4::DefaultCredentialProvider::new(),
                request_signer,
            ),
        };
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| Error::new(ErrorKind::Config, format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            signer,
            bucket_url,
            root: options.root.trim_matches('/').to_string(),
            bucket: options.bucket.clone(),
            location,
        })
    }

    fn object_url(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.bucket_url, self.encoded_path(key))
    }

    /// `/root/key`, each segment percent-encoded.
    fn encoded_path(&self, key: &ObjectKey) -> String {
        let path = if self.root.is_empty() {
            key.path()
        } else {
            format!("{}/{}", self.root, key.path())
        };
        let mut out = String::new();
        for segment in path.split('/') {
            out.push('/');
            out.extend(percent_encoding::utf8_percent_encode(segment, S3_ENCODE));
        }
        out
    }

    /// Sends one signed request; returns the body of a 2xx answer, `None`
    /// for a 404 whose S3 code is in `absent_codes`, and an error naming
    /// the server's code and message otherwise.
    async fn call(
        &self,
        method: http::Method,
        url: String,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
        absent_codes: &[&str],
        what: &str,
    ) -> Result<Option<(http::HeaderMap, Bytes)>> {
        let mut builder = http::Request::builder().method(method).uri(&url);
        builder = builder.header("x-amz-content-sha256", "UNSIGNED-PAYLOAD");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(body) = &body {
            // S3 requires an integrity header on lock configuration and
            // retention bodies, and on any write into a bucket with a
            // default retention (an empty CopyObject body's included).
            use base64::Engine as _;
            use md5::Digest as _;
            let digest = md5::Md5::digest(body);
            builder = builder.header(
                "content-md5",
                base64::engine::general_purpose::STANDARD.encode(digest),
            );
            if !body.is_empty() {
                builder = builder.header("content-type", "application/xml");
            }
        }
        let (mut parts, ()) = builder
            .body(())
            .map_err(|e| Error::new(ErrorKind::Config, format!("{what}: bad request: {e}")))?
            .into_parts();
        self.signer.sign(&mut parts, None).await.map_err(|e| {
            Error::new(
                ErrorKind::PermissionDenied,
                format!("{what} on {}: signing failed: {e}", self.location),
            )
        })?;
        let mut request = self.client.request(parts.method, url);
        for (name, value) in &parts.headers {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(|e| {
            Error::new(
                ErrorKind::Transient,
                format!("{what} on {}: {e}", self.location),
            )
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| {
            Error::new(
                ErrorKind::Transient,
                format!("{what} on {}: {e}", self.location),
            )
        })?;
        if status.is_success() {
            return Ok(Some((headers, bytes)));
        }
        let error: S3ErrorBody = quick_xml::de::from_reader(bytes.as_ref()).unwrap_or_default();
        if absent_codes.contains(&error.code.as_str()) {
            return Ok(None);
        }
        let kind = match status.as_u16() {
            403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            s if s >= 500 || s == 429 => ErrorKind::Transient,
            _ => ErrorKind::Other,
        };
        Err(Error::new(
            kind,
            format!(
                "{what} on {}: HTTP {status}: {} ({})",
                self.location, error.message, error.code
            ),
        ))
    }

    pub(crate) async fn bucket_lock(&self) -> Result<BucketLock> {
        let body = self
            .call(
                http::Method::GET,
                format!("{}?object-lock", self.bucket_url),
                None,
                &[],
                &["ObjectLockConfigurationNotFoundError"],
                "reading the bucket's object lock configuration",
            )
            .await?;
        let Some((_, body)) = body else {
            return Ok(BucketLock {
                enabled: false,
                default_retention: None,
            });
        };
        let config: LockConfigXml = quick_xml::de::from_reader(body.as_ref()).map_err(|e| {
            Error::new(
                ErrorKind::Other,
                format!("unreadable object lock configuration: {e}"),
            )
        })?;
        let default_retention = config.rule.and_then(|r| r.default_retention).and_then(|d| {
            let mode = LockMode::parse(&d.mode)?;
            // Years are 365 days for this purpose; lifeboat itself
            // only writes days.
            let days = d.days.or(d.years.map(|y| y.saturating_mul(365)))?;
            Some(DefaultRetention { mode, days })
        });
        Ok(BucketLock {
            enabled: config.enabled.as_deref() == Some("Enabled"),
            default_retention,
        })
    }

    pub(crate) async fn set_default_retention(&self, retention: DefaultRetention) -> Result<()> {
        let body = format!(
            "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention>\
             <Mode>{}</Mode><Days>{}</Days></DefaultRetention></Rule></ObjectLockConfiguration>",
            retention.mode.as_s3(),
            retention.days
        );
        self.call(
            http::Method::PUT,
            format!("{}?object-lock", self.bucket_url),
            Some(body.into_bytes()),
            &[],
            &[],
            "setting the bucket's default retention",
        )
        .await
        .map(drop)
    }

    fn version_query(&self, key: &ObjectKey, what: &str, version_id: &str) -> String {
        format!(
            "{}?{what}=&versionId={}",
            self.object_url(key),
            percent_encoding::utf8_percent_encode(version_id, S3_ENCODE)
        )
    }

    /// Read from a `HeadObject` of the version, whose answer carries the
    /// `x-amz-object-lock-mode` and `-retain-until-date` headers (AWS S3
    /// API reference, HeadObject): the same permission as
    /// `GetObjectRetention`, and servers that lack that call (moto) answer
    /// it.
    pub(crate) async fn retention(
        &self,
        key: &ObjectKey,
        version_id: &str,
    ) -> Result<Option<Retention>> {
        let url = format!(
            "{}?versionId={}",
            self.object_url(key),
            percent_encoding::utf8_percent_encode(version_id, S3_ENCODE)
        );
        let Some((headers, _)) = self
            .call(
                http::Method::HEAD,
                url,
                None,
                &[],
                &[],
                &format!("reading the retention of {key}"),
            )
            .await?
        else {
            return Ok(None);
        };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(mode), Some(until)) = (
            header("x-amz-object-lock-mode").and_then(LockMode::parse),
            header("x-amz-object-lock-retain-until-date"),
        ) else {
            return Ok(None);
        };
        let until = until.parse().map_err(|e| {
            Error::new(
                ErrorKind::Other,
                format!("unreadable retain-until date {until:?} of {key}: {e}"),
            )
        })?;
        Ok(Some(Retention { mode, until }))
    }

    pub(crate) async fn set_retention(
        &self,
        key: &ObjectKey,
        version_id: &str,
        retention: Retention,
    ) -> Result<()> {
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode>\
             <RetainUntilDate>{}</RetainUntilDate></Retention>",
            retention.mode.as_s3(),
            retention.until.strftime("%Y-%m-%dT%H:%M:%SZ"),
        );
        self.call(
            http::Method::PUT,
            self.version_query(key, "retention", version_id),
            Some(body.into_bytes()),
            &[],
            &[],
            &format!("extending the retention of {key}"),
        )
        .await
        .map(drop)
    }

    /// CopyObject of a version of `key` onto `key` (AWS S3 API reference,
    /// CopyObject: `x-amz-copy-source` with `?versionId=`). One request
    /// copies up to 5 GiB, far more than a pack. A copy that fails after
    /// S3 has answered 200 carries an `<Error>` body; that is an error too.
    pub(crate) async fn copy_version_to_current(
        &self,
        key: &ObjectKey,
        version_id: &str,
    ) -> Result<()> {
        let source = format!(
            "/{}{}?versionId={}",
            percent_encoding::utf8_percent_encode(&self.bucket, S3_ENCODE),
            self.encoded_path(key),
            percent_encoding::utf8_percent_encode(version_id, S3_ENCODE)
        );
        let what = format!("copying back version {version_id} of {key}");
        let answer = self
            .call(
                http::Method::PUT,
                self.object_url(key),
                Some(Vec::new()),
                &[("x-amz-copy-source", &source)],
                &[],
                &what,
            )
            .await?;
        if let Some((_, body)) = answer
            && body.windows(7).any(|w| w == b"<Error>")
        {
            let error: S3ErrorBody = quick_xml::de::from_reader(body.as_ref()).unwrap_or_default();
            return Err(Error::new(
                ErrorKind::Transient,
                format!(
                    "{what} on {}: {} ({})",
                    self.location, error.message, error.code
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct S3ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LockConfigXml {
    #[serde(rename = "ObjectLockEnabled")]
    enabled: Option<String>,
    rule: Option<RuleXml>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RuleXml {
    default_retention: Option<DefaultRetentionXml>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DefaultRetentionXml {
    mode: String,
    days: Option<u32>,
    years: Option<u32>,
}

/// A read-only view of a versioned bucket as it was at `at`: every key reads
/// as its newest version written at or before `at`; a key whose newest
/// entry by then is a delete marker, or that did not exist yet, is absent.
/// Versions and markers written later (an attacker's overwrites and
/// deletes) are ignored. Writes and deletes are refused.
pub struct AsOfStorage {
    inner: Arc<dyn Storage>,
    at: jiff::Timestamp,
    /// Per kind: key path -> (version id, size), listed once on first use.
    views: Mutex<HashMap<Kind, Arc<View>>>,
}

impl std::fmt::Debug for AsOfStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsOfStorage")
            .field("location", &self.inner.location())
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

impl AsOfStorage {
    /// Fails with [`ErrorKind::Config`] unless `inner` keeps versions.
    pub fn new(inner: Arc<dyn Storage>, at: jiff::Timestamp) -> Result<Self> {
        if inner.versioned().is_none() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{} keeps no object versions, so it cannot be read as of a point in time \
                     (only S3 buckets with versioning or object lock can)",
                    inner.location()
                ),
            ));
        }
        Ok(Self {
            inner,
            at,
            views: Mutex::new(HashMap::new()),
        })
    }

    fn versions(&self) -> &dyn VersionedStorage {
        self.inner.versioned().expect("checked in new")
    }

    async fn view(&self, kind: Kind) -> Result<Arc<View>> {
        let mut views = self.views.lock().await;
        if let Some(view) = views.get(&kind) {
            return Ok(view.clone());
        }
        let view = Arc::new(view_at(self.versions().list_versions(kind).await?, self.at));
        views.insert(kind, view.clone());
        Ok(view)
    }

    async fn version_of(&self, key: &ObjectKey) -> Result<Option<(String, u64)>> {
        Ok(self.view(key.kind()).await?.get(&key.path()).cloned())
    }

    fn refuse(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "{what} refused: {} is opened read-only as of {}",
                self.inner.location(),
                self.at
            ),
        )
    }
}

/// A point-in-time view of one kind: key path -> (version id, size).
pub type View = HashMap<String, (String, u64)>;

/// For each key, the newest entry not newer than `at`, kept only when it
/// is a version (not a delete marker).
pub fn view_at(
    versions: Vec<ObjectVersion>,
    at: jiff::Timestamp,
) -> HashMap<String, (String, u64)> {
    let mut newest: HashMap<String, ObjectVersion> = HashMap::new();
    for v in versions.into_iter().filter(|v| v.last_modified <= at) {
        let path = v.key.path();
        match newest.get(&path) {
            // Equal times (S3 keeps one-second or millisecond precision):
            // the one S3 marks latest, else the later in listing order,
            // which S3 gives newest first, so keep the first seen.
            Some(seen) if seen.last_modified > v.last_modified => {}
            Some(seen) if seen.last_modified == v.last_modified && !v.latest => {}
            _ => {
                newest.insert(path, v);
            }
        }
    }
    newest
        .into_iter()
        .filter(|(_, v)| !v.delete_marker)
        .map(|(path, v)| (path, (v.version_id, v.size_bytes)))
        .collect()
}

#[async_trait]
impl Storage for AsOfStorage {
    fn location(&self) -> String {
        format!("{} as of {}", self.inner.location(), self.at)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn put(&self, key: &ObjectKey, _data: Bytes) -> Result<()> {
        Err(self.refuse(&format!("writing {key}")))
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        match self.version_of(key).await? {
            Some((version, _)) => self.versions().get_version(key, &version).await,
            None => Err(Error::not_found(key)),
        }
    }

    async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes> {
        match self.version_of(key).await? {
            Some((version, _)) => {
                self.versions()
                    .get_version_range(key, &version, offset, len)
                    .await
            }
            None => Err(Error::not_found(key)),
        }
    }

    async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>> {
        Ok(self.version_of(key).await?.map(|(_, size)| size))
    }

    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        let view = self.view(kind).await?;
        Ok(view
            .keys()
            .filter_map(|path| {
                let name = path.rsplit('/').next()?;
                let key = ObjectKey::parse(kind, name)?;
                let size_bytes = view.get(path)?.1;
                Some(ObjectInfo { key, size_bytes })
            })
            .collect())
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        Err(self.refuse(&format!("deleting {key}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(name: &str, id: &str, second: i64, marker: bool, latest: bool) -> ObjectVersion {
        ObjectVersion {
            key: ObjectKey::parse(Kind::Snapshots, name).unwrap(),
            version_id: id.into(),
            last_modified: jiff::Timestamp::from_second(second).unwrap(),
            size_bytes: 10,
            delete_marker: marker,
            latest,
            etag: None,
        }
    }

    #[test]
    fn view_ignores_later_versions_and_markers_but_honours_earlier_markers() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let c = "c".repeat(64);
        let versions = vec![
            // a: written at 10, overwritten by an attacker at 30.
            version(&a, "a2", 30, false, true),
            version(&a, "a1", 10, false, false),
            // b: written at 10, delete marker at 30.
            version(&b, "bm", 30, true, true),
            version(&b, "b1", 10, false, false),
            // c: written at 5, deleted (by prune) at 15.
            version(&c, "cm", 15, true, true),
            version(&c, "c1", 5, false, false),
        ];
        let at = jiff::Timestamp::from_second(20).unwrap();
        let view = view_at(versions, at);
        let path = |n: &str| ObjectKey::parse(Kind::Snapshots, n).unwrap().path();
        assert_eq!(view.get(&path(&a)).map(|v| v.0.as_str()), Some("a1"));
        assert_eq!(view.get(&path(&b)).map(|v| v.0.as_str()), Some("b1"));
        assert_eq!(view.get(&path(&c)), None, "deleted before the time");
        assert_eq!(view.len(), 2);
    }
}

//! A repository served by `lifeboat serve` (`lifeboat+http://host:port/`).
//!
//! The server holds the real storage and grants each client a role by its
//! bearer token (docs/security.md §11.4); this backend is a thin client of
//! its protocol (docs/format.md §2.3): one request per [`Storage`] call,
//! object bytes as bodies, listings as text lines. The server's storage
//! keeps every promise of the storage contract, so this backend keeps them
//! too; it adds only the classification of HTTP answers into
//! [`ErrorKind`]s (a 403 is the server refusing what the client's role
//! does not allow).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::{Method, StatusCode};

use crate::{Capabilities, Error, ErrorKind, Kind, ObjectInfo, ObjectKey, Result, Storage};

/// The protocol version in every path.
const API: &str = "v1";
/// Requests without a body are answered in milliseconds by a healthy
/// server; a minute means it is gone. Uploads get the same per-request
/// budget (packs are at most 1 GiB, and this is a LAN protocol).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A `lifeboat serve` server over a local disk: a few parallel requests
/// keep it busy, as for the local backend.
const MAX_CONNECTIONS: usize = 8;

/// Where a served repository is, and the token to present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// `http://host:port` or `https://host:port` (TLS is for a reverse
    /// proxy in front of `lifeboat serve`).
    pub endpoint: String,
    /// A file holding the client's token; else `LIFEBOAT_SERVE_TOKEN` or
    /// `LIFEBOAT_SERVE_TOKEN_FILE` from the environment.
    pub token_file: Option<PathBuf>,
}

impl HttpOptions {
    fn token(&self) -> Result<String> {
        let file = self
            .token_file
            .clone()
            .or_else(|| std::env::var_os("LIFEBOAT_SERVE_TOKEN_FILE").map(PathBuf::from));
        let token = match file {
            Some(f) => std::fs::read_to_string(&f).map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot read the serve token file {}: {e}", f.display()),
                )
            })?,
            None => std::env::var("LIFEBOAT_SERVE_TOKEN").map_err(|_| {
                Error::new(
                    ErrorKind::Config,
                    "no token for the lifeboat serve location: set LIFEBOAT_SERVE_TOKEN or \
                     LIFEBOAT_SERVE_TOKEN_FILE, or add ?token-file=PATH",
                )
            })?,
        };
        let token = token.trim_end_matches(['\n', '\r']).to_string();
        if token.is_empty() {
            return Err(Error::new(ErrorKind::Config, "the serve token is empty"));
        }
        Ok(token)
    }
}

/// A client of `lifeboat serve`.
pub struct HttpStorage {
    client: reqwest::Client,
    endpoint: String,
    token: String,
    atomic_create: bool,
}

impl std::fmt::Debug for HttpStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStorage")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl HttpStorage {
    /// Connects and asks the server what its storage can do (one request;
    /// a wrong token fails here).
    pub async fn open(options: HttpOptions) -> Result<Self> {
        let token = options.token()?;
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| Error::new(ErrorKind::Config, format!("HTTP client: {e}")))?;
        let mut s = HttpStorage {
            client,
            endpoint: options.endpoint.trim_end_matches('/').to_string(),
            token,
            atomic_create: false,
        };
        let info = s
            .request(Method::GET, &format!("/{API}"), None, None)
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::Transient => Error::new(ErrorKind::Unreachable, e.to_string()),
                _ => e,
            })?;
        let info = String::from_utf8_lossy(&info);
        s.atomic_create = info.lines().any(|l| l.trim() == "atomic_create=true");
        Ok(s)
    }

    fn object_path(key: &ObjectKey) -> String {
        format!("/{API}/{}/{}", kind_name(key.kind()), key.name())
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        range: Option<(u64, u64)>,
    ) -> Result<Bytes> {
        let what = format!("{method} {path} on {}", self.location());
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.endpoint))
            .bearer_auth(&self.token);
        if let Some((offset, len)) = range {
            let Some(last) = offset.checked_add(len - 1) else {
                return Err(Error::new(
                    ErrorKind::InvalidRange,
                    format!("{what}: range {offset}+{len} is past any object"),
                ));
            };
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-{last}"));
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::new(ErrorKind::Transient, format!("{what}: {e}")))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Error::new(ErrorKind::Transient, format!("{what}: {e}")))?;
        if status.is_success() {
            return Ok(bytes);
        }
        let message = String::from_utf8_lossy(&bytes).trim().to_string();
        let kind = match status {
            StatusCode::NOT_FOUND => ErrorKind::NotFound,
            StatusCode::CONFLICT => ErrorKind::AlreadyExists,
            StatusCode::RANGE_NOT_SATISFIABLE => ErrorKind::InvalidRange,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ErrorKind::PermissionDenied,
            StatusCode::INSUFFICIENT_STORAGE => ErrorKind::StorageFull,
            StatusCode::BAD_REQUEST => ErrorKind::Config,
            s if s.is_server_error() => ErrorKind::Transient,
            _ => ErrorKind::Other,
        };
        Err(Error::new(kind, format!("{what}: {status}: {message}")))
    }
}

/// The path segment of a namespace (docs/format.md §2.3).
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Config => "config",
        other => other.dir(),
    }
}

/// The namespace a path segment names.
pub fn parse_kind(name: &str) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| kind_name(*k) == name)
}

#[async_trait]
impl Storage for HttpStorage {
    fn location(&self) -> String {
        format!("lifeboat+{}/", self.endpoint)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_connections: MAX_CONNECTIONS,
            atomic_create: self.atomic_create,
            list_after_write: true,
            round_trips: true,
        }
    }

    async fn put(&self, key: &ObjectKey, data: Bytes) -> Result<()> {
        self.request(Method::PUT, &Self::object_path(key), Some(data), None)
            .await
            .map(drop)
            .map_err(|e| match e.kind() {
                ErrorKind::AlreadyExists => Error::already_exists(key),
                _ => e,
            })
    }

    async fn get(&self, key: &ObjectKey) -> Result<Bytes> {
        self.request(Method::GET, &Self::object_path(key), None, None)
            .await
            .map_err(|e| not_found(e, key))
    }

    async fn get_range(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            // An empty range cannot be written as an HTTP range; it exists
            // when the object is at least `offset` long.
            return match self.stat(key).await? {
                Some(size) if offset <= size => Ok(Bytes::new()),
                Some(_) => Err(Error::new(
                    ErrorKind::InvalidRange,
                    format!("range {offset}+0 outside {key}"),
                )),
                None => Err(Error::not_found(key)),
            };
        }
        let bytes = self
            .request(
                Method::GET,
                &Self::object_path(key),
                None,
                Some((offset, len)),
            )
            .await
            .map_err(|e| not_found(e, key))?;
        if bytes.len() as u64 != len {
            return Err(Error::new(
                ErrorKind::InvalidRange,
                format!("range {offset}+{len} of {key}: got {} bytes", bytes.len()),
            ));
        }
        Ok(bytes)
    }

    async fn stat(&self, key: &ObjectKey) -> Result<Option<u64>> {
        let path = format!("{}?stat", Self::object_path(key));
        match self.request(Method::GET, &path, None, None).await {
            Ok(body) => String::from_utf8_lossy(&body)
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Error::new(ErrorKind::Other, format!("bad size for {key}"))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>> {
        let body = self
            .request(
                Method::GET,
                &format!("/{API}/{}/", kind_name(kind)),
                None,
                None,
            )
            .await?;
        let text = String::from_utf8_lossy(&body);
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let parsed = line.split_once(' ').and_then(|(name, size)| {
                Some((ObjectKey::parse(kind, name)?, size.parse::<u64>().ok()?))
            });
            let Some((key, size_bytes)) = parsed else {
                return Err(Error::new(
                    ErrorKind::Other,
                    format!(
                        "listing {} on {}: bad line {line:?}",
                        kind_name(kind),
                        self.location()
                    ),
                ));
            };
            out.push(ObjectInfo { key, size_bytes });
        }
        Ok(out)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        match self
            .request(Method::DELETE, &Self::object_path(key), None, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn create_root(&self) -> Result<()> {
        self.request(Method::POST, &format!("/{API}/create-root"), None, None)
            .await
            .map(drop)
    }
}

fn not_found(e: Error, key: &ObjectKey) -> Error {
    match e.kind() {
        ErrorKind::NotFound => Error::not_found(key),
        _ => e,
    }
}

//! `lifeboat serve`: one repository's storage behind HTTP, each client
//! granted a role by its bearer token, so that where lifeboat is the only
//! path to the storage, an append-only host cannot delete what it cannot
//! delete through its key either (docs/security.md §11.4).
//!
//! The protocol (docs/format.md §2.3) maps the [`Storage`] calls one to
//! one; the server only decides, per request, whether the client's role
//! allows it: `full` everything, `append-only` reads, creates (a `put`
//! never overwrites: an existing name is a 409 for everyone) and deletes
//! of the lock objects it created itself, `read-only` reads. Every refused
//! request is written as one line to the audit log. Tokens are compared
//! by their BLAKE3 hashes, whose equality is constant-time. TLS is left to
//! a reverse proxy in front (as restic's rest-server allows too); the
//! server binds to loopback unless told otherwise. The design follows
//! restic's rest-server `--append-only` (locks stay deletable) and borg's
//! `serve --permissions`; no code of theirs is used.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lifeboat_repo::{Permission, Role};
use lifeboat_storage::{DynStorage, ErrorKind, Kind, ObjectKey, kind_name, parse_kind};

/// Largest request body: a pack is at most 1 GiB (format.md §5), plus
/// room for its trailer.
const MAX_BODY: usize = 1024 * 1024 * 1024 + 64 * 1024 * 1024;

/// One client of the server.
#[derive(Clone)]
pub struct Client {
    pub name: String,
    pub role: Role,
    token_hash: blake3::Hash,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(name: impl Into<String>, role: Role, token: &str) -> Self {
        Client {
            name: name.into(),
            role,
            token_hash: blake3::hash(token.as_bytes()),
        }
    }

    /// `NAME:ROLE:TOKENFILE`, the token being the file's first line.
    pub fn parse_spec(spec: &str) -> Result<Self, String> {
        let mut parts = spec.splitn(3, ':');
        let (Some(name), Some(role), Some(file)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "--client {spec:?}: give NAME:ROLE:TOKENFILE (ROLE full, append-only or read-only)"
            ));
        };
        if name.is_empty() {
            return Err(format!("--client {spec:?}: the name is empty"));
        }
        let role: Role = role
            .parse()
            .map_err(|e| format!("--client {spec:?}: {e}"))?;
        let token = std::fs::read_to_string(file)
            .map_err(|e| format!("--client {spec:?}: cannot read the token file {file}: {e}"))?;
        let token = token.lines().next().unwrap_or_default().trim_end();
        // A short token can be guessed over the network.
        if token.len() < 16 {
            return Err(format!(
                "--client {spec:?}: the token in {file} is shorter than 16 characters; use a \
                 random one (head -c 32 /dev/urandom | base64)"
            ));
        }
        Ok(Client::new(name, role, token))
    }
}

/// What a server serves, and to whom.
#[derive(Debug)]
pub struct ServeConfig {
    pub storage: DynStorage,
    pub clients: Vec<Client>,
    /// Where refused requests are logged (one line each), besides stderr.
    pub audit_log: Option<PathBuf>,
}

struct ServeState {
    config: ServeConfig,
    /// Lock objects each append-only client created, which it may delete.
    own_locks: Mutex<HashMap<String, HashSet<String>>>,
    audit: Mutex<Option<std::fs::File>>,
}

/// The router of a server (for tests that run it in-process).
pub fn router(config: ServeConfig) -> std::io::Result<Router> {
    let audit = match &config.audit_log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => None,
    };
    let state = Arc::new(ServeState {
        config,
        own_locks: Mutex::default(),
        audit: Mutex::new(audit),
    });
    Ok(Router::new().fallback(handle).with_state(state))
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(config)?)
        .with_graceful_shutdown(shutdown)
        .await
}

/// What a request asks for.
enum Op {
    Info,
    CreateRoot,
    List(Kind),
    Stat(ObjectKey),
    Get(ObjectKey),
    Put(ObjectKey),
    Delete(ObjectKey),
}

fn parse_op(method: &Method, path: &str, query: Option<&str>) -> Option<Op> {
    let rest = path.strip_prefix("/v1")?;
    if rest.is_empty() || rest == "/" {
        return (method == Method::GET).then_some(Op::Info);
    }
    if rest == "/create-root" {
        return (method == Method::POST).then_some(Op::CreateRoot);
    }
    let rest = rest.strip_prefix('/')?;
    let (kind, name) = rest.split_once('/')?;
    let kind = parse_kind(kind)?;
    if name.is_empty() {
        return (method == Method::GET).then_some(Op::List(kind));
    }
    let key = ObjectKey::parse(kind, name)?;
    Some(match *method {
        Method::GET if query == Some("stat") => Op::Stat(key),
        Method::GET => Op::Get(key),
        Method::PUT => Op::Put(key),
        Method::DELETE => Op::Delete(key),
        _ => return None,
    })
}

async fn handle(State(state): State<Arc<ServeState>>, request: Request) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let line = format!("{method} {}", uri.path());
    let Some(client) = authenticate(&state, request.headers()) else {
        state.refuse(None, &line, "no valid token");
        return (StatusCode::UNAUTHORIZED, "no valid token\n").into_response();
    };
    let Some(op) = parse_op(&method, uri.path(), uri.query()) else {
        return (StatusCode::BAD_REQUEST, "not a lifeboat serve request\n").into_response();
    };
    if let Err(reason) = state.allowed(&client, &op) {
        state.refuse(Some(&client), &line, &reason);
        return (StatusCode::FORBIDDEN, format!("refused: {reason}\n")).into_response();
    }
    let storage = &state.config.storage;
    let result = match op {
        Op::Info => Ok(format!(
            "lifeboat serve v1\natomic_create={}\n",
            storage.capabilities().atomic_create
        )
        .into_response()),
        Op::CreateRoot => storage
            .create_root()
            .await
            .map(|()| StatusCode::NO_CONTENT.into_response()),
        Op::List(kind) => storage.list(kind).await.map(|list| {
            let mut text = String::new();
            for o in list {
                text.push_str(&format!("{} {}\n", o.key.name(), o.size_bytes));
            }
            text.into_response()
        }),
        Op::Stat(key) => match storage.stat(&key).await {
            Ok(Some(size)) => Ok(format!("{size}\n").into_response()),
            Ok(None) => Ok((StatusCode::NOT_FOUND, format!("{key} not found\n")).into_response()),
            Err(e) => Err(e),
        },
        Op::Get(key) => match range(request.headers()) {
            Err(()) => Ok((StatusCode::BAD_REQUEST, "bad Range header\n").into_response()),
            Ok(Some((offset, len))) => storage
                .get_range(&key, offset, len)
                .await
                .map(|b| (StatusCode::PARTIAL_CONTENT, b).into_response()),
            Ok(None) => storage.get(&key).await.map(IntoResponse::into_response),
        },
        Op::Put(key) => {
            let body = match axum::body::to_bytes(request.into_body(), MAX_BODY).await {
                Ok(b) => b,
                Err(e) => {
                    return (StatusCode::BAD_REQUEST, format!("reading the body: {e}\n"))
                        .into_response();
                }
            };
            let r = storage.put(&key, body).await;
            if let Err(e) = &r
                && e.kind() == ErrorKind::AlreadyExists
            {
                state.refuse(
                    Some(&client),
                    &line,
                    "the object exists and is never overwritten",
                );
            }
            if r.is_ok() && key.kind() == Kind::Locks && client.role != Role::Full {
                state
                    .own_locks
                    .lock()
                    .expect("not poisoned")
                    .entry(client.name.clone())
                    .or_default()
                    .insert(key.name().to_string());
            }
            r.map(|()| StatusCode::CREATED.into_response())
        }
        Op::Delete(key) => {
            let r = storage.delete(&key).await;
            if r.is_ok()
                && key.kind() == Kind::Locks
                && let Some(own) = state
                    .own_locks
                    .lock()
                    .expect("not poisoned")
                    .get_mut(&client.name)
            {
                own.remove(key.name());
            }
            r.map(|()| StatusCode::NO_CONTENT.into_response())
        }
    };
    result.unwrap_or_else(|e| {
        let status = match e.kind() {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::AlreadyExists => StatusCode::CONFLICT,
            ErrorKind::InvalidRange => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::Transient | ErrorKind::Unreachable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Body::from(format!("{e}\n"))).into_response()
    })
}

/// `Range: bytes=A-B` as (offset, length); `Ok(None)` without one.
fn range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let spec = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("bytes="))
        .ok_or(())?;
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b): (u64, u64) = (a.parse().map_err(drop)?, b.parse().map_err(drop)?);
    if b < a {
        return Err(());
    }
    Ok(Some((a, b - a + 1)))
}

fn authenticate(state: &ServeState, headers: &HeaderMap) -> Option<Client> {
    let token = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let hash = blake3::hash(token.as_bytes());
    // Every client is compared (no early exit), each in constant time.
    let mut found = None;
    for c in &state.config.clients {
        if c.token_hash == hash {
            found = Some(c.clone());
        }
    }
    found
}

impl ServeState {
    fn allowed(&self, client: &Client, op: &Op) -> Result<(), String> {
        let role = client.role;
        let needs = match op {
            Op::Info | Op::List(_) | Op::Stat(_) | Op::Get(_) => Permission::Read,
            Op::CreateRoot | Op::Put(_) => Permission::Append,
            Op::Delete(key) => {
                let own_lock = key.kind() == Kind::Locks
                    && self
                        .own_locks
                        .lock()
                        .expect("not poisoned")
                        .get(&client.name)
                        .is_some_and(|own| own.contains(key.name()));
                if own_lock {
                    Permission::Append
                } else {
                    Permission::Full
                }
            }
        };
        if role.allows(needs) {
            return Ok(());
        }
        Err(match op {
            Op::Delete(key) if key.kind() == Kind::Locks => format!(
                "{role} client {} may delete only lock objects it created",
                client.name
            ),
            Op::Delete(key) => format!(
                "{role} client {} may not delete {} objects",
                client.name,
                kind_name(key.kind())
            ),
            _ => format!("{role} client {} may only read", client.name),
        })
    }

    /// One line per refused request: time, client, role, request, reason.
    fn refuse(&self, client: Option<&Client>, request: &str, reason: &str) {
        let (name, role) = match client {
            Some(c) => (c.name.as_str(), c.role.as_str()),
            None => ("-", "-"),
        };
        let line = format!(
            "{} refused client={name} role={role} {request}: {reason}",
            jiff::Timestamp::now()
        );
        tracing::warn!("lifeboat serve: {line}");
        if let Some(f) = self.audit.lock().expect("not poisoned").as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }
}

//! Repository locations as the user writes them, and opening them.
//!
//! [`Location::parse`] accepts a plain local path, `file:///path`,
//! `s3://bucket/prefix?endpoint=…&region=…`,
//! `sftp://user@host:port/path?key=…` and `lifeboat+http://host:port/`
//! (a `lifeboat serve` endpoint); anything else is an
//! [`ErrorKind::Config`] error that lists these forms. Secrets never appear in
//! a location: S3 keys come from the environment (see
//! [`S3Options::with_env_defaults`]) and SFTP authenticates with a key file.
//! [`open_location`] turns a location into a ready [`DynStorage`].

use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::sync::Arc;

use url::{Host, Url};

use crate::{
    DynStorage, Error, ErrorKind, HttpOptions, HttpStorage, KnownHosts, LocalStorage,
    OpendalStorage, Result, RetryPolicy, RetryStorage, S3Options, SftpOptions,
};

/// Printed with every rejected location so the user sees what would work.
const ACCEPTED_FORMS: &str = "accepted forms: /local/path, file:///local/path, \
s3://bucket[/prefix][?endpoint=http://host:port][&region=us-east-1][&storage-class=CLASS][&as-of=TIME], \
sftp://[user@]host[:port]/absolute/path[?key=/path/to/private-key][&known-hosts=strict|add|accept], \
lifeboat+http://host:port/[?token-file=/path/to/token] (or lifeboat+https://)";

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3(S3Options),
    Sftp(SftpOptions),
    /// A `lifeboat serve` endpoint.
    Serve(HttpOptions),
}

impl Location {
    pub fn parse(s: &str) -> Result<Self> {
        if s.trim().is_empty() {
            return Err(config_error(s, "the repository location is empty"));
        }
        if let Some((scheme, _)) = s.split_once("://").filter(|(scheme, _)| is_scheme(scheme)) {
            return match scheme.to_ascii_lowercase().as_str() {
                "file" => parse_file(s),
                "s3" => parse_s3(s),
                "sftp" => parse_sftp(s),
                "lifeboat+http" | "lifeboat+https" => parse_serve(s),
                other => Err(config_error(s, &format!("unsupported scheme {other:?}"))),
            };
        }
        // `s3:bucket/x` and `sftp:host:/x` are other tools' spellings; a local
        // directory of that name is far less likely than a typo.
        for scheme in ["s3:", "sftp:"] {
            if s.len() > scheme.len() && s[..scheme.len()].eq_ignore_ascii_case(scheme) {
                return Err(config_error(s, "remote locations are URLs with `://`"));
            }
        }
        Ok(Location::Local(PathBuf::from(s)))
    }
}

/// The location as a URL (or path) that [`Location::parse`] accepts again;
/// never contains secrets.
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3(o) => {
                write!(f, "s3://{}", o.bucket)?;
                if !o.root.is_empty() {
                    write!(f, "/{}", o.root)?;
                }
                let mut sep = '?';
                for (name, value) in [
                    ("endpoint", &o.endpoint),
                    ("region", &o.region),
                    ("storage-class", &o.storage_class),
                    ("as-of", &o.as_of.map(|t| t.to_string())),
                ] {
                    if let Some(value) = value {
                        write!(f, "{sep}{name}={value}")?;
                        sep = '&';
                    }
                }
                Ok(())
            }
            Location::Serve(o) => {
                write!(f, "lifeboat+{}/", o.endpoint)?;
                if let Some(file) = &o.token_file {
                    write!(f, "?token-file={}", file.display())?;
                }
                Ok(())
            }
            Location::Sftp(o) => {
                f.write_str("sftp://")?;
                if let Some(user) = &o.user {
                    write!(f, "{user}@")?;
                }
                if o.host.contains(':') {
                    write!(f, "[{}]", o.host)?;
                } else {
                    f.write_str(&o.host)?;
                }
                if let Some(port) = o.port {
                    write!(f, ":{port}")?;
                }
                f.write_str(&o.root)?;
                let mut sep = '?';
                if let Some(key) = &o.key_file {
                    write!(f, "{sep}key={}", key.display())?;
                    sep = '&';
                }
                if o.known_hosts != KnownHosts::default() {
                    write!(f, "{sep}known-hosts={}", o.known_hosts.as_str())?;
                }
                Ok(())
            }
        }
    }
}

/// Opens the storage behind a location. Remote storages are probed (see
/// [`OpendalStorage`]) and wrapped in [`RetryStorage`] with the default
/// [`RetryPolicy`]; a local directory needs no retries.
pub async fn open_location(location: &Location) -> Result<DynStorage> {
    let remote = match location {
        Location::Local(p) => return Ok(Arc::new(LocalStorage::new(p.clone()))),
        Location::S3(o) => OpendalStorage::s3(o.clone()).await?,
        Location::Sftp(o) => OpendalStorage::sftp(o.clone()).await?,
        Location::Serve(o) => {
            let served = HttpStorage::open(o.clone()).await?;
            return Ok(Arc::new(RetryStorage::new(
                Arc::new(served),
                RetryPolicy::default(),
            )));
        }
    };
    let storage: DynStorage = Arc::new(RetryStorage::new(Arc::new(remote), RetryPolicy::default()));
    match location {
        Location::S3(S3Options {
            as_of: Some(at), ..
        }) => Ok(Arc::new(crate::AsOfStorage::new(storage, *at)?)),
        _ => Ok(storage),
    }
}

/// A point in time for `as-of`: an RFC 3339 timestamp
/// (`2026-12-06T04:00:00Z`) or a civil time with an offset.
pub fn parse_as_of(s: &str) -> std::result::Result<jiff::Timestamp, String> {
    s.parse::<jiff::Timestamp>().map_err(|e| {
        format!("as-of must be a time such as 2026-12-06T04:00:00Z (RFC 3339, with a zone): {e}")
    })
}

fn config_error(input: &str, problem: &str) -> Error {
    Error::new(
        ErrorKind::Config,
        format!("invalid repository location {input:?}: {problem}; {ACCEPTED_FORMS}"),
    )
}

/// RFC 3986 scheme: a letter, then letters, digits, `+`, `-` or `.`.
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

fn parse_url(s: &str) -> Result<Url> {
    let url = Url::parse(s).map_err(|e| config_error(s, &e.to_string()))?;
    if url.fragment().is_some() {
        return Err(config_error(s, "a `#fragment` is not allowed"));
    }
    Ok(url)
}

fn parse_file(s: &str) -> Result<Location> {
    let url = parse_url(s)?;
    if url.query().is_some() {
        return Err(config_error(s, "file URLs take no `?` options"));
    }
    if url
        .host_str()
        .is_some_and(|h| !h.is_empty() && h != "localhost")
    {
        return Err(config_error(
            s,
            "file URLs must name a local path (file:///path)",
        ));
    }
    let path = url
        .to_file_path()
        .map_err(|()| config_error(s, "not a valid absolute local path"))?;
    Ok(Location::Local(path))
}

fn parse_s3(s: &str) -> Result<Location> {
    let url = parse_url(s)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config_error(
            s,
            "credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ));
    }
    if url.port().is_some() {
        return Err(config_error(
            s,
            "the part after s3:// is the bucket; give the server as ?endpoint=http://host:port",
        ));
    }
    let bucket = url.host_str().unwrap_or_default();
    if bucket.is_empty() {
        return Err(config_error(s, "the bucket name is missing"));
    }
    let root = decode_path(s, url.path())?
        .split('/')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("/");
    let mut options = S3Options {
        root,
        ..S3Options::new(bucket)
    };
    for (name, value) in url.query_pairs() {
        match name.as_ref() {
            "endpoint" => {
                let endpoint = Url::parse(&value)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
                if endpoint.is_none() {
                    return Err(config_error(
                        s,
                        "endpoint must be an http:// or https:// URL",
                    ));
                }
                options.endpoint = Some(value.trim_end_matches('/').to_string());
            }
            "region" if !value.is_empty() => options.region = Some(value.into_owned()),
            "storage-class" => {
                // S3 class names are upper-case words with `_`; anything
                // else would only fail later, at the first upload.
                let ok = !value.is_empty()
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
                if !ok {
                    return Err(config_error(
                        s,
                        "storage-class must be an S3 class name such as STANDARD_IA, GLACIER_IR or DEEP_ARCHIVE",
                    ));
                }
                options.storage_class = Some(value.into_owned());
            }
            "as-of" => {
                let at = parse_as_of(&value).map_err(|problem| config_error(s, &problem))?;
                options.as_of = Some(at);
            }
            other => {
                return Err(config_error(
                    s,
                    &unknown_option(other, "endpoint, region, storage-class, as-of"),
                ));
            }
        }
    }
    Ok(Location::S3(options))
}

fn parse_sftp(s: &str) -> Result<Location> {
    let url = parse_url(s)?;
    if url.password().is_some() {
        return Err(config_error(
            s,
            "passwords are not supported; authenticate with ?key=/path/to/private-key",
        ));
    }
    let host = match url.host() {
        Some(Host::Domain(d)) if !d.is_empty() => d.to_string(),
        Some(Host::Ipv4(a)) => a.to_string(),
        Some(Host::Ipv6(a)) => Ipv6Addr::to_string(&a),
        _ => return Err(config_error(s, "the host name is missing")),
    };
    let user = Some(decode_path(s, url.username())?).filter(|u| !u.is_empty());
    let root = decode_path(s, url.path())?;
    if root.trim_matches('/').is_empty() {
        return Err(config_error(s, "the repository path is missing"));
    }
    let mut options = SftpOptions {
        user,
        host,
        port: url.port(),
        root,
        key_file: None,
        known_hosts: KnownHosts::default(),
    };
    for (name, value) in url.query_pairs() {
        match name.as_ref() {
            "key" if !value.is_empty() => options.key_file = Some(PathBuf::from(value.as_ref())),
            "known-hosts" => {
                options.known_hosts = KnownHosts::parse(&value)
                    .ok_or_else(|| config_error(s, "known-hosts must be strict, add or accept"))?;
            }
            other => return Err(config_error(s, &unknown_option(other, "key, known-hosts"))),
        }
    }
    Ok(Location::Sftp(options))
}

fn parse_serve(s: &str) -> Result<Location> {
    let url = parse_url(s)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config_error(
            s,
            "the token does not belong in the URL; use ?token-file=PATH or LIFEBOAT_SERVE_TOKEN",
        ));
    }
    let host = match url.host() {
        Some(Host::Domain(d)) if !d.is_empty() => d.to_string(),
        Some(Host::Ipv4(a)) => a.to_string(),
        Some(Host::Ipv6(a)) => format!("[{a}]"),
        _ => return Err(config_error(s, "the host name is missing")),
    };
    if !url.path().trim_matches('/').is_empty() {
        return Err(config_error(
            s,
            "a lifeboat serve endpoint serves one repository: give no path",
        ));
    }
    let scheme = url.scheme().trim_start_matches("lifeboat+");
    let endpoint = match url.port() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    };
    let mut options = HttpOptions {
        endpoint,
        token_file: None,
    };
    for (name, value) in url.query_pairs() {
        match name.as_ref() {
            "token-file" if !value.is_empty() => {
                options.token_file = Some(PathBuf::from(value.as_ref()))
            }
            other => return Err(config_error(s, &unknown_option(other, "token-file"))),
        }
    }
    Ok(Location::Serve(options))
}

fn unknown_option(name: &str, known: &str) -> String {
    format!("unknown or empty option {name:?} (known: {known})")
}

/// Undoes `%XX` escapes in a URL component. A `%` not followed by two hex
/// digits is an error here (the decoder would pass it through), so a typo
/// in a location is reported rather than taken literally.
fn decode_path(input: &str, component: &str) -> Result<String> {
    let malformed = component.match_indices('%').any(|(i, _)| {
        component
            .as_bytes()
            .get(i + 1..i + 3)
            .is_none_or(|h| !h.iter().all(u8::is_ascii_hexdigit))
    });
    if malformed {
        return Err(config_error(input, "bad %-escape"));
    }
    percent_encoding::percent_decode_str(component)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| config_error(input, "%-escapes do not form UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_err(s: &str) -> String {
        let err = Location::parse(s).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{s}: {err}");
        let msg = err.to_string();
        assert!(msg.contains("accepted forms"), "{msg}");
        msg
    }

    #[test]
    fn local_paths() {
        assert_eq!(
            Location::parse("/srv/backup").unwrap(),
            Location::Local("/srv/backup".into())
        );
        assert_eq!(
            Location::parse("relative/repo").unwrap(),
            Location::Local("relative/repo".into())
        );
        assert_eq!(
            Location::parse("file:///srv/my%20backup").unwrap(),
            Location::Local("/srv/my backup".into())
        );
        assert_eq!(
            Location::parse("file://localhost/srv").unwrap(),
            Location::Local("/srv".into())
        );
        // Not a scheme: contains a slash before `://`.
        assert_eq!(
            Location::parse("./odd://name").unwrap(),
            Location::Local("./odd://name".into())
        );
    }

    #[test]
    fn s3_urls() {
        let loc = Location::parse(
            "s3://my-bucket/some/prefix/?endpoint=http://127.0.0.1:9000/&region=us-east-1",
        )
        .unwrap();
        let Location::S3(o) = &loc else {
            panic!("{loc:?}")
        };
        assert_eq!(o.bucket, "my-bucket");
        assert_eq!(o.root, "some/prefix");
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(o.region.as_deref(), Some("us-east-1"));
        assert_eq!(
            o.access_key_id, None,
            "keys come from the environment at open"
        );
        assert_eq!(
            loc.to_string(),
            "s3://my-bucket/some/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1"
        );
        assert_eq!(Location::parse(&loc.to_string()).unwrap(), loc);

        let classed = Location::parse("s3://cold/p?storage-class=GLACIER_IR").unwrap();
        let Location::S3(o) = &classed else {
            panic!("{classed:?}")
        };
        assert_eq!(o.storage_class.as_deref(), Some("GLACIER_IR"));
        assert_eq!(classed.to_string(), "s3://cold/p?storage-class=GLACIER_IR");
        assert_eq!(Location::parse(&classed.to_string()).unwrap(), classed);

        let bare = Location::parse("s3://bucket").unwrap();
        assert_eq!(bare, Location::S3(S3Options::new("bucket")));
        assert_eq!(bare.to_string(), "s3://bucket");
    }

    #[test]
    fn sftp_urls() {
        let loc =
            Location::parse("sftp://backup@example.org:2222/srv/repo?key=/root/.ssh/id_ed25519")
                .unwrap();
        assert_eq!(
            loc,
            Location::Sftp(SftpOptions {
                user: Some("backup".into()),
                host: "example.org".into(),
                port: Some(2222),
                root: "/srv/repo".into(),
                key_file: Some("/root/.ssh/id_ed25519".into()),
                known_hosts: KnownHosts::Add,
            })
        );
        assert_eq!(Location::parse(&loc.to_string()).unwrap(), loc);

        let Location::Sftp(o) = Location::parse("sftp://[::1]/r?known-hosts=accept").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (o.host.as_str(), o.user.as_deref(), o.port),
            ("::1", None, None)
        );
        assert_eq!(o.known_hosts, KnownHosts::Accept);
        let again = Location::Sftp(o.clone());
        assert_eq!(Location::parse(&again.to_string()).unwrap(), again);
    }

    #[test]
    fn bad_locations_name_the_accepted_forms() {
        config_err("");
        config_err("ftp://host/x");
        config_err("s3:bucket/prefix");
        config_err("sftp:host:/srv");
        config_err("s3:///prefix");
        config_err("s3://bucket:9000/prefix");
        assert!(config_err("s3://AKIA:secret@bucket/x").contains("AWS_ACCESS_KEY_ID"));
        assert!(config_err("s3://bucket?endpoint=127.0.0.1:9000").contains("http://"));
        assert!(config_err("s3://bucket?colour=blue").contains("colour"));
        config_err("s3://bucket#frag");
        config_err("s3://bucket?storage-class=");
        config_err("s3://bucket?storage-class=glacier; rm");
        config_err("sftp://host");
        config_err("sftp://host/");
        config_err("sftp://user:pw@host/srv");
        config_err("sftp://host/srv?known-hosts=maybe");
        config_err("sftp://host/srv?password=x");
        config_err("file://otherhost/srv");
        config_err("file:///srv?x=1");
        config_err("sftp://host/bad%zzescape");
        config_err("lifeboat+http://host:8000/some/path");
        config_err("lifeboat+http://user:tok@host:8000/");
        config_err("lifeboat+http://host:8000/?token=abc");
    }

    #[test]
    fn serve_urls() {
        let loc = Location::parse("lifeboat+http://127.0.0.1:8000/?token-file=/etc/t").unwrap();
        assert_eq!(
            loc,
            Location::Serve(HttpOptions {
                endpoint: "http://127.0.0.1:8000".into(),
                token_file: Some("/etc/t".into()),
            })
        );
        assert_eq!(Location::parse(&loc.to_string()).unwrap(), loc);
        let Location::Serve(o) = Location::parse("LIFEBOAT+HTTPS://backup.example").unwrap() else {
            panic!()
        };
        assert_eq!(o.endpoint, "https://backup.example");
    }
}

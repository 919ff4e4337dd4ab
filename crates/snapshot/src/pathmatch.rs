//! Paths and patterns: the one glob dialect lifeboat speaks.
//!
//! Backup excludes, restore's `--include`/`--exclude`, `find` and the
//! PostgreSQL files method's built-in excludes all match with
//! [`PathMatcher`], so a pattern means the same thing wherever a user (or a
//! connector) writes it: a pattern containing `/` matches the whole path, any
//! other pattern matches an entry's name wherever it is; `*`, `?` and `[...]`
//! stay within one path component and `**` crosses directories; a backslash
//! escapes. A matching directory takes everything below it along (the walk
//! decides that, not the matcher). This module also owns the canonical form
//! of snapshot paths ([`join`], [`normalize`]); it knows nothing of trees or
//! repositories.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::{Error, Result};

/// Glob patterns over absolute paths (snapshot paths, or a backup
/// source's filesystem paths).
///
/// A pattern containing `/` matches the full path (a leading `/` is
/// implied, a trailing one ignored); any other pattern matches the entry's
/// name. `*` and `?` never match `/`; `**` spans directories. A plain path
/// such as `/home/ann` is simply a pattern without wildcards. The pattern
/// `/` matches every path.
#[derive(Debug, Clone)]
pub struct PathMatcher {
    full: GlobSet,
    name: GlobSet,
    /// Patterns that are not UTF-8, matched byte for byte (full paths in
    /// canonical form, and names).
    literal_full: Vec<Vec<u8>>,
    literal_name: Vec<Vec<u8>>,
    all: bool,
    empty: bool,
}

impl PathMatcher {
    /// Builds the matcher. A pattern that is not valid UTF-8 (a file name
    /// in another encoding, given as raw bytes on the command line) cannot
    /// be a glob: it matches exactly those bytes, as a full path if it
    /// contains `/` and as a name otherwise.
    pub fn new<S: AsRef<OsStr>>(patterns: &[S]) -> Result<Self> {
        let mut full = GlobSetBuilder::new();
        let mut name = GlobSetBuilder::new();
        let mut literal_full = Vec::new();
        let mut literal_name = Vec::new();
        let mut all = false;
        for p in patterns {
            let p = p.as_ref();
            let Some(p) = p.to_str() else {
                let bytes = p.as_bytes();
                if bytes.contains(&b'/') {
                    literal_full.push(normalize(bytes));
                } else {
                    literal_name.push(bytes.to_vec());
                }
                continue;
            };
            let trimmed = p.trim_end_matches('/');
            if trimmed.is_empty() {
                if p.is_empty() {
                    return Err(Error::BadInput("empty path pattern".into()));
                }
                all = true;
                continue;
            }
            let glob = |text: &str| {
                GlobBuilder::new(text)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| Error::BadInput(format!("invalid pattern {p:?}: {e}")))
            };
            if trimmed.contains('/') {
                let text = if trimmed.starts_with('/') {
                    trimmed.to_string()
                } else {
                    format!("/{trimmed}")
                };
                full.add(glob(&text)?);
            } else {
                name.add(glob(trimmed)?);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| Error::BadInput(format!("invalid patterns: {e}")))
        };
        Ok(PathMatcher {
            full: build(full)?,
            name: build(name)?,
            literal_full,
            literal_name,
            all,
            empty: patterns.is_empty(),
        })
    }

    /// `text` as a pattern that matches exactly `text` (its wildcard
    /// characters escaped), for building patterns from real paths.
    pub fn escape(text: &str) -> String {
        globset::escape(text)
    }

    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// True if some pattern looks at the full path (so results depend on
    /// where a tree sits, not only on its content).
    pub fn uses_full_path(&self) -> bool {
        !self.full.is_empty() || !self.literal_full.is_empty() || self.all
    }

    /// Whether the entry at full snapshot path `path` (`/a/b`) matches.
    pub fn is_match(&self, path: &[u8]) -> bool {
        if self.all {
            return true;
        }
        let base = path.rsplit(|b| *b == b'/').next().unwrap_or(path);
        if self.literal_full.iter().any(|l| l == path)
            || self.literal_name.iter().any(|l| l == base)
        {
            return true;
        }
        if !self.full.is_empty()
            && self
                .full
                .is_match_candidate(&Candidate::new(Path::new(OsStr::from_bytes(path))))
        {
            return true;
        }
        if !self.name.is_empty() {
            return self
                .name
                .is_match_candidate(&Candidate::new(Path::new(OsStr::from_bytes(base))));
        }
        false
    }
}

/// A snapshot path or name as lifeboat shows it, in text and in JSON:
/// lossless and on one line. UTF-8 text is shown as it is, except that a
/// backslash is doubled (`\\`), the control characters newline, tab and
/// carriage return become `\n`, `\t`, `\r`, and every other control
/// character and every byte that is not part of valid UTF-8 becomes `\xNN`
/// (two hex digits; a control character beyond ASCII, `\u{NNNN}`). So a
/// name in another encoding (`caf\xe9`) or with a newline in it can be told
/// apart from every other name and read back (docs/user-guide.md).
pub fn printable(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_ascii_control() => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:04x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// `parent/name` as a snapshot path (the root is the empty path).
pub(crate) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// A user-given snapshot path in canonical form: `/a/b`, or empty for the root.
pub(crate) fn normalize(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in crate::nav::components(path) {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    out
}

/// An absolute filesystem path with `.` removed and `..` resolved lexically
/// (symlinks are not followed: the path names what the user typed).
pub(crate) fn normalize_fs(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str]) -> PathMatcher {
        PathMatcher::new(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn a_pattern_without_slash_matches_names_anywhere() {
        let p = m(&["*.iso"]);
        assert!(p.is_match(b"/a.iso"));
        assert!(p.is_match(b"/home/ann/deep/b.iso"));
        assert!(!p.is_match(b"/home/ann/b.iso.txt"));
    }

    #[test]
    fn a_pattern_with_slash_matches_the_whole_path_and_star_stays_in_one_directory() {
        let p = m(&["/home/*.log"]);
        assert!(p.is_match(b"/home/x.log"));
        assert!(!p.is_match(b"/home/ann/x.log"));
        let p = m(&["/home/**/*.log"]);
        assert!(p.is_match(b"/home/ann/x.log"));
        assert!(p.is_match(b"/home/ann/deep/x.log"));
        // A leading `/` is implied and a trailing one ignored.
        let p = m(&["home/ann/"]);
        assert!(p.is_match(b"/home/ann"));
        assert!(!p.is_match(b"/home/annie"));
    }

    #[test]
    fn escapes_and_the_root_pattern() {
        let p = m(&["/srv/pg\\[1\\]/data"]);
        assert!(p.is_match(b"/srv/pg[1]/data"));
        assert!(!p.is_match(b"/srv/pg1/data"));
        assert!(m(&["/"]).is_match(b"/anything/at/all"));
        assert!(PathMatcher::new(&["".to_string()]).is_err());
    }

    #[test]
    fn names_are_shown_losslessly_on_one_line() {
        assert_eq!(printable(b"/home/ann/notes.txt"), "/home/ann/notes.txt");
        assert_eq!(printable("/h/caf\u{e9}".as_bytes()), "/h/caf\u{e9}");
        assert_eq!(printable(b"/h/caf\xe9"), "/h/caf\\xe9");
        assert_eq!(
            printable(b"a\nb\tc\rd\x1be\x7f"),
            "a\\nb\\tc\\rd\\x1be\\x7f"
        );
        assert_eq!(printable(b"back\\slash"), "back\\\\slash");
        assert_eq!(printable("x\u{85}y".as_bytes()), "x\\u{0085}y");
        // Distinct names stay distinct: a literal `\xe9` is not the byte.
        assert_ne!(printable(b"\\xe9"), printable(b"\xe9"));
    }

    #[test]
    fn patterns_that_are_not_utf8_match_their_bytes() {
        use std::os::unix::ffi::OsStringExt;
        let name = std::ffi::OsString::from_vec(b"caf\xe9".to_vec());
        let p = PathMatcher::new(&[name]).unwrap();
        assert!(p.is_match(b"/home/caf\xe9"));
        assert!(!p.is_match(b"/home/cafe"));
        let full = std::ffi::OsString::from_vec(b"/home/caf\xe9/".to_vec());
        let p = PathMatcher::new(&[full]).unwrap();
        assert!(p.is_match(b"/home/caf\xe9"));
        assert!(!p.is_match(b"/other/caf\xe9"));
        assert!(p.uses_full_path());
    }

    #[test]
    fn paths_in_canonical_form() {
        assert_eq!(normalize(b"//a/./b/"), b"/a/b");
        assert_eq!(join(b"/a", b"b"), b"/a/b");
        assert_eq!(
            normalize_fs(Path::new("/a/../b/./c")),
            PathBuf::from("/b/c")
        );
    }
}

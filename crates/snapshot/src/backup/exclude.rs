//! What a tree backup leaves out: exclude patterns and cache directories.
//!
//! Patterns are the one dialect of [`PathMatcher`] (shared with restore's
//! include/exclude and `find`): one without `/` matches an entry's name
//! anywhere, one starting with `/` the absolute path, and `*` stays within
//! one directory (`**` crosses). A relative pattern with a `/` inside
//! (`node_modules/.cache`, `build/*.o`) matches those trailing components
//! at any depth, as tar's and restic's unanchored excludes do (read as an
//! absolute path it would silently exclude nothing). This module only answers "is this path left
//! out"; the walker decides what a left-out entry means (it is not in the
//! snapshot at all, or, for a cache directory, stored empty, and a left-out
//! directory takes everything below it along).

use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::Result;
use crate::pathmatch::PathMatcher;

/// The tag file that marks a cache directory (<https://bford.info/cachedir/>).
const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// A backup's exclude patterns, compiled.
#[derive(Default)]
pub(crate) struct Excludes(Option<PathMatcher>);

impl Excludes {
    /// Compiles `patterns`; a bad pattern is an error naming it.
    pub(crate) fn build(patterns: &[String]) -> Result<Self> {
        if patterns.is_empty() {
            return Ok(Excludes(None));
        }
        let anchored: Vec<String> = patterns.iter().map(|p| unanchored(p)).collect();
        Ok(Excludes(Some(PathMatcher::new(&anchored)?)))
    }

    /// Whether the entry at the absolute `path` is left out.
    pub(crate) fn matches(&self, path: &Path) -> bool {
        self.0
            .as_ref()
            .is_some_and(|m| m.is_match(path.as_os_str().as_bytes()))
    }
}

/// A relative pattern containing `/` as one matching at any depth; other
/// patterns as they are.
fn unanchored(pattern: &str) -> String {
    let inner = pattern.trim_end_matches('/');
    if inner.contains('/') && !pattern.starts_with('/') {
        format!("/**/{}", pattern.trim_start_matches("./"))
    } else {
        pattern.to_string()
    }
}

/// Whether `path` is a directory tagged as a cache (its `CACHEDIR.TAG`
/// starts with the standard signature).
pub(crate) fn is_cache_dir(path: &Path) -> bool {
    let mut buf = [0u8; CACHEDIR_SIGNATURE.len()];
    File::open(path.join(CACHEDIR_TAG))
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok()
        && buf == CACHEDIR_SIGNATURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_relative_pattern_with_a_slash_excluded_nothing() {
        let ex = Excludes::build(&["sub/cache".into(), "./build/*.o".into()]).unwrap();
        assert!(ex.matches(Path::new("/home/ann/proj/sub/cache")));
        assert!(ex.matches(Path::new("/sub/cache")));
        assert!(ex.matches(Path::new("/home/ann/build/x.o")));
        assert!(!ex.matches(Path::new("/home/ann/proj/sub/cache2")));
        assert!(!ex.matches(Path::new("/home/ann/xsub/cache")));
        assert!(!ex.matches(Path::new("/home/ann/build/sub/x.o")));
    }

    #[test]
    fn names_match_anywhere_and_paths_match_whole() {
        let ex = Excludes::build(&["*.log".into(), "/srv/cache/*".into()]).unwrap();
        assert!(ex.matches(Path::new("/home/a/app.log")));
        assert!(ex.matches(Path::new("/srv/cache/x")));
        // `*` stays within one directory, as in restore and find (the walk
        // never reaches /srv/cache/x/y: /srv/cache/x is left out whole).
        assert!(!ex.matches(Path::new("/srv/cache/x/y")));
        let deep = Excludes::build(&["/srv/**/*.tmp".into()]).unwrap();
        assert!(deep.matches(Path::new("/srv/a/b/c.tmp")));
        // A pattern with `/` is a whole absolute path, its leading `/` implied.
        let rel = Excludes::build(&["home/*/cache".into()]).unwrap();
        assert!(rel.matches(Path::new("/home/ann/cache")));
        assert!(!ex.matches(Path::new("/srv/other/x")));
        assert!(!Excludes::build(&[]).unwrap().matches(Path::new("/a.log")));
        assert!(Excludes::build(&["a[".into()]).is_err());
    }
}

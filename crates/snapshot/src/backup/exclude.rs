//! What a tree backup leaves out: exclude patterns and cache directories.
//!
//! Patterns are `globset` globs as the user gave them: one without `/`
//! matches an entry's name anywhere, one with `/` the absolute path (and
//! here `*` crosses `/`). This module only answers "is this path left
//! out"; the walker decides what a left-out entry means (it is not in the
//! snapshot at all, or, for a cache directory, stored empty). Restore and
//! `find` match their own patterns elsewhere.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::{Error, Result};

/// The tag file that marks a cache directory (<https://bford.info/cachedir/>).
const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// A backup's exclude patterns, compiled.
#[derive(Default)]
pub(crate) struct Excludes(Option<GlobSet>);

impl Excludes {
    /// Compiles `patterns`; a bad pattern is an [`Error::Invalid`] naming it.
    pub(crate) fn build(patterns: &[String]) -> Result<Self> {
        if patterns.is_empty() {
            return Ok(Excludes(None));
        }
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            let g = Glob::new(p)
                .map_err(|e| Error::Invalid(format!("bad exclude pattern {p:?}: {e}")))?;
            b.add(g);
        }
        b.build()
            .map(|set| Excludes(Some(set)))
            .map_err(|e| Error::Invalid(format!("bad exclude patterns: {e}")))
    }

    /// Whether the entry at the absolute `path` is left out: a pattern
    /// matches the whole path or the entry's name.
    pub(crate) fn matches(&self, path: &Path) -> bool {
        let Some(set) = &self.0 else {
            return false;
        };
        set.is_match(path) || path.file_name().is_some_and(|n| set.is_match(n))
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
    fn names_match_anywhere_and_paths_match_whole() {
        let ex = Excludes::build(&["*.log".into(), "/srv/cache/*".into()]).unwrap();
        assert!(ex.matches(Path::new("/home/a/app.log")));
        assert!(ex.matches(Path::new("/srv/cache/x")));
        // `*` crosses `/` in backup excludes (today's dialect).
        assert!(ex.matches(Path::new("/srv/cache/x/y")));
        assert!(!ex.matches(Path::new("/srv/other/x")));
        assert!(!Excludes::build(&[]).unwrap().matches(Path::new("/a.log")));
        assert!(Excludes::build(&["a[".into()]).is_err());
    }
}

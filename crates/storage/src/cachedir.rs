//! Where lifeboat keeps local caches (the S3 probe memo, the repository
//! metadata cache), and how such a directory is marked so backups leave
//! it out.

use std::path::{Path, PathBuf};

/// The cache root from an environment lookup: `LIFEBOAT_CACHE_DIR`, else
/// `lifeboat` in `XDG_CACHE_HOME`, else `~/.cache/lifeboat`; `None` when
/// none of them is set.
pub fn cache_root_from(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    var("LIFEBOAT_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("lifeboat")))
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/lifeboat")))
}

/// [`cache_root_from`] with this process's environment (empty values count
/// as unset).
pub fn cache_root() -> Option<PathBuf> {
    cache_root_from(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// Creates `dir` (and its parents) readable by the owner only, and tags
/// it as a cache the way tar, borg, restic and lifeboat's own
/// `--exclude-caches` recognise (<https://bford.info/cachedir/>), so
/// backups of a home directory leave it out.
pub fn create_cache_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tag = dir.join("CACHEDIR.TAG");
    if tag.exists() {
        return Ok(());
    }
    std::fs::write(
        tag,
        "Signature: 8a477f597d28d172789f06886806bc55\n\
         # This file is a cache directory tag created by lifeboat.\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_prefers_lifeboat_then_xdg_then_home() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            cache_root_from(env(&[("LIFEBOAT_CACHE_DIR", "/c"), ("HOME", "/h")])),
            Some(PathBuf::from("/c"))
        );
        assert_eq!(
            cache_root_from(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/x/lifeboat"))
        );
        assert_eq!(
            cache_root_from(env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/lifeboat"))
        );
        assert_eq!(cache_root_from(env(&[])), None);
    }

    #[test]
    fn cache_dirs_are_private_and_tagged() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_cache_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let tag = std::fs::read_to_string(dir.join("CACHEDIR.TAG")).unwrap();
        assert!(tag.starts_with("Signature: 8a477f597d28d172789f06886806bc55"));
    }
}

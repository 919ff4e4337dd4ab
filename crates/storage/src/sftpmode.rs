//! Private modes for what the SFTP backend creates: every object `0600`,
//! every directory `0700` (the same as the local backend; see
//! docs/security.md, "Files and modes").
//!
//! OpenDAL's SFTP service creates files and directories with no mode, so
//! the server applies its own default (with OpenSSH's `sftp-server`,
//! `0666`/`0777` less the umask sshd runs with: usually `0644`/`0755`,
//! readable by every account on the server). OpenDAL has no way to pass a
//! mode, so this module keeps a second SFTP session of its own (the
//! `openssh-sftp-client` that OpenDAL uses too, driving the system `ssh`
//! with the same endpoint, user, key and host-key policy), opened on the
//! first write, and sets the modes with SETSTAT: a temporary object before
//! it is renamed to its name, so no object is ever at its name with a wider
//! mode, and each directory on the way to it once per handle. A server
//! that refuses SETSTAT leaves the objects at its default mode, with one
//! warning; the server-side remedy (`internal-sftp -u 0077`) is in
//! docs/security.md.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use openssh_sftp_client::Sftp;
use openssh_sftp_client::metadata::Permissions;
use tokio::sync::OnceCell;

use crate::remote::{KnownHosts, SftpOptions};

/// Mode of every object (see the local backend's `OBJECT_MODE`).
const OBJECT_MODE: u16 = 0o600;
/// Mode of every directory.
const DIR_MODE: u16 = 0o700;

/// The modes side of one SFTP storage handle.
pub(crate) struct SftpModes {
    options: SftpOptions,
    /// The session, opened on first use; `None` if it could not be.
    session: OnceCell<Option<Sftp>>,
    /// Directories (relative to the root, `""` for the root) already made
    /// private by this handle.
    dirs: Mutex<HashSet<String>>,
    warned: AtomicBool,
}

impl SftpModes {
    pub(crate) fn new(options: SftpOptions) -> Self {
        SftpModes {
            options,
            session: OnceCell::new(),
            dirs: Mutex::new(HashSet::new()),
            warned: AtomicBool::new(false),
        }
    }

    async fn session(&self) -> Option<&Sftp> {
        self.session
            .get_or_init(|| async {
                match self.connect().await {
                    Ok(sftp) => Some(sftp),
                    Err(e) => {
                        self.warn(&format!("cannot open a session to set modes: {e}"));
                        None
                    }
                }
            })
            .await
            .as_ref()
    }

    async fn connect(&self) -> Result<Sftp, String> {
        let mut session = openssh::SessionBuilder::default();
        if let Some(user) = &self.options.user {
            session.user(user.clone());
        }
        if let Some(key) = &self.options.key_file {
            session.keyfile(key);
        }
        session.known_hosts_check(match self.options.known_hosts {
            KnownHosts::Strict => openssh::KnownHosts::Strict,
            KnownHosts::Add => openssh::KnownHosts::Add,
            KnownHosts::Accept => openssh::KnownHosts::Accept,
        });
        let session = session
            .connect(self.options.endpoint())
            .await
            .map_err(|e| e.to_string())?;
        Sftp::from_session(session, Default::default())
            .await
            .map_err(|e| e.to_string())
    }

    fn warn(&self, message: &str) {
        if !self.warned.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                location = %self.options.display(),
                "{message}; objects keep the SFTP server's default mode \
                 (see docs/security.md: run the server's sftp with `-u 0077`)"
            );
        }
    }

    fn absolute(&self, path: &str) -> PathBuf {
        let root = PathBuf::from(&self.options.root);
        if path.is_empty() {
            root
        } else {
            root.join(path)
        }
    }

    /// Makes the temporary object `tmp` (a path inside the root) `0600`,
    /// and the root and every directory on the way to it `0700` (each
    /// once per handle). Failures are warned about once, not returned: the
    /// objects are encrypted, and a server without SETSTAT still stores
    /// them.
    pub(crate) async fn make_private(&self, tmp: &str) {
        let Some(sftp) = self.session().await else {
            return;
        };
        let mut fs = sftp.fs();
        let file = Permissions::from(OBJECT_MODE);
        if let Err(e) = fs.set_permissions(self.absolute(tmp), file).await {
            self.warn(&format!("cannot set the mode of {tmp}: {e}"));
            return;
        }
        // The root, then each directory of the path, parents first.
        let dirs = std::iter::once("")
            .chain(tmp.match_indices('/').map(|(i, _)| &tmp[..i]))
            .map(str::to_string);
        for dir in dirs {
            if self.dirs.lock().unwrap().contains(&dir) {
                continue;
            }
            match fs
                .set_permissions(self.absolute(&dir), Permissions::from(DIR_MODE))
                .await
            {
                Ok(()) => {
                    self.dirs.lock().unwrap().insert(dir);
                }
                Err(e) => {
                    self.warn(&format!("cannot set the mode of directory {dir:?}: {e}"));
                    return;
                }
            }
        }
    }
}

//! Files holding secrets: written with mode 0600, refused on load when anyone but the
//! owner could read them, bounded in size before they are read, and wiped from memory
//! after use.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Largest secret file accepted; real ones are well under 1 KiB.
pub const MAX_SECRET_FILE_LEN: u64 = 64 * 1024;

/// Why a secret file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Group or others may access the file.
    #[error(
        "{path} is readable by others (mode {mode:o}); a private key must be mode 0600: run `chmod 600 {path}` (and check who may have copied it)"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is larger than any secret file.
    #[error("{path} is {len} bytes, too large to be a Parley secret file")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The file does not hold what a secret file holds.
    #[error("{path} is not a valid Parley secret file: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The file already exists and was not to be replaced.
    #[error("{0} already exists; refusing to overwrite a key")]
    Exists(PathBuf),
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `secret` (hex-encoded, one line) to `path` with mode 0600, atomically, creating
/// the parent directory (0700) if needed. Refuses to replace an existing file unless
/// `replace` is set.
pub fn write_secret(path: &Path, secret: &[u8], replace: bool) -> Result<(), KeyFileError> {
    if !replace && path.exists() {
        return Err(KeyFileError::Exists(path.to_path_buf()));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io(parent))?;
    }
    let partial = path.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let mut text = Zeroizing::new(crate::cert::to_hex(secret));
    text.push('\n');
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io(&partial))?;
    file.write_all(text.as_bytes()).map_err(io(&partial))?;
    file.sync_all().map_err(io(&partial))?;
    std::fs::rename(&partial, path).map_err(io(path))?;
    Ok(())
}

/// Reads a secret written by [`write_secret`], refusing a file that group or others may
/// read or write.
pub fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let meta = file.metadata().map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.size() > MAX_SECRET_FILE_LEN {
        return Err(KeyFileError::TooLarge {
            path: path.to_path_buf(),
            len: meta.size(),
        });
    }
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_SECRET_FILE_LEN)
        .read_to_string(&mut text)
        .map_err(|_| KeyFileError::Malformed {
            path: path.to_path_buf(),
            reason: "not text",
        })?;
    crate::cert::from_hex(text.trim())
        .map(Zeroizing::new)
        .ok_or(KeyFileError::Malformed {
            path: path.to_path_buf(),
            reason: "not hex",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_are_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/node.key");
        write_secret(&path, &[1, 2, 3], false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(read_secret(&path).unwrap().as_slice(), [1, 2, 3]);
        assert!(matches!(
            write_secret(&path, &[9], false),
            Err(KeyFileError::Exists(_))
        ));
        write_secret(&path, &[9], true).unwrap();
        assert_eq!(read_secret(&path).unwrap().as_slice(), [9]);
    }

    #[test]
    fn group_or_world_access_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        write_secret(&path, &[1], false).unwrap();
        for mode in [0o640, 0o604, 0o644, 0o660, 0o666] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_secret(&path).unwrap_err();
            assert!(
                matches!(err, KeyFileError::InsecurePermissions { .. }),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(
            read_secret(&path).is_ok(),
            "0400 is stricter than 0600 and fine"
        );
    }

    #[test]
    fn oversized_and_garbled_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.key");
        std::fs::write(&big, vec![b'a'; (MAX_SECRET_FILE_LEN + 2) as usize]).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            read_secret(&big),
            Err(KeyFileError::TooLarge { .. })
        ));
        let garbled = dir.path().join("garbled.key");
        std::fs::write(&garbled, "not hex at all\n").unwrap();
        std::fs::set_permissions(&garbled, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            read_secret(&garbled),
            Err(KeyFileError::Malformed { .. })
        ));
    }
}

//! Reading a file an administrator names (the configuration, a table, a
//! key) so that nothing the path points to can stall or exhaust the daemon:
//! opened without blocking (a FIFO with no writer would block `open`
//! itself), refused unless it is a regular file, and read only up to a cap
//! (`/dev/zero` never ends).

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a file could not be opened for reading.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The operating system's error, such as a missing file or no permission.
    #[error(transparent)]
    Io(std::io::Error),
    /// What it is instead of a regular file: "a FIFO", "a directory", ...
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
}

/// Why a whole file could not be read by [`read_regular`].
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// It could not be opened, or is not a regular file.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Larger than the cap, before or while reading it.
    #[error("it is larger than {max} bytes")]
    TooLarge {
        /// The cap, in bytes.
        max: u64,
    },
    /// Reading failed after the file was opened.
    #[error(transparent)]
    Read(std::io::Error),
}

/// What a file is, for an error, when it is not a regular file.
pub(crate) fn not_regular(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("something other than a file")
    }
}

/// Open a regular file for reading without blocking, with its metadata
/// (of the file opened, not of whatever the path names a moment later).
pub(crate) fn open_regular(path: &Path) -> Result<(File, Metadata), OpenError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(OpenError::Io)?;
    let meta = file.metadata().map_err(OpenError::Io)?;
    match not_regular(&meta) {
        Some(kind) => Err(OpenError::NotRegular(kind)),
        None => Ok((file, meta)),
    }
}

/// A whole regular file of at most `max` bytes, or why not.
pub(crate) fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    let (file, meta) = open_regular(path)?;
    if meta.len() > max {
        return Err(ReadError::TooLarge { max });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    (&file)
        .take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Read)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge { max });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "0123456789").unwrap();
        assert_eq!(read_regular(&file, 10).unwrap(), b"0123456789");
        assert_eq!(
            read_regular(&file, 9).unwrap_err().to_string(),
            "it is larger than 9 bytes"
        );
        assert_eq!(
            read_regular(dir.path(), 10).unwrap_err().to_string(),
            "it is a directory, not a regular file"
        );
        assert_eq!(
            read_regular(Path::new("/dev/zero"), 10)
                .unwrap_err()
                .to_string(),
            "it is a character device, not a regular file"
        );
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(
            read_regular(&fifo, 10).unwrap_err().to_string(),
            "it is a FIFO, not a regular file"
        );
    }
}

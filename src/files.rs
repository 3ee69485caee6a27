//! Reading the small files tenantd is pointed at — secrets, certificates,
//! keys — without trusting them to be small or even files: a FIFO would
//! block the start for ever, `/dev/zero` or a huge file would eat memory.

use std::io::Read as _;
use std::path::Path;

use anyhow::{Context as _, bail};

/// What a secret file (a password, a key) may hold.
pub const SECRET_LIMIT: u64 = 64 * 1024;
/// What a PEM file of certificates or a key may hold.
pub const PEM_LIMIT: u64 = 1024 * 1024;

/// The whole of `path`, a regular file of at most `limit` bytes; errors
/// name `what` and the path.
pub fn read_bounded(path: &Path, what: &str, limit: u64) -> anyhow::Result<Vec<u8>> {
    let context = || format!("read the {what} from {}", path.display());
    // Looked at before it is opened: opening a FIFO blocks until someone
    // writes to it.
    let meta = std::fs::metadata(path).with_context(context)?;
    if !meta.is_file() {
        bail!("{} ({what}) is not a regular file", path.display());
    }
    let file = std::fs::File::open(path).with_context(context)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(context)?;
    if bytes.len() as u64 > limit {
        bail!("{} ({what}) is larger than {limit} bytes", path.display());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_directories_and_large_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = read_bounded(&fifo, "x", 10).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        for path in ["/dev/zero", "/tmp"] {
            let err = read_bounded(Path::new(path), "x", 10).unwrap_err();
            assert!(format!("{err:#}").contains(path), "{err:#}");
        }
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 11]).unwrap();
        let err = read_bounded(&big, "x", 10).unwrap_err().to_string();
        assert!(err.contains("larger than 10 bytes"), "{err}");
        std::fs::write(&big, vec![b'a'; 10]).unwrap();
        assert_eq!(read_bounded(&big, "x", 10).unwrap().len(), 10);
    }
}

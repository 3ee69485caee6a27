//! Passwords and tokens for the identity commands, read from standard input
//! (`--password-stdin`, `--token-stdin`) or a file (`--password-file`,
//! `--token-file`); never taken as an argument, which `ps` would show to
//! every user of the machine. Exactly one source is required, so a command
//! never sits waiting for input nobody announced.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use clap::Args;

use crate::error::CliError;

/// Longest secret read; anything longer is a wrong file, not a password.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Where a password comes from.
#[derive(Debug, Args)]
#[group(id = "password_source", required = true, multiple = false)]
pub struct PasswordArgs {
    /// Read the password from standard input, e.g. `printf %s "$PW" | tenantctl …`
    /// (one trailing newline is dropped).
    #[arg(long)]
    password_stdin: bool,
    /// Read the password from this file (one trailing newline is dropped).
    #[arg(long, value_name = "PATH")]
    password_file: Option<PathBuf>,
}

impl PasswordArgs {
    pub fn read(&self) -> Result<String, CliError> {
        match &self.password_file {
            Some(path) => from_file(path, "password"),
            None => from_stdin("--password-stdin", "password"),
        }
    }
}

/// Where an access or refresh token comes from.
#[derive(Debug, Args)]
#[group(id = "token_source", required = true, multiple = false)]
pub struct TokenArgs {
    /// Read the token from standard input, e.g. `echo "$TOKEN" | tenantctl …`
    /// (one trailing newline is dropped).
    #[arg(long)]
    token_stdin: bool,
    /// Read the token from this file (one trailing newline is dropped).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
}

impl TokenArgs {
    pub fn read(&self) -> Result<String, CliError> {
        match &self.token_file {
            Some(path) => from_file(path, "token"),
            None => from_stdin("--token-stdin", "token"),
        }
    }
}

/// The secret in the file at `path` (also `--current-password-file`).
pub fn from_file(path: &Path, what: &str) -> Result<String, CliError> {
    let origin = path.display().to_string();
    let text = std::fs::File::open(path).and_then(read_bounded);
    one_line(text, what, &origin)
}

/// The secret piped into standard input; a terminal is refused, since what
/// is typed there would be echoed.
fn from_stdin(flag: &str, what: &str) -> Result<String, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(CliError::Usage(format!(
            "{flag} reads the {what} from a pipe, but standard input is a terminal \
             (where it would be echoed); pipe it in or use --{what}-file"
        )));
    }
    one_line(read_bounded(stdin.lock()), what, "standard input")
}

/// Everything `source` holds, as text of at most [`MAX_SECRET_BYTES`].
fn read_bounded(source: impl Read) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    source.take(MAX_SECRET_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("more than {} KiB", MAX_SECRET_BYTES / 1024),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// The secret read from `origin` without one trailing line ending; a read
/// that failed or found nothing is refused, naming `origin`.
fn one_line(text: std::io::Result<String>, what: &str, origin: &str) -> Result<String, CliError> {
    let text =
        text.map_err(|e| CliError::Usage(format!("cannot read the {what} from {origin}: {e}")))?;
    let secret = text
        .strip_suffix('\n')
        .map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
    if secret.is_empty() {
        return Err(CliError::Usage(format!("no {what} in {origin}")));
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_line_ending_is_dropped_and_nothing_else() {
        let ok = |t: &str| one_line(Ok(t.to_owned()), "password", "test");
        assert_eq!(ok("s3cret pass \n").unwrap(), "s3cret pass ");
        assert_eq!(ok("s3cret\r\n").unwrap(), "s3cret");
        assert_eq!(ok(" s3cret\n\n").unwrap(), " s3cret\n");
        assert!(ok("\n").is_err());
        assert!(ok("").is_err());
    }

    #[test]
    fn oversized_or_binary_input_is_refused() {
        let big = vec![b'a'; MAX_SECRET_BYTES as usize + 1];
        assert!(read_bounded(&big[..]).is_err());
        assert!(read_bounded(&[0xff, 0xfe][..]).is_err());
        assert_eq!(read_bounded(&b"pw"[..]).unwrap(), "pw");
    }
}

//! `api.addr` and `api.token` in the node's data directory: how a running node tells local
//! clients where it listens and what to show at the door.
//!
//! The node writes the token first, then the address, each to a temporary file renamed into
//! place, so a client that finds `api.addr` always finds a complete token beside it. The token
//! file has mode 0600: only the node's user may call the API.

use std::{fs, io, io::Write, net::SocketAddr, path::Path};

use crate::Token;

/// Name of the file holding the API's address (`127.0.0.1:PORT` and a newline).
pub const ADDR_FILE: &str = "api.addr";
/// Name of the file holding the bearer token (64 lowercase hex digits and a newline).
pub const TOKEN_FILE: &str = "api.token";

/// Writes `api.token` (mode 0600), then `api.addr`, each atomically (temporary file + rename).
/// Call it once the listener is bound, with the address it actually got.
pub fn write_files(data_dir: &Path, addr: SocketAddr, token: &Token) -> io::Result<()> {
    write_atomic(data_dir, TOKEN_FILE, format!("{}\n", token.as_str()).as_bytes(), true)?;
    write_atomic(data_dir, ADDR_FILE, format!("{addr}\n").as_bytes(), false)
}

/// Removes `api.addr`, then `api.token` (the reverse order); files already gone are fine.
/// Call it on a clean shutdown, after the server stopped.
pub fn remove_files(data_dir: &Path) -> io::Result<()> {
    for name in [ADDR_FILE, TOKEN_FILE] {
        match fs::remove_file(data_dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn write_atomic(dir: &Path, name: &str, contents: &[u8], secret: bool) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = write_then_rename(&tmp, &dir.join(name), contents, secret);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_then_rename(tmp: &Path, path: &Path, contents: &[u8], secret: bool) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(tmp)?;
    // `mode` applies only to a file it creates: a leftover temporary file keeps its own.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let token = Token::generate().unwrap();
        let addr: SocketAddr = "127.0.0.1:4567".parse().unwrap();
        write_files(dir.path(), addr, &token).unwrap();
        // Written twice: the second run of a node replaces the files of the first.
        write_files(dir.path(), addr, &token).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join(ADDR_FILE)).unwrap(), "127.0.0.1:4567\n");
        assert_eq!(
            fs::read_to_string(dir.path().join(TOKEN_FILE)).unwrap(),
            format!("{}\n", token.as_str())
        );
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [ADDR_FILE, TOKEN_FILE], "no temporary file left behind");
        remove_files(dir.path()).unwrap();
        remove_files(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn token_is_private_even_over_a_leftover_temporary_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let leftover = dir.path().join(format!(".{TOKEN_FILE}.tmp"));
        fs::write(&leftover, "old").unwrap();
        fs::set_permissions(&leftover, fs::Permissions::from_mode(0o644)).unwrap();
        write_files(dir.path(), "127.0.0.1:1".parse().unwrap(), &Token::generate().unwrap())
            .unwrap();
        let mode = fs::metadata(dir.path().join(TOKEN_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

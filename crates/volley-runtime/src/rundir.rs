//! This user's runtime directory and the runtime_env packages kept in it; the same rules as
//! `python/volley/_runtime_dir.py` (the node writes the packages, its Python workers read them).
//!
//! A shared place like `/tmp` lets any local user create a predictable name first, so a directory
//! is used only when it is a real directory (not a symlink) owned by this user with no group or
//! other access; it is created with mode 0700 if missing and refused otherwise. Files are written
//! under a fresh name (`O_CREAT|O_EXCL|O_NOFOLLOW`, 0600) and renamed into place.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// What is wrong with a directory's `symlink_metadata` (None: a real directory only we can use).
pub(crate) fn not_private(md: &fs::Metadata) -> Option<String> {
    let ft = md.file_type();
    if ft.is_symlink() {
        return Some("is a symlink".into());
    }
    if !ft.is_dir() {
        return Some("is not a directory".into());
    }
    if md.uid() != uid() {
        return Some(format!("is owned by uid {}, not by this user (uid {})", md.uid(), uid()));
    }
    if md.mode() & 0o077 != 0 {
        return Some(format!(
            "has mode {:o} (group or others may use it; need 700)",
            md.mode() & 0o7777
        ));
    }
    None
}

/// `$VOLLEY_SESSION_DIR`, else `$XDG_RUNTIME_DIR/volley` when that is a private directory of
/// this user, else `/tmp/volley-<uid>` (not created nor checked: see [`ensure_private_dir`]).
pub fn runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VOLLEY_SESSION_DIR").filter(|d| !d.is_empty()) {
        return d.into();
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if x.is_absolute() && fs::symlink_metadata(&x).is_ok_and(|m| not_private(&m).is_none()) {
            return x.join("volley");
        }
    }
    PathBuf::from(format!("/tmp/volley-{}", uid()))
}

/// Where runtime-environment packages are kept on this machine: `VOLLEY_PACKAGES_DIR` (which
/// workers inherit), else `<runtime dir>/packages`.
pub fn packages_dir() -> PathBuf {
    match std::env::var_os("VOLLEY_PACKAGES_DIR") {
        Some(d) if !d.is_empty() => d.into(),
        _ => runtime_dir().join("packages"),
    }
}

/// Creates `dir` with mode 0700 (exclusively), or checks that the existing one is private to
/// this user; an unsafe one is refused with an error that says what to do. Missing parents are
/// created too; only `dir` itself is checked.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if let Some(why) = not_private(&fs::symlink_metadata(dir)?) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing to use {}: it {why}. Someone else may have created it to take over \
                 this user's volley files; remove it (or set VOLLEY_SESSION_DIR to a private \
                 directory)",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Whether `bytes` are the package named `hash` (the leading hex digits of their SHA-256, as
/// `_runtime_env.build` names them): a peer cannot hand over other code under a known name.
pub fn package_matches(hash: &str, bytes: &[u8]) -> bool {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hash.len() >= 32 && hex.starts_with(hash)
}

/// Writes `<packages dir>/<hash>.zip` unless it is there: in the checked private directory,
/// under a fresh exclusive name, then renamed (a worker never sees half a file).
pub(crate) fn write_package(hash: &str, bytes: &[u8]) -> io::Result<()> {
    let dir = packages_dir();
    if !matches!(std::env::var_os("VOLLEY_PACKAGES_DIR"), Some(d) if !d.is_empty()) {
        ensure_private_dir(&runtime_dir())?;
    }
    ensure_private_dir(&dir)?;
    let path = dir.join(format!("{hash}.zip"));
    if fs::symlink_metadata(&path).is_ok() {
        return Ok(());
    }
    write_new(&dir, &format!("{hash}.zip"), bytes)
}

/// Writes `bytes` to `dir/name` through a fresh exclusive name (`O_CREAT|O_EXCL|O_NOFOLLOW`,
/// 0600) renamed into place, so a reader never sees half a file and nothing planted under
/// the final name is written through (a rename replaces a link, never follows it). `dir` must
/// be a checked private directory.
pub(crate) fn write_new(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let path = dir.join(name);
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| io::Error::other(e.to_string()))?;
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(".{name}.{}.{nonce}.tmp", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// `dir` opened as a directory (never through a link) after checking that it is this user's
/// and private; with `create`, made 0700 first if missing, with the directory above it (in a
/// shared /tmp someone else could have made that one first, then swap what is inside).
pub(crate) fn open_private_dir(dir: &Path, create: bool) -> io::Result<fs::File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    if create {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            ensure_private_dir(parent)?;
        }
        ensure_private_dir(dir)?;
    }
    let cdir = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; the descriptor is owned by the File below.
    let fd = unsafe {
        libc::open(
            cdir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let d = unsafe { fs::File::from_raw_fd(fd) };
    if let Some(why) = not_private(&d.metadata()?) {
        return Err(io::Error::other(format!("{} {why}", dir.display())));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_is_named_by_its_hash() {
        let zip = b"PK not really a zip";
        let hex: String = Sha256::digest(zip).iter().map(|b| format!("{b:02x}")).collect();
        assert!(package_matches(&hex[..32], zip));
        assert!(!package_matches(&hex[..32], b"other code"));
        assert!(!package_matches(&hex[..8], zip), "a short prefix is too easy to match");
    }

    #[test]
    fn an_open_directory_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("volley-rundir-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let dir = base.join("private");
        ensure_private_dir(&dir).expect("created");
        assert_eq!(fs::metadata(&dir).expect("stat").mode() & 0o777, 0o700);
        ensure_private_dir(&dir).expect("ours, reused");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = ensure_private_dir(&dir).expect_err("mode 777 refused");
        assert!(err.to_string().contains("has mode 777"), "{err}");
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        let err = ensure_private_dir(&link).expect_err("symlink refused");
        assert!(err.to_string().contains("is a symlink"), "{err}");
        let _ = fs::remove_dir_all(&base);
    }
}

//! The cached template cluster: `initdb` runs once per machine (per PostgreSQL binary directory
//! and per user mode) and every [`crate::PgServer`] starts from a copy of it.
//!
//! Concurrency: an exclusive lock on `<template>/lock` (a `flock`, which also excludes other
//! threads of the same process because each opens its own file description) guards the check and
//! the build. A `ready` marker is written last, so a half-made template (a crashed or killed
//! `initdb`) is detected and rebuilt.

use std::ffi::OsStr;
use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::FixtureError;
use crate::cmd::{self, give_to_pg_user, make_dir, pg_command, running_as_root};

/// Bump when the template's contents change (initdb flags), to stop reusing old ones.
const VERSION: &str = "v1";

/// How long to wait for another process that is building the template.
const LOCK_TIMEOUT: Duration = Duration::from_secs(180);

/// How long `initdb` may take.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);

/// Copies the template data directory to `dest` (which must not exist), building the template
/// first if needed. Ownership and modes are preserved (`cp -a`).
pub(crate) fn copy_template_to(dest: &Path) -> Result<(), FixtureError> {
    let data = ensure_template()?;
    cmd::tool("cp", [OsStr::new("-a"), data.as_os_str(), dest.as_os_str()]).map(drop)
}

/// The template's base directory, unique per binary dir and per root/non-root mode.
fn template_base() -> PathBuf {
    let bin = crate::pg_bin_dir();
    let mode = if running_as_root() { "root" } else { "user" };
    let name = format!(
        "switchyard-pg-template-{VERSION}-{mode}-{:016x}",
        fnv1a(bin.as_os_str().as_encoded_bytes())
    );
    cmd::scratch_root().join(name)
}

/// Returns the template's data directory, building it under the lock if it is missing.
fn ensure_template() -> Result<PathBuf, FixtureError> {
    let base = template_base();
    let data = base.join("data");
    let ready = base.join("ready");
    if ready.exists() {
        return Ok(data);
    }
    make_dir(&base, 0o755)?;
    let lock_path = base.join("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| FixtureError::io("open lock file", &lock_path, e))?;
    lock_with_deadline(&lock, &lock_path)?;
    if !ready.exists() {
        build(&data)?;
        fs::write(&ready, b"ok\n").map_err(|e| FixtureError::io("write", &ready, e))?;
    }
    Ok(data)
}

/// Takes an exclusive lock on `file`, polling until [`LOCK_TIMEOUT`].
fn lock_with_deadline(file: &File, path: &Path) -> Result<(), FixtureError> {
    let deadline = Instant::now() + LOCK_TIMEOUT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::Error(e)) => return Err(FixtureError::io("lock", path, e)),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(50));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(FixtureError::WaitTimeout {
                    what: "the template lock (another process is running initdb)",
                    timeout: LOCK_TIMEOUT,
                    last: path.display().to_string(),
                });
            }
        }
    }
}

/// Runs `initdb` into a fresh `data`, removing leftovers of an earlier failed attempt.
fn build(data: &Path) -> Result<(), FixtureError> {
    if data.exists() {
        fs::remove_dir_all(data).map_err(|e| FixtureError::io("remove", data, e))?;
    }
    make_dir(data, 0o700)?;
    give_to_pg_user(data)?;
    let mut initdb = pg_command("initdb");
    initdb
        .arg("-D")
        .arg(data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync"])
        .args(["-E", "UTF8", "--locale=C"]);
    cmd::run(initdb, INITDB_TIMEOUT).map(drop)
}

/// 64-bit FNV-1a: a stable hash for directory names (std's hasher may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

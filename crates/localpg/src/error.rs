//! The fixture's error type: every variant says which command or wait failed and carries the
//! evidence (exit status, stderr, server log tail) needed to debug a failing test.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a fixture operation failed.
///
/// `Debug` prints the same text as `Display`, so `unwrap()` in a test shows readable multi-line
/// output (stderr, log tails) instead of an escaped struct dump.
#[derive(thiserror::Error)]
pub enum FixtureError {
    /// A program could not be started at all (missing binary, bad permissions).
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line (passwords and SQL left out).
        command: String,
        /// The OS error.
        source: io::Error,
    },
    /// A program ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Command {
        /// The command line (passwords and SQL left out).
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its stderr (or stdout, if stderr was empty), trimmed.
        stderr: String,
    },
    /// A program did not finish before its deadline and was killed.
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    CommandTimeout {
        /// The command line (passwords and SQL left out).
        command: String,
        /// The deadline it missed.
        timeout: Duration,
    },
    /// A file-system operation failed.
    #[error("could not {action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "write".
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The server did not start; includes the end of its log.
    #[error(
        "PostgreSQL in {data_dir} did not start on port {port}: {cause}\n\
         --- last lines of {log} ---\n{log_tail}"
    )]
    Start {
        /// The cluster's data directory.
        data_dir: PathBuf,
        /// The port it tried to listen on.
        port: u16,
        /// The server log file.
        log: PathBuf,
        /// The last lines of the server log.
        log_tail: String,
        /// What `pg_ctl` reported.
        cause: Box<FixtureError>,
    },
    /// A bounded wait (for a lock, a state, a process exit) ran out of time.
    #[error("timed out after {timeout:?} waiting for {what} (last seen: {last})")]
    WaitTimeout {
        /// What was awaited.
        what: &'static str,
        /// How long the fixture waited.
        timeout: Duration,
        /// The last observation (an error or value), for debugging.
        last: String,
    },
    /// The operation needs a running postmaster, and there is none.
    #[error("PostgreSQL in {data_dir} is not running ({detail})")]
    NotRunning {
        /// The cluster's data directory.
        data_dir: PathBuf,
        /// Why the fixture thinks so.
        detail: String,
    },
    /// A persistent server's port is taken by another process.
    #[error("cannot start PostgreSQL in {data_dir}: 127.0.0.1:{port} is already in use")]
    PortInUse {
        /// The cluster's data directory.
        data_dir: PathBuf,
        /// The port.
        port: u16,
    },
    /// When run as root, the `postgres` user (which runs PostgreSQL) cannot write there.
    #[error(
        "the `postgres` user cannot write to {path} (PostgreSQL refuses root, so it runs as \
         `postgres`): use a directory it can reach, e.g. under /var/tmp"
    )]
    Unreachable {
        /// The directory.
        path: PathBuf,
    },
    /// etcd or a Patroni cluster did not come up (or did not do what was awaited); includes the
    /// end of their logs.
    #[error("{what}: {cause}\n{logs}")]
    Manager {
        /// What failed, e.g. "Patroni cluster \"drill\" did not start".
        what: String,
        /// The underlying failure (a timeout, an exited process, ...).
        cause: Box<FixtureError>,
        /// The last lines of the logs concerned, each headed by its file name.
        logs: String,
    },
    /// Options that cannot work, e.g. a Patroni `ttl` shorter than `loop_wait + 2 *
    /// retry_timeout`, or a scope already in use.
    #[error("invalid options: {0}")]
    BadOptions(String),
    /// A helper program printed something the fixture could not understand.
    #[error("unexpected output from `{command}`: {output:?}")]
    BadOutput {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
}

impl fmt::Debug for FixtureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FixtureError {
    /// Shorthand for [`FixtureError::Io`].
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        FixtureError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

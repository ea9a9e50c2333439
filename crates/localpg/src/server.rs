//! [`PgServer`]: one real PostgreSQL instance in its own directory (a temp dir, or a kept one:
//! see `persistent.rs`), its configuration, start and stop, and the process faults (kill, freeze,
//! thaw) used by failover tests and drills.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use crate::cmd::{self, give_to_pg_user, make_dir, pg_command};
use crate::{FixtureError, free_port, procs, template};

/// The address every fixture server listens on.
pub(crate) const HOST: &str = "127.0.0.1";

/// Attempts at starting on a fresh port when another process stole ours.
const START_ATTEMPTS: u32 = 3;

/// Deadline for a `pg_ctl` invocation (it has its own `-t 30` inside).
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(60);

/// Deadline for stopping or killing the server's processes.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of the server log quoted in start errors.
const LOG_TAIL_LINES: usize = 30;

/// The fixture's `pg_hba.conf`: trust for the superuser and replication, md5 for everyone else
/// (md5 also accepts SCRAM-stored passwords, and then runs SCRAM).
pub(crate) const PG_HBA: &str = "\
local all all trust
host all postgres 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
host all all 127.0.0.1/32 md5
";

/// [`PG_HBA`] for servers on any loopback address (see [`PgServer::start_at`]).
pub(crate) const PG_HBA_ANY_LOOPBACK: &str = "\
local all all trust
host all postgres 127.0.0.0/8 trust
host replication all 127.0.0.0/8 trust
host all all 127.0.0.0/8 md5
";

/// Options for [`PgServer::start_with`].
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Lines appended to `postgresql.conf` after the fixture's own settings (later lines win),
    /// e.g. `"max_connections = 20"`.
    pub extra_conf: Vec<String>,
    /// Serve TLS with this certificate (`ssl = on`); plain connections stay allowed unless
    /// `tls_only`.
    pub tls: Option<std::sync::Arc<crate::TestCerts>>,
    /// TCP connections must use TLS (`hostssl` in `pg_hba.conf`; the unix socket stays open).
    pub tls_only: bool,
}

/// One running PostgreSQL 15 server, listening on `127.0.0.1`.
///
/// It lives in its own directory (`data/`, `sock/`, `postgres.log`). A test's server
/// ([`PgServer::start`]) has a temp dir on a free port; dropping it thaws it if frozen, stops it
/// with `pg_ctl stop -m immediate` and removes the directory. A persistent server
/// ([`PgServer::start_in`]) lives in a directory the caller chose, on the caller's port; dropping
/// it only stops it (`-m fast`, after a thaw) and keeps its files. Drop never panics.
/// The superuser is `postgres` and needs no password (trust) over TCP and the unix socket.
#[derive(Debug)]
pub struct PgServer {
    pub(crate) home: Home,
    /// The address it listens on: `127.0.0.1` unless started with [`PgServer::start_at`].
    pub(crate) host: std::net::Ipv4Addr,
    pub(crate) port: u16,
    pub(crate) origin: Origin,
    frozen: AtomicBool,
}

/// Where a server's files live.
#[derive(Debug)]
pub(crate) enum Home {
    /// A temp dir, removed when the server is dropped.
    Temp(TempDir),
    /// A directory chosen by the caller, kept when the server is dropped.
    Kept(PathBuf),
}

impl Home {
    fn path(&self) -> &Path {
        match self {
            Home::Temp(dir) => dir.path(),
            Home::Kept(dir) => dir,
        }
    }
}

/// Whether a server's data directory was made for this start or found from an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Made now, in a directory that held no data.
    Created,
    /// Found healthy and started again, with its data.
    Reused,
    /// Found but unusable (half made, or not a standby of this primary), so made again.
    Replaced,
}

/// The settings every server gets, wherever it lives: fast and unsafe on power loss (no fsync),
/// ready for streaming replication, quiet logs.
pub(crate) fn common_conf() -> Vec<String> {
    [
        "fsync = off",
        "full_page_writes = off",
        "synchronous_commit = on",
        "shared_buffers = 32MB",
        "max_connections = 300",
        "wal_level = replica",
        "max_wal_senders = 10",
        "max_replication_slots = 10",
        "hot_standby = on",
        "wal_keep_size = '256MB'",
        "logging_collector = off",
        "log_min_messages = warning",
    ]
    .map(str::to_owned)
    .to_vec()
}

impl PgServer {
    /// Starts a server with default settings (see [`PgServer::start_with`]).
    pub fn start() -> Result<PgServer, FixtureError> {
        PgServer::start_with(PgOptions::default())
    }

    /// Starts a server from a copy of the cached `initdb` template, with the fixture's settings
    /// (no fsync, `wal_level = replica`, `max_connections = 300`, ...) plus `opts.extra_conf`.
    pub fn start_with(opts: PgOptions) -> Result<PgServer, FixtureError> {
        let mut server = PgServer::in_new_dir()?;
        template::copy_template_to(&server.data_dir())?;
        let hba = server.data_dir().join("pg_hba.conf");
        let rules = if opts.tls_only {
            PG_HBA.replace("\nhost ", "\nhostssl ")
        } else {
            PG_HBA.to_owned()
        };
        fs::write(&hba, rules).map_err(|e| FixtureError::io("write", &hba, e))?;
        let mut conf = server.base_conf();
        if let Some(certs) = &opts.tls {
            conf.extend(certs.install(&server.data_dir())?);
        }
        conf.extend(opts.extra_conf);
        server.append_conf(&conf)?;
        server.launch()?;
        Ok(server)
    }

    /// Starts a server listening on `host:port` alone (another loopback address, such as
    /// `127.0.0.2`, so that several servers share one port as they share one behind a DNS
    /// name); the port is the caller's and is not moved on a clash.
    pub fn start_at(
        host: std::net::Ipv4Addr,
        port: u16,
        opts: PgOptions,
    ) -> Result<PgServer, FixtureError> {
        let mut server = PgServer::in_new_dir()?;
        server.host = host;
        server.port = port;
        template::copy_template_to(&server.data_dir())?;
        let hba = server.data_dir().join("pg_hba.conf");
        fs::write(&hba, PG_HBA_ANY_LOOPBACK).map_err(|e| FixtureError::io("write", &hba, e))?;
        let mut conf = server.base_conf();
        if let Some(certs) = &opts.tls {
            conf.extend(certs.install(&server.data_dir())?);
        }
        conf.extend(opts.extra_conf);
        server.append_conf(&conf)?;
        server.pg_ctl_start().map_err(|e| server.start_error(e))?;
        Ok(server)
    }

    /// A not-yet-started server in a fresh temp dir (with `sock/`) owned by the server's user.
    pub(crate) fn in_new_dir() -> Result<PgServer, FixtureError> {
        let root = cmd::scratch_root();
        let dir = tempfile::Builder::new()
            .prefix("switchyard-pg-")
            .tempdir_in(&root)
            .map_err(|e| FixtureError::io("create temp dir in", &root, e))?;
        cmd::set_mode(dir.path(), 0o755)?;
        make_dir(&dir.path().join("sock"), 0o755)?;
        give_to_pg_user(dir.path())?;
        Ok(PgServer::with_home(Home::Temp(dir), free_port()))
    }

    /// A handle on the server whose files are (or will be) in `home`, listening on `port`.
    pub(crate) fn with_home(home: Home, port: u16) -> PgServer {
        PgServer {
            home,
            host: std::net::Ipv4Addr::LOCALHOST,
            port,
            origin: Origin::Created,
            frozen: AtomicBool::new(false),
        }
    }

    /// The fixture's own `postgresql.conf` settings for this server.
    fn base_conf(&self) -> Vec<String> {
        let mut conf = vec![
            "# added by switchyard-localpg".to_owned(),
            format!("listen_addresses = '{}'", self.host),
        ];
        conf.extend(self.location_conf());
        conf.extend(common_conf());
        conf
    }

    /// The settings that differ between a server and its copies: port and socket directory.
    pub(crate) fn location_conf(&self) -> Vec<String> {
        vec![
            format!("port = {}", self.port),
            format!(
                "unix_socket_directories = '{}'",
                self.socket_dir().display()
            ),
        ]
    }

    /// Appends `lines` to `postgresql.conf` (later settings override earlier ones).
    pub(crate) fn append_conf(&self, lines: &[String]) -> Result<(), FixtureError> {
        let path = self.data_dir().join("postgresql.conf");
        let mut text = String::from("\n");
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| FixtureError::io("append to", &path, e))
    }

    /// Starts the server, moving to a fresh port (up to [`START_ATTEMPTS`] times) when the log
    /// says the address is in use.
    pub(crate) fn launch(&mut self) -> Result<(), FixtureError> {
        let mut attempt = 1;
        loop {
            let log_offset = fs::metadata(self.log_path()).map_or(0, |m| m.len());
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(_) if attempt < START_ATTEMPTS && self.port_clash_since(log_offset) => {
                    self.port = free_port();
                    self.append_conf(&[format!("port = {}", self.port)])?;
                    attempt += 1;
                }
                Err(e) => return Err(self.start_error(e)),
            }
        }
    }

    pub(crate) fn pg_ctl_start(&self) -> Result<(), FixtureError> {
        let mut pg_ctl = pg_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "30", "start"]);
        cmd::run(pg_ctl, PG_CTL_TIMEOUT).map(drop)
    }

    /// Whether the log, from byte `offset` on, reports that our port was taken.
    fn port_clash_since(&self, offset: u64) -> bool {
        let log = fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(0).min(log.len());
        String::from_utf8_lossy(&log[start..]).contains("already in use")
    }

    pub(crate) fn start_error(&self, cause: FixtureError) -> FixtureError {
        FixtureError::Start {
            data_dir: self.data_dir(),
            port: self.port,
            log: self.log_path(),
            log_tail: self.log_tail(LOG_TAIL_LINES),
            cause: Box::new(cause),
        }
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: `127.0.0.1` unless started with
    /// [`PgServer::start_at`].
    pub fn host(&self) -> String {
        self.host.to_string()
    }

    /// `"HOST:PORT"`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The directory holding the server's unix socket (`.s.PGSQL.PORT`).
    pub fn socket_dir(&self) -> PathBuf {
        self.home.path().join("sock")
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.home.path().join("data")
    }

    /// The server log file (`pg_ctl -l`).
    pub fn log_path(&self) -> PathBuf {
        self.home.path().join("postgres.log")
    }

    /// The last `lines` lines of the server log (empty if there is no log yet).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read(self.log_path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&log);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The postmaster's pid, from line 1 of `data/postmaster.pid`, checked to be a live process
    /// whose working directory is this data directory (so a stale file never names a stranger).
    pub fn postmaster_pid(&self) -> Result<u32, FixtureError> {
        procs::postmaster_of(&self.data_dir())
    }

    /// Whether this server's data was made for this start, or found and reused.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Stops the server whatever state it is in: thaws it (`SIGCONT` to its whole process tree,
    /// in case anyone stopped it), `pg_ctl stop -m fast`, and kills the tree if that fails. Does
    /// nothing if no postmaster runs in its data directory.
    pub fn shutdown(&self) -> Result<(), FixtureError> {
        let Ok(pid) = self.postmaster_pid() else {
            return Ok(());
        };
        procs::thaw_tree(pid)?;
        self.frozen.store(false, Ordering::SeqCst);
        if self.pg_ctl_stop("fast", PG_CTL_TIMEOUT).is_err()
            && let Ok(pid) = self.postmaster_pid()
        {
            procs::kill_tree(pid, SIGNAL_TIMEOUT)?;
        }
        Ok(())
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`), thawing it first if it is frozen.
    pub fn stop(&self) -> Result<(), FixtureError> {
        if self.is_frozen() {
            self.thaw()?;
        }
        self.pg_ctl_stop("fast", PG_CTL_TIMEOUT)
    }

    pub(crate) fn pg_ctl_stop(&self, mode: &str, timeout: Duration) -> Result<(), FixtureError> {
        let mut pg_ctl = pg_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "-t", "30", "stop"]);
        cmd::run(pg_ctl, timeout).map(drop)
    }

    /// Crashes the server: `SIGKILL` to the postmaster and all its descendants, then waits until
    /// they are gone. The data dir is left as a crash would leave it (see
    /// [`PgServer::start_again`]).
    pub fn kill(&self) -> Result<(), FixtureError> {
        let pid = self.postmaster_pid()?;
        procs::kill_tree(pid, SIGNAL_TIMEOUT)?;
        self.frozen.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Freezes the server: `SIGSTOP` to the postmaster and all its descendants, rescanning until
    /// the whole tree is stopped. The kernel still accepts TCP connections and ACKs data, but
    /// nothing answers, as with a hung host. Undo with [`PgServer::thaw`].
    pub fn freeze(&self) -> Result<(), FixtureError> {
        let pid = self.postmaster_pid()?;
        self.frozen.store(true, Ordering::SeqCst);
        procs::freeze_tree(pid, SIGNAL_TIMEOUT)
    }

    /// Thaws a frozen server: `SIGCONT` to the postmaster and all its descendants.
    pub fn thaw(&self) -> Result<(), FixtureError> {
        let pid = self.postmaster_pid()?;
        procs::thaw_tree(pid)?;
        self.frozen.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Whether [`PgServer::freeze`] was called without a matching thaw.
    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    /// Starts the server again on the same data dir and port, after [`PgServer::stop`] or
    /// [`PgServer::kill`] (crash recovery runs after a kill).
    pub fn start_again(&self) -> Result<(), FixtureError> {
        self.remove_stale_lock_files()?;
        self.pg_ctl_start().map_err(|e| self.start_error(e))
    }

    /// Removes `postmaster.pid` and the socket lock files if they name no live postmaster of
    /// ours. After a kill the dead postmaster may linger as a zombie until init reaps it, and
    /// PostgreSQL treats a zombie's pid as a running server and refuses to start.
    pub(crate) fn remove_stale_lock_files(&self) -> Result<(), FixtureError> {
        if self.postmaster_pid().is_ok() {
            return Ok(());
        }
        let sock = self.socket_dir();
        let entries: Vec<PathBuf> = match fs::read_dir(&sock) {
            Ok(entries) => entries.filter_map(|e| Some(e.ok()?.path())).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(FixtureError::io("list", &sock, e)),
        };
        let mut stale: Vec<PathBuf> = entries
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".s.PGSQL."))
            })
            .collect();
        stale.push(self.data_dir().join("postmaster.pid"));
        for path in stale.iter().filter(|p| p.exists()) {
            fs::remove_file(path).map_err(|e| FixtureError::io("remove", path, e))?;
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Home::Kept(_) = self.home {
            let _ = self.shutdown();
            return;
        }
        if self.is_frozen() {
            let _ = self.thaw();
        }
        // Only signal a verified postmaster: a stale pid file may name an unrelated process.
        if self.postmaster_pid().is_ok() {
            let _ = self.pg_ctl_stop("immediate", Duration::from_secs(20));
        }
        if let Ok(pid) = self.postmaster_pid() {
            let _ = procs::kill_tree(pid, SIGNAL_TIMEOUT);
        }
        // The TempDir field removes the directory (ignoring errors) when dropped after this.
    }
}

//! Persistent servers: a [`PgServer`] in a directory the caller chose, on the caller's port, whose
//! data outlives the process (for `switchyard demo`). Starting again reuses the data when it is
//! complete; a standby is made again from its primary when it is not a streaming copy of it.
//!
//! Layout of such a directory: `data/` (the cluster), `sock/` (its unix socket), `postgres.log`,
//! and `ready`, written once `data/` is complete (a directory without it is half made, and is
//! made again). What may change between runs (port, socket dir, `primary_conninfo`, the caller's
//! extra settings) lives in `data/switchyard.conf`, rewritten at every start and included last
//! by `postgresql.conf`; the `primary_conninfo` that `pg_basebackup -R` writes into
//! `postgresql.auto.conf` (which would override it) is removed.
//!
//! A server still running in the directory (left by a process that was killed) is stopped before
//! anything else happens; [`PgServer::stop_leftover`] does just that.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cmd::{self, give_to_pg_user, make_dir, pg_command};
use crate::server::{HOST, Home, Origin, PG_HBA, common_conf};
use crate::{FixtureError, PgOptions, PgServer, template};

/// The per-start settings file, in the data directory.
const LOCAL_CONF: &str = "switchyard.conf";

/// The marker of a complete data directory, next to it.
const READY: &str = "ready";

/// Deadline for `pg_controldata`.
const CONTROLDATA_TIMEOUT: Duration = Duration::from_secs(30);

impl PgServer {
    /// Starts a primary whose files live in `dir` (created if missing), listening on
    /// `127.0.0.1:port`. Data from an earlier run is reused when complete; otherwise the data
    /// directory is made from the cached `initdb` template with the fixture's settings.
    /// `opts.extra_conf` applies to this start (it is rewritten every time). Fails with
    /// [`FixtureError::PortInUse`] if another process holds the port. Dropping the server stops
    /// it and keeps the files.
    pub fn start_in(dir: &Path, port: u16, opts: PgOptions) -> Result<PgServer, FixtureError> {
        let mut server = PgServer::in_kept_dir(dir, port)?;
        if server.is_complete() {
            server.origin = Origin::Reused;
        } else {
            server.origin = server.clear_data()?;
            template::copy_template_to(&server.data_dir())?;
            let hba = server.data_dir().join("pg_hba.conf");
            fs::write(&hba, PG_HBA).map_err(|e| FixtureError::io("write", &hba, e))?;
            server.append_conf(&persistent_conf())?;
            server.mark_ready()?;
        }
        server.write_local_conf(&opts.extra_conf, None)?;
        server.start_kept()?;
        Ok(server)
    }

    /// Starts a streaming standby of this server whose files live in `dir`, listening on
    /// `127.0.0.1:port`, and waits (up to 30 s) until it streams. A standby from an earlier run
    /// is reused if it is a standby of this very cluster (same system identifier) and streams;
    /// otherwise (none, half made, promoted, of another cluster, or unable to catch up) its data
    /// is replaced by a fresh `pg_basebackup`.
    pub fn start_standby_in(&self, dir: &Path, port: u16) -> Result<PgServer, FixtureError> {
        let mut standby = PgServer::in_kept_dir(dir, port)?;
        if standby.is_complete() && standby.is_standby_of(self) {
            standby.origin = Origin::Reused;
            standby.write_local_conf(&[], Some(self))?;
            match standby.start_kept().and_then(|()| standby.wait_streaming()) {
                Ok(()) => return Ok(standby),
                Err(e @ FixtureError::PortInUse { .. }) => return Err(e),
                Err(_) => standby.shutdown()?,
            }
        }
        let origin = standby.clear_data()?;
        self.base_backup(&standby.data_dir())?;
        standby.drop_auto_conninfo()?;
        standby.mark_ready()?;
        standby.write_local_conf(&[], Some(self))?;
        standby.start_kept()?;
        standby.wait_streaming()?;
        standby.origin = origin;
        Ok(standby)
    }

    /// Stops the server left running in `dir` by an earlier process, if there is one (see
    /// [`PgServer::shutdown`]); returns its postmaster's pid. Touches no files.
    pub fn stop_leftover(dir: &Path) -> Result<Option<u32>, FixtureError> {
        let server = PgServer::with_home(Home::Kept(dir.to_owned()), 0);
        let pid = server.postmaster_pid().ok();
        server.shutdown()?;
        Ok(pid)
    }

    /// A handle on the kept directory `dir` (made, with `sock/`, and given to the server's user),
    /// with any server still running there stopped.
    fn in_kept_dir(dir: &Path, port: u16) -> Result<PgServer, FixtureError> {
        make_dir(dir, 0o755)?;
        make_dir(&dir.join("sock"), 0o755)?;
        give_to_pg_user(dir)?;
        if !cmd::pg_user_can_write(dir) {
            return Err(FixtureError::Unreachable {
                path: dir.to_owned(),
            });
        }
        PgServer::stop_leftover(dir)?;
        Ok(PgServer::with_home(Home::Kept(dir.to_owned()), port))
    }

    fn ready_marker(&self) -> PathBuf {
        self.data_dir().with_file_name(READY)
    }

    /// Whether the data directory was completed by an earlier run.
    fn is_complete(&self) -> bool {
        let data = self.data_dir();
        self.ready_marker().exists()
            && data.join("PG_VERSION").exists()
            && data.join("global/pg_control").exists()
    }

    fn mark_ready(&self) -> Result<(), FixtureError> {
        let ready = self.ready_marker();
        fs::write(&ready, b"ok\n").map_err(|e| FixtureError::io("write", &ready, e))
    }

    /// Removes the marker and the data directory; says whether there was data to replace.
    fn clear_data(&self) -> Result<Origin, FixtureError> {
        let ready = self.ready_marker();
        if ready.exists() {
            fs::remove_file(&ready).map_err(|e| FixtureError::io("remove", &ready, e))?;
        }
        let data = self.data_dir();
        if !data.exists() {
            return Ok(Origin::Created);
        }
        fs::remove_dir_all(&data).map_err(|e| FixtureError::io("remove", &data, e))?;
        Ok(Origin::Replaced)
    }

    /// Whether this (stopped) data directory is a standby of `primary`'s cluster.
    fn is_standby_of(&self, primary: &PgServer) -> bool {
        if !self.data_dir().join("standby.signal").exists() {
            return false;
        }
        match (
            system_identifier(&self.data_dir()),
            system_identifier(&primary.data_dir()),
        ) {
            (Ok(mine), Ok(theirs)) => mine == theirs,
            _ => false,
        }
    }

    /// Removes `primary_conninfo` from `postgresql.auto.conf`, where it would override ours.
    fn drop_auto_conninfo(&self) -> Result<(), FixtureError> {
        let path = self.data_dir().join("postgresql.auto.conf");
        let text = fs::read_to_string(&path).map_err(|e| FixtureError::io("read", &path, e))?;
        let kept: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("primary_conninfo"))
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&path, kept).map_err(|e| FixtureError::io("write", &path, e))
    }

    /// Writes `data/switchyard.conf`: port, socket dir, `primary_conninfo` for a standby of
    /// `primary`, then `extra`.
    fn write_local_conf(
        &self,
        extra: &[String],
        primary: Option<&PgServer>,
    ) -> Result<(), FixtureError> {
        let mut lines = vec!["# written by switchyard-localpg at every start".to_owned()];
        lines.extend(self.location_conf());
        if let Some(primary) = primary {
            lines.push(format!(
                "primary_conninfo = 'host={HOST} port={} user=postgres application_name=standby'",
                primary.port()
            ));
        }
        lines.extend(extra.iter().cloned());
        let path = self.data_dir().join(LOCAL_CONF);
        fs::write(&path, lines.join("\n") + "\n")
            .map_err(|e| FixtureError::io("write", &path, e))?;
        give_to_pg_user(&path)
    }

    /// Starts the server on its fixed port, after clearing a crashed run's lock files.
    fn start_kept(&self) -> Result<(), FixtureError> {
        self.remove_stale_lock_files()?;
        if TcpListener::bind((HOST, self.port())).is_err() {
            return Err(FixtureError::PortInUse {
                data_dir: self.data_dir(),
                port: self.port(),
            });
        }
        self.pg_ctl_start().map_err(|e| self.start_error(e))
    }
}

/// `postgresql.conf` settings of a persistent server: the fixture's, then the per-start file.
fn persistent_conf() -> Vec<String> {
    let mut conf = vec![
        "# added by switchyard-localpg".to_owned(),
        format!("listen_addresses = '{HOST}'"),
    ];
    conf.extend(common_conf());
    conf.push(format!("include '{LOCAL_CONF}'"));
    conf
}

/// The "Database system identifier" `pg_controldata` reports for `data_dir`.
fn system_identifier(data_dir: &Path) -> Result<String, FixtureError> {
    let mut controldata: Command = pg_command("pg_controldata");
    controldata.arg("-D").arg(data_dir);
    let label = cmd::describe(&controldata);
    let out = cmd::run(controldata, CONTROLDATA_TIMEOUT)?;
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("Database system identifier:"))
        .map(|id| id.trim().to_owned())
        .ok_or_else(|| FixtureError::BadOutput {
            command: label,
            output: out.stdout.clone(),
        })
}

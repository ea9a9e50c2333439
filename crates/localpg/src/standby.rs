//! Streaming replication: making a hot standby of a fixture server with `pg_basebackup -R`, and
//! promoting it.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd::{self, pg_command};
use crate::{FixtureError, PgServer};

/// Deadline for `pg_basebackup`.
const BASEBACKUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Deadline for a standby to stream, or a promoted one to leave recovery.
const STATE_TIMEOUT: Duration = Duration::from_secs(30);

/// `t` once the server is a standby that is streaming from its primary.
const STREAMING_SQL: &str = "SELECT pg_is_in_recovery() AND \
     (SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming') = 1";

impl PgServer {
    /// Makes a hot standby of this server: `pg_basebackup -R -X stream` into a new temp dir,
    /// moved to its own port and socket dir, started, and awaited (up to 30 s) until it is in
    /// recovery and streaming. It keeps the primary's settings and `pg_hba.conf`.
    /// A streaming standby of this server listening on `host:port` alone (see
    /// [`PgServer::start_at`]).
    pub fn start_standby_at(
        &self,
        host: std::net::Ipv4Addr,
        port: u16,
    ) -> Result<PgServer, FixtureError> {
        let mut standby = PgServer::in_new_dir()?;
        standby.host = host;
        standby.port = port;
        self.base_backup(&standby.data_dir())?;
        let hba = standby.data_dir().join("pg_hba.conf");
        std::fs::write(&hba, crate::server::PG_HBA_ANY_LOOPBACK)
            .map_err(|e| FixtureError::io("write", &hba, e))?;
        let mut conf = standby.location_conf();
        conf.push(format!("listen_addresses = '{host}'"));
        standby.append_conf(&conf)?;
        standby.pg_ctl_start().map_err(|e| standby.start_error(e))?;
        standby.wait_streaming()?;
        Ok(standby)
    }

    pub fn start_standby(&self) -> Result<PgServer, FixtureError> {
        let mut standby = PgServer::in_new_dir()?;
        self.base_backup(&standby.data_dir())?;
        // postgresql.auto.conf (from -R) keeps primary_conninfo; we only move port and socket.
        standby.append_conf(&standby.location_conf())?;
        standby.launch()?;
        standby.wait_streaming()?;
        Ok(standby)
    }

    /// `pg_basebackup -R -X stream` of this server into `data_dir` (which must not exist or be
    /// empty): a standby's data directory, with `standby.signal` and `primary_conninfo`.
    pub(crate) fn base_backup(&self, data_dir: &Path) -> Result<(), FixtureError> {
        let port = self.port().to_string();
        let mut basebackup = pg_command("pg_basebackup");
        basebackup
            .args(["-h", &self.host(), "-p", &port, "-U", "postgres", "-D"])
            .arg(data_dir)
            .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"]);
        cmd::run(basebackup, BASEBACKUP_TIMEOUT).map(drop)
    }

    /// Waits (up to 30 s) until this server is in recovery and streaming from its primary.
    pub(crate) fn wait_streaming(&self) -> Result<(), FixtureError> {
        self.wait_for_sql("the standby to stream from its primary", STREAMING_SQL, "t")
    }

    /// Promotes this standby (`pg_ctl promote -w`) and waits until it leaves recovery.
    pub fn promote(&self) -> Result<(), FixtureError> {
        let mut pg_ctl = pg_command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "30", "promote"]);
        cmd::run(pg_ctl, Duration::from_secs(60))?;
        self.wait_for_sql(
            "the promoted server to leave recovery",
            "SELECT pg_is_in_recovery()",
            "f",
        )
    }

    /// Turns synchronous replication on (`synchronous_standby_names = '*'`, by `ALTER SYSTEM`, so
    /// a standby made earlier does not inherit it and can commit alone once promoted) and waits
    /// (up to 30 s) until a standby is the synchronous one: from then on no acknowledged commit
    /// is lost when this primary dies and the standby is promoted.
    pub fn make_synchronous(&self) -> Result<(), FixtureError> {
        self.psql("ALTER SYSTEM SET synchronous_standby_names = '*'")?;
        self.psql("SELECT pg_reload_conf()")?;
        self.wait_for_sql(
            "a standby to become synchronous",
            "SELECT count(*) > 0 FROM pg_stat_replication WHERE sync_state = 'sync'",
            "t",
        )
    }

    /// Polls `sql` until it prints `want`, for up to [`STATE_TIMEOUT`].
    fn wait_for_sql(&self, what: &'static str, sql: &str, want: &str) -> Result<(), FixtureError> {
        let deadline = Instant::now() + STATE_TIMEOUT;
        loop {
            let last = match self.psql_with_timeout(sql, Duration::from_secs(2)) {
                Ok(out) if out == want => return Ok(()),
                Ok(out) => out,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(FixtureError::WaitTimeout {
                    what,
                    timeout: STATE_TIMEOUT,
                    last,
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

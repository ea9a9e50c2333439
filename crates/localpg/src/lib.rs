//! Local PostgreSQL servers for demo, drill and tests.
//!
//! This crate owns the lifecycle of REAL local PostgreSQL 15 clusters, for `switchyard demo`,
//! `switchyard drill` and the integration tests. A test's [`PgServer`] lives in its
//! own temporary directory (data dir, unix socket dir, log file) and listens on `127.0.0.1` on a
//! free port. It can also make a streaming standby ([`PgServer::start_standby`]), promote it, and
//! inject process faults (stop, crash with `SIGKILL`, freeze with `SIGSTOP`); [`Blackhole`] drops a
//! port's packets on loopback (`iptables`), as when the host is gone.
//!
//! [`PatroniCluster`] runs a real cluster manager instead: two PostgreSQL members managed by
//! Patroni agents over an [`Etcd`], where Patroni itself detects a failed leader and promotes
//! the replica; its members offer the same faults, plus stopping or killing the agent.
//!
//! A persistent server ([`PgServer::start_in`], [`PgServer::start_standby_in`]) lives instead in
//! a directory the caller chose, on the caller's port, and keeps its data across runs: it is
//! reused when complete, and dropping the server only stops it (for `switchyard demo`).
//!
//! Everything is synchronous (`std::process`), so the fixture works from plain `#[test]`s and from
//! inside async tests alike (call it before entering, or from `spawn_blocking`).
//!
//! * `initdb` runs once per machine into a cached template directory guarded by a lock file, so
//!   concurrent test processes (nextest) and threads (`cargo test`) share it safely; each server
//!   copies the template, which takes milliseconds.
//! * PostgreSQL refuses to run as root: when the tests run as root, every server-side command runs
//!   as the `postgres` user through `runuser`, and the temp dirs are owned by that user.
//! * Every wait has a deadline; errors ([`FixtureError`]) name the command, its exit status and its
//!   stderr, or the tail of the server log.
//!
//! ```no_run
//! let pg = switchyard_localpg::PgServer::start()?;
//! assert_eq!(pg.psql("select 1")?, "1");
//! # Ok::<(), switchyard_localpg::FixtureError>(())
//! ```

#![forbid(unsafe_code)]

mod cmd;
mod dns;
mod error;
mod etcd;
mod http;
pub mod net;
mod patroni;
mod persistent;
mod procs;
mod server;
mod sql;
mod standby;
mod template;
mod tls;

use std::net::TcpListener;
use std::path::PathBuf;

pub use dns::{DnsServer, dnsmasq_available};
pub use error::FixtureError;
pub use etcd::Etcd;
pub use net::{Blackhole, iptables_available};
pub use patroni::{PatroniCluster, PatroniMember, PatroniOptions, patroni_available};
pub use server::{Origin, PgOptions, PgServer};
pub use sql::{PasswordKind, quote_ident, quote_literal};
pub use tls::TestCerts;

/// Default directory of the PostgreSQL 15 binaries (Debian's `postgresql-15` package).
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The directory holding `initdb`, `pg_ctl`, `psql`, ...: `$PG_BIN` if set, else
/// [`DEFAULT_PG_BIN`].
pub fn pg_bin_dir() -> PathBuf {
    std::env::var_os("PG_BIN")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_PG_BIN), PathBuf::from)
}

/// Whether PostgreSQL programs run as the `postgres` user (through `runuser`), which they do when
/// this process runs as root: PostgreSQL refuses to run as root.
pub fn runs_as_postgres_user() -> bool {
    cmd::running_as_root()
}

/// Ports handed out by [`free_port`]: below Linux's ephemeral range (32768–60999), which the
/// kernel gives to outgoing connections. A port taken from that range (by binding port 0) can
/// be handed to some client's connection before the server that was meant to listen on it
/// binds it — seen in a soak run: a Patroni member's PostgreSQL never started.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A TCP port on `127.0.0.1` that was free a moment ago, outside the ephemeral range.
///
/// Another process may grab it before you do; [`PgServer::start`] retries with a new port when
/// that happens.
///
/// # Panics
///
/// Panics if no port in the range can be bound (the machine is unusable for tests).
pub fn free_port() -> u16 {
    // A random place to start looking: parallel test processes rarely try the same port.
    let span = u32::from(PORTS.end - PORTS.start);
    let start = rand::random::<u32>();
    for i in 0..span {
        let port = PORTS.start + (start.wrapping_add(i) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {PORTS:?}")
}

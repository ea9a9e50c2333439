//! Shared integration-test harness: a real PostgreSQL (from `switchyard-localpg`) with test users, a
//! Switchyard proxy started in-process in front of it, clients, and deadline helpers.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard::serve::{self, Running};
use switchyard_config::{Config, PoolMode};
use switchyard_localpg::{PasswordKind, PgServer};
use tokio_postgres::{Client, NoTls};

/// Default bound for one step of a test.
pub const STEP: Duration = Duration::from_secs(20);

pub const SCRAM_USER: &str = "scram_user";
pub const SCRAM_PASSWORD: &str = "scram-pw";
pub const MD5_USER: &str = "md5_user";
pub const MD5_PASSWORD: &str = "md5-pw";

/// Awaits `f` at most `limit`, failing the test with `what` if it takes longer.
pub async fn within<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Starts PostgreSQL with the test users (a SCRAM one and an md5 one) and a `app` database.
pub fn start_pg() -> PgServer {
    let pg = PgServer::start().expect("start PostgreSQL");
    pg.create_user(SCRAM_USER, SCRAM_PASSWORD, PasswordKind::Scram)
        .expect("scram user");
    pg.create_user(MD5_USER, MD5_PASSWORD, PasswordKind::Md5)
        .expect("md5 user");
    pg.create_database("app", "postgres").expect("app database");
    pg.psql_db("app", "GRANT ALL ON SCHEMA public TO PUBLIC")
        .expect("grant");
    pg
}

/// A config for Switchyard on a free port in front of `pg`, with trust, SCRAM and md5 users.
pub fn config_for(pg: &PgServer, mode: PoolMode) -> Config {
    let toml = format!(
        r#"
        [proxy]
        listen = "127.0.0.1:0"
        [admin]
        listen = "127.0.0.1:0"
        incidents_file = ""
        [server]
        # The fixture stores md5_user's password as md5: answer md5 for it.
        require_auth = ["scram-sha-256", "md5", "none"]
        [pool]
        mode = "{mode}"
        size = 4
        [clusters.main]
        members = ["{addr}"]
        [[sites]]
        database = "*"
        cluster = "main"
        [[users]]
        name = "postgres"
        auth = "trust"
        [[users]]
        name = "{SCRAM_USER}"
        auth = "scram-sha-256"
        password = "{SCRAM_PASSWORD}"
        [[users]]
        name = "{MD5_USER}"
        auth = "md5"
        password = "{MD5_PASSWORD}"
        "#,
        mode = match mode {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        },
        addr = pg.addr(),
    );
    Config::from_toml(&toml).expect("test config is valid")
}

/// A PostgreSQL and a proxy in front of it.
pub struct Harness {
    pub pg: PgServer,
    pub proxy: Running,
}

impl Harness {
    pub async fn start(mode: PoolMode) -> Self {
        Self::start_with(mode, |_| {}).await
    }

    pub async fn start_with(mode: PoolMode, tweak: impl FnOnce(&mut Config)) -> Self {
        let pg = start_pg();
        let mut config = config_for(&pg, mode);
        tweak(&mut config);
        Self::from_parts(pg, config).await
    }

    /// A proxy on `config` in front of `pg` (started with [`start_pg`]).
    pub async fn from_parts(pg: PgServer, config: Config) -> Self {
        let proxy = within(STEP, "proxy start", serve::start(config))
            .await
            .expect("proxy starts");
        Self { pg, proxy }
    }

    pub fn addr(&self) -> SocketAddr {
        self.proxy.addr
    }

    pub fn port(&self) -> u16 {
        self.proxy.addr.port()
    }

    /// A libpq-style connection string for the proxy.
    pub fn conninfo(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user='{user}' password='{password}' dbname='{db}'",
            self.port()
        )
    }

    /// Connects through the proxy as postgres to `app`.
    pub async fn client(&self) -> Client {
        self.client_as("postgres", "", "app")
            .await
            .expect("connect through the proxy")
    }

    pub async fn client_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        connect(&self.conninfo(user, password, db)).await
    }
}

/// Connects with tokio-postgres and drives the connection in a task.
pub async fn connect(conninfo: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = within(STEP, "connect", tokio_postgres::connect(conninfo, NoTls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connects and keeps the connection task's result, which carries a FATAL the server sends
/// while the client is idle (tokio-postgres ends the connection with it).
pub async fn connect_watched(
    conninfo: &str,
) -> (
    Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, conn) = within(STEP, "connect", tokio_postgres::connect(conninfo, NoTls))
        .await
        .expect("connect through the proxy");
    (client, tokio::spawn(conn))
}

/// The watched connection (see [`connect_watched`]) ends with a FATAL `code` no earlier than
/// `limit` after `since` (the earliest instant the limit's clock can have started) and within
/// `slack` after that; returns the FATAL's message.
pub async fn ends_with_fatal(
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    code: &str,
    since: std::time::Instant,
    limit: Duration,
    slack: Duration,
) -> String {
    let end = within(limit + slack, "the connection to be ended", conn)
        .await
        .expect("connection task");
    let took = since.elapsed();
    let e = end.expect_err("ended by the proxy with an error");
    let db = e.as_db_error().unwrap_or_else(|| panic!("no FATAL: {e:?}"));
    assert_eq!(
        (db.severity(), db.code().code()),
        ("FATAL", code),
        "{}",
        db.message()
    );
    assert!(took >= limit, "ended after {took:?}, before the limit");
    db.message().to_string()
}

/// A protocol 3.0 startup packet for `user` on database `app`, with `settings`, for the tests
/// that speak the protocol as raw bytes.
pub fn startup_packet(user: &str, settings: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", "app")].iter().chain(settings) {
        for s in [k, v] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
    }
    body.push(0);
    let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

/// A simple-protocol Query message, for the tests that speak the protocol as raw bytes.
pub fn query_message(sql: &str) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    m
}

/// The SQLSTATE of a tokio-postgres error, or "" if it has none.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}
pub mod cluster;
pub mod served;

/// Polls (bounded by [`STEP`]) until `want` holds for the number of server connections in use
/// across the proxy's pools.
pub async fn wait_for_servers_in_use(proxy: &Running, what: &str, want: impl Fn(usize) -> bool) {
    within(STEP, what, async {
        loop {
            let pools = proxy.proxy.pools.all();
            if want(pools.iter().map(|(_, p)| p.stats().active).sum()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await; // poll interval
        }
    })
    .await;
}

/// The first column of the first row a simple query returns (bounded by [`STEP`]).
pub async fn first_column(c: &Client, sql: &str) -> String {
    let rows = within(STEP, sql, c.simple_query(sql)).await.expect(sql);
    cluster::first_value(&rows).unwrap_or_else(|| panic!("{sql}: no row"))
}

/// The backend process id of the server connection `c`'s next transaction runs on (a simple
/// query: an extended one would leave tokio-postgres closing its statement afterwards, a
/// transaction of its own).
pub async fn backend_pid(c: &Client) -> i32 {
    let pid = first_column(c, "select pg_backend_pid()").await;
    pid.parse().expect("a pid")
}

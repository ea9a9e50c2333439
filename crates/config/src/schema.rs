//! The configuration schema. Every field is documented in the README's config reference with its
//! default, unit and whether it reloads live; keep the two in step.

use crate::Duration;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub pool: PoolDefaults,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterConfig>,
    #[serde(default)]
    pub sites: Vec<SiteConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub admin: crate::AdminConfig,
}

/// The client-facing listener and limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address to listen on (restart to change).
    pub listen: String,
    /// Most client connections at once; more are refused with 53300.
    pub max_client_conn: usize,
    /// Longest a client may take from connecting to finishing authentication.
    pub login_timeout: Duration,
    /// Most connections one client address may have logging in at once; more are refused
    /// with 53300 (connections that have logged in do not count).
    pub max_pending_logins_per_address: usize,
    /// Largest message body accepted from a client, in bytes; larger ones get FATAL 08P01.
    pub max_message_size: usize,
    /// Longest a client may leave its answers unread (its socket takes no byte) before it is
    /// disconnected; meanwhile it holds a server connection.
    pub client_write_timeout: Duration,
    /// On SIGTERM, how long open transactions may run before connections are closed.
    pub shutdown_timeout: Duration,
    /// Online restart: a unix socket path. A `switchyard serve` that finds another serving
    /// there takes over its listening sockets and its idle clients; then it serves there
    /// itself, for the next. Empty: off.
    pub handover_socket: String,
    /// Threads that run client sessions; 0 means one per core. One (like PgBouncer) is the
    /// fastest where the proxy shares a few cores with PostgreSQL and its clients: no
    /// cross-thread wake-ups.
    pub worker_threads: usize,
    /// A sweep every this long parks the plain-TCP clients with no transaction open that made
    /// no request since the previous sweep: their tasks, socket registrations and attachment
    /// state are freed, and their next bytes wake them. 0: never (restart to change).
    pub park_idle_after: Duration,
    /// Certificate chain (PEM) Switchyard shows clients; empty: no TLS for clients.
    pub tls_cert_file: String,
    /// Its private key (PEM).
    pub tls_key_file: String,
    /// TLS from clients, PgBouncer's `client_tls_sslmode` names: `disable`, `allow`, `prefer`
    /// (TLS when a client asks and a certificate is set), `require` (plain logins refused),
    /// `verify-ca` and `verify-full` (a client certificate from `client_tls_ca_file`; with
    /// `verify-full` its common name must be the user name).
    pub client_tls: ClientTls,
    /// CAs (PEM) client certificates must lead to (`verify-ca`, `verify-full`).
    pub client_tls_ca_file: String,
    /// A `[[users]]` entry (with a server password, or trust) that looks up the password
    /// verifiers of users not in the config with `auth_query`, on the cluster's primary and
    /// the client's database. Empty: only configured users log in.
    pub auth_user: String,
    /// The lookup: `$1` is the user name; the second column of the first row is the stored
    /// verifier (`SCRAM-SHA-256$…` or `md5…`); no row or NULL means no such user.
    pub auth_query: String,
    /// How long a looked-up verifier is reused for further logins without asking the database
    /// (0: ask at every login). An older one still stands in when the lookup fails (no primary
    /// during a failover). A failed login forgets it: a password changed in the database is
    /// refused at most once, then asked for afresh.
    pub auth_cache_ttl: Duration,
}

/// PgBouncer's default `auth_query`.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1";

/// What Switchyard asks of a client's TLS (see [`ProxyConfig::client_tls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTls {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:6432".into(),
            max_client_conn: 10_000,
            login_timeout: Duration::secs(15),
            max_pending_logins_per_address: 100,
            max_message_size: 256 << 20,
            client_write_timeout: Duration::secs(60),
            shutdown_timeout: Duration::secs(30),
            handover_socket: String::new(),
            worker_threads: 1,
            park_idle_after: Duration::secs(1),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            client_tls: ClientTls::Prefer,
            client_tls_ca_file: String::new(),
            auth_user: String::new(),
            auth_query: DEFAULT_AUTH_QUERY.into(),
            auth_cache_ttl: Duration::secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A server connection is a client's for its whole session.
    Session,
    /// A server connection is a client's for one transaction.
    Transaction,
}

/// Pool settings every site inherits unless it overrides them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolDefaults {
    pub mode: PoolMode,
    /// Most server connections per (site, user).
    pub size: usize,
    /// Idle server connections kept open per (site, user), even without traffic.
    pub min_idle: usize,
    /// An idle server connection unused this long is closed (above `min_idle`).
    pub server_idle_timeout: Duration,
    /// A server connection older than this is closed when next released.
    pub server_lifetime: Duration,
    /// Longest a transaction waits for a server connection before 53300.
    pub query_wait_timeout: Duration,
    /// Run on a session-mode server connection before another client gets it.
    pub server_reset_query: String,
    /// A client with no transaction open that sends nothing for this long is disconnected
    /// (FATAL 57P05, as PostgreSQL's idle_session_timeout). Zero: never.
    pub client_idle_timeout: Duration,
    /// A client that leaves its transaction open and sends nothing for this long is
    /// disconnected (FATAL 25P03) and its server connection closed, which rolls the
    /// transaction back: it holds a pool slot and its locks meanwhile. Zero: never.
    pub idle_transaction_timeout: Duration,
    /// A request the server has not answered after this long is cancelled (the client gets
    /// the server's 57014 and keeps its connection). Zero: never, the default: a slow query
    /// on a healthy primary is not cut off.
    pub query_timeout: Duration,
    /// Transaction pooling: most prepared statements kept on one server connection; beyond
    /// it the least recently used is closed there (and prepared again when next needed).
    pub max_prepared_statements: usize,
}

impl Default for PoolDefaults {
    fn default() -> Self {
        Self {
            mode: PoolMode::Transaction,
            size: 20,
            min_idle: 0,
            server_idle_timeout: Duration::secs(600),
            server_lifetime: Duration::secs(3600),
            query_wait_timeout: Duration::secs(120),
            server_reset_query: "DISCARD ALL".into(),
            client_idle_timeout: Duration::secs(0),
            idle_transaction_timeout: Duration::secs(600),
            query_timeout: Duration::secs(0),
            max_prepared_statements: 200,
        }
    }
}

/// How Switchyard's own connections to PostgreSQL behave.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Longest a TCP connect plus startup and authentication may take.
    pub connect_timeout: Duration,
    /// TCP keepalive: idle time before the first probe.
    pub keepalive_idle: Duration,
    /// TCP keepalive: time between probes.
    pub keepalive_interval: Duration,
    /// TCP keepalive: unanswered probes before the kernel drops the connection.
    pub keepalive_count: u32,
    /// TCP_USER_TIMEOUT: longest unacknowledged data may sit before the kernel drops the connection.
    pub tcp_user_timeout: Duration,
    /// The authentication methods Switchyard answers when a server asks (libpq's
    /// `require_auth`): a server that asks for another one, or that skips authentication
    /// when `none` is not listed, is refused. Cleartext and md5 are off unless listed, so a
    /// server (or anyone in its path) cannot downgrade the login to reveal a password.
    pub require_auth: Vec<ServerAuthMethod>,
    /// TLS to servers and probes, libpq's `sslmode` names: `disable`, `prefer` (TLS when the
    /// server offers it, unchecked), `require`, `verify-ca`, `verify-full` (a trusted chain and
    /// the member's configured host name or address in the certificate).
    pub tls: ServerTls,
    /// CA certificates (PEM) that `verify-ca` and `verify-full` trust; empty: the system's.
    pub tls_ca_file: String,
}

/// What Switchyard asks of a server's TLS (see [`ServerConfig::tls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTls {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// An authentication method a server may ask Switchyard for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum ServerAuthMethod {
    /// No authentication (the server trusts the connection).
    #[serde(rename = "none")]
    None,
    /// The password in cleartext.
    #[serde(rename = "password")]
    Password,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::secs(5),
            keepalive_idle: Duration::secs(5),
            keepalive_interval: Duration::secs(1),
            keepalive_count: 3,
            tcp_user_timeout: Duration::secs(10),
            require_auth: vec![ServerAuthMethod::ScramSha256, ServerAuthMethod::None],
            tls: ServerTls::Prefer,
            tls_ca_file: String::new(),
        }
    }
}

/// A PostgreSQL cluster: its members (roles are discovered, never configured).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `host:port` of each member.
    #[serde(default)]
    pub members: Vec<String>,
    /// `host:port` of a DNS name the cluster manager moves to the primary (a managed
    /// database's one name): every address it resolves to becomes a member, judged by the same
    /// probes; it is resolved again at every failure signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Patroni REST API URLs (`http://host:8008`): the members Patroni lists become members
    /// (its leader is only a hint: the probes decide).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patroni: Vec<String>,
    /// User the probes log in as (needs no special rights); default: the first configured user
    /// with a server password or trust.
    #[serde(default)]
    pub probe_user: Option<String>,
    /// Database the probes connect to.
    #[serde(default = "default_probe_database")]
    pub probe_database: String,
}

fn default_probe_database() -> String {
    "postgres".into()
}

/// How members are watched and how long work waits for a primary.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// Time between probes of a healthy, quiet member.
    pub probe_interval: Duration,
    /// Time between probes of a member that is suspect or has requests outstanding.
    pub fast_probe_interval: Duration,
    /// Longest one probe (connect + query) may take before it counts as a failure.
    pub probe_timeout: Duration,
    /// Consecutive failed probes that make a member Down.
    pub down_after: u32,
    /// Consecutive good probes that bring a Down member back.
    pub up_after: u32,
    /// Longest new work waits for a primary before 57P03.
    pub failover_timeout: Duration,
    /// DNS servers (`host:port`) that resolve cluster endpoints; empty: the system's
    /// (`/etc/resolv.conf`).
    pub dns_servers: Vec<String>,
    /// Longest an endpoint's answer is used while the cluster is healthy (a shorter TTL wins).
    pub dns_max_ttl: Duration,
    /// Longest an endpoint's answer is used while the cluster has no healthy primary.
    pub dns_max_ttl_unhealthy: Duration,
    /// Transaction mode: a COMMIT of an explicit transaction carries a probe of the
    /// transaction's id in the same flight; if its server is lost before the answer, the new
    /// primary is asked what became of it, and the client gets the true answer (COMMIT, or
    /// 40001 when it did not commit) instead of 08007.
    pub resolve_commits: bool,
    /// With `resolve_commits`: a lone autocommit INSERT, UPDATE, DELETE or MERGE carries a
    /// probe too (it runs one more statement before each: a cost on write-heavy autocommit
    /// traffic that COMMITs of explicit transactions do not pay).
    pub resolve_autocommit_writes: bool,
    /// With `resolve_autocommit_writes`: a lone autocommit SELECT (WITH, VALUES, TABLE), which
    /// may call a function that writes, carries the write probe too. Off by default: the
    /// probe gives every such read a transaction id and a WAL record.
    pub resolve_autocommit_reads: bool,
    /// Session mode: a session between transactions when its server is lost (idle, or with
    /// an autocommit request in flight, which gets 08007) is attached to the new primary and
    /// what it built (settings, prepared statements, LISTENs) is replayed there; a session
    /// holding state that cannot be rebuilt ends with 57P01 naming it.
    pub rebuild_sessions: bool,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::millis(1000),
            fast_probe_interval: Duration::millis(200),
            probe_timeout: Duration::millis(600),
            down_after: 2,
            up_after: 2,
            failover_timeout: Duration::secs(60),
            dns_servers: Vec::new(),
            dns_max_ttl: Duration::secs(30),
            dns_max_ttl_unhealthy: Duration::secs(1),
            resolve_commits: false,
            resolve_autocommit_writes: true,
            resolve_autocommit_reads: false,
            rebuild_sessions: true,
        }
    }
}

/// The database name that reaches the admin console; no site may use it.
pub const CONSOLE_DATABASE: &str = "switchyard";

/// A database (or `*` for any) served from a cluster, with optional pool overrides.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Database name clients ask for; `*` matches any name not listed elsewhere (but never
    /// [`CONSOLE_DATABASE`], the admin console).
    pub database: String,
    pub cluster: String,
    /// Database name on the server; default: the name the client asked for.
    pub server_database: Option<String>,
    pub mode: Option<PoolMode>,
    pub size: Option<usize>,
    pub min_idle: Option<usize>,
    pub query_wait_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum AuthMethod {
    #[serde(rename = "trust")]
    Trust,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// The client's TLS certificate, verified (`client_tls = verify-ca` or `verify-full`), with
    /// the user name as its common name.
    #[serde(rename = "cert")]
    Cert,
}

/// A user clients may log in as, and the credentials Switchyard uses for it on the server.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// How clients authenticate to Switchyard.
    pub auth: AuthMethod,
    /// Cleartext, an md5 hash (`md5…`) or a SCRAM verifier (`SCRAM-SHA-256$…`).
    #[serde(default)]
    pub password: Option<String>,
    /// Cleartext password for the server; default: `password` when that is cleartext.
    #[serde(default)]
    pub server_password: Option<String>,
    /// Server-side user name; default: `name`.
    #[serde(default)]
    pub server_user: Option<String>,
}

impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl UserConfig {
    /// The cleartext password to use against the server, if any.
    pub fn server_password(&self) -> Option<&str> {
        self.server_password
            .as_deref()
            .or(self.password.as_deref().filter(|p| is_cleartext(p)))
    }

    pub fn server_user(&self) -> &str {
        self.server_user.as_deref().unwrap_or(&self.name)
    }
}

/// True when a configured password is neither an md5 hash nor a SCRAM verifier.
pub fn is_cleartext(p: &str) -> bool {
    !(is_md5_hash(p) || p.starts_with("SCRAM-SHA-256$"))
}

pub fn is_md5_hash(p: &str) -> bool {
    p.len() == 35 && p.starts_with("md5") && p[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pool settings in force for one site: its overrides over the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct EffectivePool {
    pub mode: PoolMode,
    pub size: usize,
    pub min_idle: usize,
    pub server_idle_timeout: Duration,
    pub server_lifetime: Duration,
    pub query_wait_timeout: Duration,
    pub server_reset_query: std::sync::Arc<str>,
    pub client_idle_timeout: Duration,
    pub idle_transaction_timeout: Duration,
    pub query_timeout: Duration,
    pub max_prepared_statements: usize,
}

impl Config {
    pub fn effective_pool(&self, site: &SiteConfig) -> EffectivePool {
        let d = &self.pool;
        EffectivePool {
            mode: site.mode.unwrap_or(d.mode),
            size: site.size.unwrap_or(d.size),
            min_idle: site.min_idle.unwrap_or(d.min_idle),
            server_idle_timeout: d.server_idle_timeout,
            server_lifetime: d.server_lifetime,
            query_wait_timeout: site.query_wait_timeout.unwrap_or(d.query_wait_timeout),
            server_reset_query: d.server_reset_query.as_str().into(),
            client_idle_timeout: d.client_idle_timeout,
            idle_transaction_timeout: d.idle_transaction_timeout,
            query_timeout: d.query_timeout,
            max_prepared_statements: d.max_prepared_statements,
        }
    }

    /// The site serving `database`: an exact match first, then the wildcard.
    pub fn site_for(&self, database: &str) -> Option<&SiteConfig> {
        self.sites
            .iter()
            .find(|s| s.database == database)
            .or_else(|| self.sites.iter().find(|s| s.database == "*"))
    }

    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The user a cluster's probes log in as: `probe_user`, else the first user Switchyard can
    /// log in to the servers with (a server password, or trust on both sides).
    pub fn probe_user(&self, cluster: &ClusterConfig) -> Option<&UserConfig> {
        match &cluster.probe_user {
            Some(name) => self.user(name),
            None => self
                .users
                .iter()
                .find(|u| u.server_password().is_some() || u.auth == AuthMethod::Trust),
        }
    }
}

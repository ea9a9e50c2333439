//! The one map from internal failures to what a client sees (design.md §2): SQLSTATE, message
//! (always starting `switchyard:` when Switchyard is the author), and whether the connection closes.

use switchyard_pool::PoolError;
use switchyard_proto::backend::ErrorFields;
use switchyard_proto::{ProtoError, sqlstate};
use switchyard_server::ServerError;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtoError),
    #[error("password authentication failed for user {user:?}")]
    AuthFailed { user: String },
    #[error("no such database {0:?}")]
    NoSuchDatabase(String),
    /// Authenticated, but not in `admin.users`, and asked for the admin console.
    #[error("user {user:?} is not allowed on the admin console")]
    NotAdmin { user: String },
    /// Asked for the admin console, and this process runs none.
    #[error("no admin console in this process")]
    NoConsole,
    /// PAUSE held the request, and no RESUME came within `failover_timeout`.
    #[error("database {database:?} paused, not resumed within {waited:?}")]
    Paused {
        database: String,
        waited: std::time::Duration,
    },
    #[error("unsupported startup: {0}")]
    Unsupported(String),
    /// A TLS ClientHello where a startup packet belongs; TLS is not offered, and the client cannot
    /// read a plain-text error, so the connection is just closed.
    #[error("direct TLS negotiation is not supported")]
    DirectTls,
    #[error("too many client connections")]
    TooManyClients { max: usize },
    #[error("login timed out")]
    LoginTimeout,
    #[error("pool wait timed out")]
    PoolTimeout { waited: std::time::Duration },
    /// The topology moved on while the request waited for a server connection (the gate retries
    /// this; it reaches a client only where there is no gate, at login).
    #[error("the cluster's primary changed")]
    PrimaryChanged,
    #[error("server error: {0}")]
    Server(ServerError),
    #[error("shutting down")]
    Shutdown,
    /// Online restart: the session moved to the process replacing this one, with its socket.
    #[error("handed over to the new process")]
    HandedOver,
    /// Idle long enough to be parked (`crate::parking`): the session leaves its task for the
    /// parking lot, not its client. `idle_deadline`: when its `client_idle_timeout` is due.
    #[error("parked while idle")]
    Parked {
        idle_deadline: Option<std::time::Instant>,
    },
    #[error(transparent)]
    Route(#[from] switchyard_router::RouteError),
    /// Session mode: the server connection, and whatever state the session had on it, is gone.
    #[error("server connection lost in session mode: {0}")]
    SessionLost(String),
    /// The server closed the connection with a FATAL error that was relayed to the client.
    #[error("server ended the session")]
    EndedByServer,
    /// The client went away; nobody to tell.
    #[error("client disconnected: {0}")]
    ClientGone(std::io::Error),
    /// A transaction changed search_path and the server connection failed before the new value
    /// could be read back: the session's next transactions could not run under it.
    #[error("search_path could not be read back after the client changed it")]
    SettingsUnknown,
    /// The client left its answers unread for `client_write_timeout`; it cannot be told either.
    #[error("client did not read its answers for {waited:?} (client_write_timeout); disconnected")]
    ClientStalled { waited: std::time::Duration },
    /// No transaction open and nothing sent for `client_idle_timeout`.
    #[error("client idle for {limit:?} (client_idle_timeout)")]
    IdleTimeout { limit: std::time::Duration },
    /// A transaction left open with nothing sent for `idle_transaction_timeout`.
    #[error("client idle in a transaction for {limit:?} (idle_transaction_timeout)")]
    IdleInTransactionTimeout { limit: std::time::Duration },
    /// A request of more than `max` messages without a Sync, answered by Switchyard itself.
    #[error("more than {max} messages without a Sync")]
    BatchTooLong { max: usize },
    /// The server was lost while a large row was being passed to the client in pieces: the
    /// client has part of a message, and no error can follow it that it could read.
    #[error("server connection lost in the middle of a row: {0}")]
    LostMidMessage(String),
    /// No verified client certificate naming the user (`auth = "cert"`, or `client_tls =
    /// verify-full`).
    #[error("certificate authentication failed for user {user:?}")]
    CertAuthFailed { user: String },
    /// A plain-text startup where `client_tls` requires TLS.
    #[error("TLS is required (client_tls = {mode})")]
    TlsRequired { mode: &'static str },
    /// `auth_query` could not be run (no primary, `auth_user` refused, the query failed): says
    /// nothing about whether the user exists.
    #[error("could not look up user {user:?} with auth_query: {why}")]
    AuthLookup { user: String, why: String },
    /// Transaction mode: no server listened for the client's LISTEN in time (no primary
    /// within failover_timeout, or the listening connection failed).
    #[error("LISTEN not in effect in time")]
    ListenTimeout,
    /// Transaction mode: a LISTEN Switchyard cannot follow (in a transaction, with other
    /// statements, or in a named prepared statement).
    #[error("LISTEN in a form transaction pooling cannot follow")]
    ListenUnsupported,
    /// One client address already has `max_pending_logins_per_address` logins under way.
    #[error("too many connections logging in from {address}")]
    TooManyLogins { address: String, max: usize },
}

impl From<PoolError> for SessionError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Timeout(waited) => Self::PoolTimeout { waited },
            PoolError::Server(s) => Self::Server(s),
            PoolError::Retired => Self::PrimaryChanged,
        }
    }
}

impl SessionError {
    /// What the client is sent, or `None` when there is nobody to tell.
    pub fn to_client(&self) -> Option<ErrorFields> {
        use sqlstate::*;
        let fatal =
            |code: &str, msg: String| Some(ErrorFields::fatal(code, format!("switchyard: {msg}")));
        let error =
            |code: &str, msg: String| Some(ErrorFields::error(code, format!("switchyard: {msg}")));
        match self {
            Self::Protocol(e @ ProtoError::TooManyStatements { .. }) => {
                fatal(CONFIGURATION_LIMIT_EXCEEDED, e.to_string())
            }
            Self::Protocol(e) => fatal(PROTOCOL_VIOLATION, format!("protocol violation: {e}")),
            Self::AuthFailed { user } => fatal(
                INVALID_PASSWORD,
                format!("password authentication failed for user \"{user}\""),
            ),
            Self::NoSuchDatabase(db) => fatal(
                INVALID_CATALOG_NAME,
                format!("database \"{db}\" does not exist"),
            ),
            Self::NotAdmin { user } => fatal(
                INVALID_AUTHORIZATION,
                format!("user \"{user}\" is not allowed on the admin console"),
            ),
            Self::NoConsole => fatal(
                INVALID_CATALOG_NAME,
                format!(
                    "the admin console (database \"{}\") is not available in this process",
                    crate::console::CONSOLE_DATABASE
                ),
            ),
            Self::Paused { database, waited } => error(
                CANNOT_CONNECT_NOW,
                format!(
                    "database \"{database}\" is paused by an operator and was not resumed within failover_timeout ({} ms); retry later",
                    waited.as_millis()
                ),
            ),
            Self::Unsupported(what) => fatal(PROTOCOL_VIOLATION, what.clone()),
            Self::TooManyClients { max } => fatal(
                TOO_MANY_CONNECTIONS,
                format!("sorry, too many clients already (max_client_conn = {max})"),
            ),
            Self::LoginTimeout => fatal(
                PROTOCOL_VIOLATION,
                "login not completed within login_timeout".into(),
            ),
            Self::PoolTimeout { waited } => error(
                TOO_MANY_CONNECTIONS,
                format!(
                    "no server connection available within query_wait_timeout ({} ms); retry later",
                    waited.as_millis()
                ),
            ),
            Self::Server(ServerError::Refused(f)) | Self::Server(ServerError::Query(f)) => {
                Some(ErrorFields {
                    severity: "ERROR".into(),
                    ..(**f).clone()
                })
            }
            Self::Server(e) => error(CANNOT_CONNECT_NOW, format!("server unavailable: {e}")),
            Self::ListenTimeout => error(
                CANNOT_CONNECT_NOW,
                "no server listened for this LISTEN within failover_timeout; retry later".into(),
            ),
            Self::ListenUnsupported => error(
                FEATURE_NOT_SUPPORTED,
                "in transaction pooling, LISTEN must be sent on its own outside a transaction \
                 (a simple query of LISTEN/UNLISTEN statements, or one unnamed statement)"
                    .into(),
            ),
            Self::PrimaryChanged => error(
                CANNOT_CONNECT_NOW,
                "the cluster's primary changed while this request waited; retry".into(),
            ),
            Self::Shutdown => fatal(
                ADMIN_SHUTDOWN,
                "terminating connection due to administrator command".into(),
            ),
            Self::Route(switchyard_router::RouteError::Conflict { cluster, members }) => error(
                CANNOT_CONNECT_NOW,
                format!(
                    "cluster {cluster:?} has several writable members ({members}); writes are refused until an operator resolves it"
                ),
            ),
            Self::Route(e) => error(CANNOT_CONNECT_NOW, format!("{e}; retry later")),
            Self::SessionLost(why) => fatal(
                ADMIN_SHUTDOWN,
                format!(
                    "terminating connection because the primary failed over ({why}); session state is lost, reconnect"
                ),
            ),
            Self::IdleTimeout { limit } => fatal(
                sqlstate::IDLE_SESSION_TIMEOUT,
                format!(
                    "terminating connection due to idle-session timeout ({} s, client_idle_timeout)",
                    limit.as_secs_f64()
                ),
            ),
            Self::IdleInTransactionTimeout { limit } => fatal(
                sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                format!(
                    "terminating connection due to idle-in-transaction timeout ({} s, idle_transaction_timeout); the transaction was rolled back",
                    limit.as_secs_f64()
                ),
            ),
            Self::BatchTooLong { max } => fatal(
                PROGRAM_LIMIT_EXCEEDED,
                format!("more than {max} messages without a Sync while the transaction is being ended; send a Sync"),
            ),
            // The reason (a server's error text) goes to Switchyard's log only: the client
            // has not authenticated.
            Self::AuthLookup { user, .. } => fatal(
                CANNOT_CONNECT_NOW,
                format!(
                    "could not look up user \"{user}\" with auth_query; retry (the reason is \
                     in Switchyard's log)"
                ),
            ),
            Self::CertAuthFailed { user } => fatal(
                INVALID_AUTHORIZATION,
                format!("certificate authentication failed for user \"{user}\""),
            ),
            Self::TlsRequired { mode } => fatal(
                INVALID_AUTHORIZATION,
                format!("TLS is required (client_tls = {mode}); connect with sslmode=require or stronger"),
            ),
            Self::TooManyLogins { address, max } => fatal(
                TOO_MANY_CONNECTIONS,
                format!(
                    "too many connections from {address} still logging in (max_pending_logins_per_address = {max})"
                ),
            ),
            Self::SettingsUnknown => fatal(
                CONNECTION_FAILURE,
                "the server connection failed while confirming the search_path this session set; reconnect".into(),
            ),
            Self::ClientGone(_)
            | Self::ClientStalled { .. }
            | Self::DirectTls
            | Self::LostMidMessage(_)
            | Self::HandedOver
            | Self::Parked { .. }
            | Self::EndedByServer => None,
        }
    }

    /// The same error as a FATAL (used when it happens during login).
    pub fn to_client_fatal(&self) -> Option<ErrorFields> {
        self.to_client().map(|f| ErrorFields {
            severity: "FATAL".into(),
            ..f
        })
    }
}

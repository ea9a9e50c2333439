//! One Switchyard connection to a PostgreSQL server: TCP connect with keepalive and
//! TCP_USER_TIMEOUT, TLS as `[server] tls` asks, startup and authentication (SCRAM-SHA-256, md5, cleartext, trust),
//! parameter status, simple internal queries (reset, SET), and sending cancel requests.
//!
//! The relay in `frontend` reads and writes the socket directly through [`ServerConn::stream`];
//! this crate owns everything around that.
#![forbid(unsafe_code)]

mod auth;
mod built_state;
mod commit_probe;
mod conn;
mod credential;
mod error;
mod prepared;
mod socket;

pub use auth::AllowedAuth;
pub use built_state::{BuiltState, Change, Effect};
pub use commit_probe::{
    CommitProbe, CommitReply, PROBE_SQL, PROBE_STATEMENT, Probed, Probing, WRITE_PROBE_SQL,
    WRITE_PROBE_STATEMENT, held_through_end, parse_lsn, probe_messages, strip_extended_answers,
    write_probe_messages,
};
pub use conn::{BackendKey, CancelKey, ConnectParams, ServerConn, send_cancel};
pub use credential::{Credential, LearnedSecret, ServerSecret};
pub use error::ServerError;
pub use prepared::Prepared;
pub use socket::{Closer, SocketOptions};

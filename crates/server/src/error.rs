//! Errors from a server connection, classified by what they mean for the caller.

use switchyard_proto::ProtoError;
use switchyard_proto::backend::ErrorFields;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{what} to {addr} timed out after {after_ms} ms")]
    Timeout {
        addr: String,
        what: &'static str,
        after_ms: u128,
    },
    /// The server refused the login (bad password, unknown database, too many connections, ...).
    #[error("server refused the login: {} {}", .0.code, .0.message)]
    Refused(Box<ErrorFields>),
    #[error("server asks for authentication method {0}, which Switchyard does not support")]
    UnsupportedAuth(String),
    /// The server asked for a method `require_auth` does not list (a downgrade, or a server
    /// set up for a weaker method than the config expects).
    #[error(
        "server asks for {method} authentication, which [server] require_auth does not allow (add \"{method}\" to allow it)"
    )]
    AuthNotAllowed { method: &'static str },
    #[error(
        "server wants a password for user {user:?} but none is configured (set server_password)"
    )]
    NoPassword { user: String },
    #[error("SCRAM with the server failed: {0}")]
    Scram(#[from] switchyard_proto::scram::ScramError),
    #[error("server broke the protocol: {0}")]
    Protocol(#[from] ProtoError),
    /// TLS could not be set up with the server (refused, handshake, certificate check).
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: String,
        source: switchyard_tls::TlsError,
    },
    #[error("server connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("server closed the connection")]
    Closed,
    /// An internal query (reset, SET) failed.
    #[error("internal query failed: {} {}", .0.code, .0.message)]
    Query(Box<ErrorFields>),
}

impl ServerError {
    /// True when the server itself could not be reached or dropped us: the member may be down.
    /// Also true for a login refused because the server is starting up or shutting down.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } | Self::Io(_) | Self::Closed => true,
            // A handshake cut short is a lost connection; a refused or failed check is not.
            Self::Tls {
                source: switchyard_tls::TlsError::Io(_),
                ..
            } => true,
            Self::Refused(f) => f.code.starts_with("57P"),
            _ => false,
        }
    }
}

//! TLS for Switchyard: the one crypto provider (aws-lc-rs), certificate and key files, the
//! modes Switchyard offers clients and asks of servers, and [`Stream`], a socket that is plain
//! or TLS on either side.

#![forbid(unsafe_code)]

mod files;
mod from_client;
mod stream;
mod to_server;
mod verify;

pub use files::{load_certs, load_key};
pub use from_client::{ALPN_POSTGRESQL, ClientTlsMode, FromClient};
pub use stream::Stream;
pub use to_server::{ServerTlsMode, ToServer, host_of};

use std::path::PathBuf;
use std::sync::Arc;

/// The crypto provider of every TLS config Switchyard builds (never the process default, so
/// that no other crate's choice can change it).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What can go wrong setting up or negotiating TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Content { path: PathBuf, what: String },
    #[error("no CA certificates: tls_ca_file is not set and the system has none")]
    NoRoots,
    #[error("TLS setup: {0}")]
    Config(#[from] rustls::Error),
    /// The server answered the SSLRequest with `N` where TLS is required.
    #[error("the server does not offer TLS, and server tls = {0} requires it")]
    ServerRefused(&'static str),
    #[error("the server answered the TLS request with {0:?}")]
    BadAnswer(char),
    #[error("{0:?} is not a host name or address TLS can check")]
    BadName(String),
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

//! TLS from clients: the modes (PgBouncer's `client_tls_sslmode` names), the acceptor built once
//! per config load from the certificate and key files, client certificates, and PostgreSQL 17's
//! direct TLS (ALPN `postgresql`).

use crate::{Stream, TlsError, load_certs, load_key, provider};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;

/// The ALPN protocol PostgreSQL clients offer, and that direct TLS requires.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// What Switchyard asks of a client's TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTlsMode {
    /// Never: an SSLRequest is answered `N`.
    Disable,
    /// TLS when the client asks for it; plain text too.
    Allow,
    /// The same as `Allow` from the server's side (the name clients know from libpq).
    Prefer,
    /// TLS only: a plain-text login is refused.
    Require,
    /// TLS with a client certificate from a trusted CA.
    VerifyCa,
    /// TLS with a client certificate from a trusted CA whose common name is the user name.
    VerifyFull,
}

impl ClientTlsMode {
    pub fn name(self) -> &'static str {
        match self {
            ClientTlsMode::Disable => "disable",
            ClientTlsMode::Allow => "allow",
            ClientTlsMode::Prefer => "prefer",
            ClientTlsMode::Require => "require",
            ClientTlsMode::VerifyCa => "verify-ca",
            ClientTlsMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS Switchyard offers clients, built once per config load (the files are read then, so
/// a reload picks up renewed certificates; connections already open keep theirs).
#[derive(Clone)]
pub struct FromClient {
    mode: ClientTlsMode,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for FromClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FromClient")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl FromClient {
    /// No TLS for clients.
    pub fn disabled() -> Self {
        Self {
            mode: ClientTlsMode::Disable,
            acceptor: None,
        }
    }

    /// Loads the certificate chain and key (and, for the verifying modes, the CAs client
    /// certificates must lead to). Every mode but `Disable` needs a certificate.
    pub fn new(
        mode: ClientTlsMode,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Self, TlsError> {
        if mode == ClientTlsMode::Disable {
            return Ok(Self::disabled());
        }
        let chain = load_certs(cert)?;
        let key = load_key(key)?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if matches!(mode, ClientTlsMode::VerifyCa | ClientTlsMode::VerifyFull) {
            let Some(ca) = client_ca else {
                return Err(TlsError::Content {
                    path: cert.to_owned(),
                    what: format!("client_tls = {} needs client_tls_ca_file", mode.name()),
                });
            };
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(load_certs(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Content {
                    path: ca.to_owned(),
                    what: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Content {
                path: cert.to_owned(),
                what: format!("the certificate and key do not go together ({e})"),
            })?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(Self {
            mode,
            acceptor: Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        })
    }

    pub fn mode(&self) -> ClientTlsMode {
        self.mode
    }

    /// TLS is offered (an SSLRequest is answered `S`).
    pub fn offered(&self) -> bool {
        self.acceptor.is_some()
    }

    /// A plain-text login is refused.
    pub fn required(&self) -> bool {
        matches!(
            self.mode,
            ClientTlsMode::Require | ClientTlsMode::VerifyCa | ClientTlsMode::VerifyFull
        )
    }

    /// The client certificate's common name must be the user name.
    pub fn checks_user_name(&self) -> bool {
        self.mode == ClientTlsMode::VerifyFull
    }

    /// The TLS handshake on a client's socket (after its SSLRequest was answered `S`, or at
    /// once for direct TLS, where `direct` makes ALPN `postgresql` a requirement, as
    /// PostgreSQL makes it).
    pub async fn accept(&self, tcp: TcpStream, direct: bool) -> Result<Stream, TlsError> {
        // (A plain socket given back on failure would be of no use: the client is mid-handshake.)
        let Some(acceptor) = &self.acceptor else {
            return Err(TlsError::Handshake(std::io::Error::other(
                "TLS is not offered",
            )));
        };
        let tls = acceptor.accept(tcp).await.map_err(TlsError::Handshake)?;
        if direct && tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
            return Err(TlsError::Handshake(std::io::Error::other(
                "direct TLS without ALPN \"postgresql\"",
            )));
        }
        Ok(Stream::FromClient(Box::new(tls)))
    }
}

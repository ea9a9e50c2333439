//! TLS to servers: the modes (libpq's `sslmode` names), the client configs built once per
//! config load, and the SSLRequest negotiation on a fresh connection.

use crate::verify::{AnyCertificate, ChainOnly};
use crate::{Stream, TlsError, provider};
use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls_pki_types::{CertificateDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What Switchyard asks of a server's TLS (libpq's `sslmode`, without `allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerTlsMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, unchecked; else plain.
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS with a certificate chain to a trusted CA; any name.
    VerifyCa,
    /// TLS with a trusted chain and the configured host name (or address) in the certificate.
    VerifyFull,
}

impl ServerTlsMode {
    pub fn name(self) -> &'static str {
        match self {
            ServerTlsMode::Disable => "disable",
            ServerTlsMode::Prefer => "prefer",
            ServerTlsMode::Require => "require",
            ServerTlsMode::VerifyCa => "verify-ca",
            ServerTlsMode::VerifyFull => "verify-full",
        }
    }

    fn requires_tls(self) -> bool {
        matches!(
            self,
            ServerTlsMode::Require | ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull
        )
    }

    fn verifies(self) -> bool {
        matches!(self, ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull)
    }
}

/// The TLS settings of every connection to servers (pooled and probes), built once per config
/// load. Two are equal when the mode, the CA file and the roots loaded from it are: a changed
/// CA file makes new pools on reload.
#[derive(Clone)]
pub struct ToServer {
    mode: ServerTlsMode,
    ca_file: Option<PathBuf>,
    roots: Vec<CertificateDer<'static>>,
    config: Option<Arc<ClientConfig>>,
}

impl PartialEq for ToServer {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode && self.ca_file == other.ca_file && self.roots == other.roots
    }
}

impl std::fmt::Debug for ToServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToServer")
            .field("mode", &self.mode)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// The SSLRequest code (PostgreSQL's `NEGOTIATE_SSL_CODE`).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

impl ToServer {
    /// No TLS at all.
    pub fn disabled() -> Self {
        Self {
            mode: ServerTlsMode::Disable,
            ca_file: None,
            roots: Vec::new(),
            config: None,
        }
    }

    /// Builds the settings for `mode`; the verifying modes trust `ca_file`'s certificates, or
    /// the system's when there is none.
    pub fn new(mode: ServerTlsMode, ca_file: Option<&Path>) -> Result<Self, TlsError> {
        if mode == ServerTlsMode::Disable {
            return Ok(Self::disabled());
        }
        let provider = provider();
        let roots = match (mode.verifies(), ca_file) {
            (_, Some(path)) => crate::load_certs(path)?,
            (true, None) => {
                let found = rustls_native_certs::load_native_certs();
                if found.certs.is_empty() {
                    return Err(TlsError::NoRoots);
                }
                found.certs
            }
            (false, None) => Vec::new(),
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if mode.verifies() {
            let mut store = rustls::RootCertStore::empty();
            let (_, unusable) = store.add_parsable_certificates(roots.iter().cloned());
            if store.is_empty() {
                return Err(match ca_file {
                    Some(path) => TlsError::Content {
                        path: path.to_owned(),
                        what: format!("none of its {unusable} certificate(s) can be a CA root"),
                    },
                    None => TlsError::NoRoots,
                });
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
            if mode == ServerTlsMode::VerifyFull {
                builder.with_webpki_verifier(webpki)
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
            }
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        };
        let mut config = builder.with_no_client_auth();
        // PostgreSQL 17 and later check it when it is offered; earlier servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Self {
            mode,
            ca_file: ca_file.map(Path::to_owned),
            roots,
            config: Some(Arc::new(config)),
        })
    }

    pub fn mode(&self) -> ServerTlsMode {
        self.mode
    }

    /// On a fresh connection to `host` (the configured name, for SNI and the name check):
    /// asks for TLS and does the handshake when the server agrees; plain when it does not and
    /// the mode allows it.
    pub async fn negotiate(&self, mut tcp: TcpStream, host: &str) -> Result<Stream, TlsError> {
        let Some(config) = &self.config else {
            return Ok(Stream::Plain(tcp));
        };
        tcp.write_all(&SSL_REQUEST).await?;
        // Exactly one byte: anything the server sent after it belongs to the handshake (a
        // server cannot slip plain-text messages in before it).
        match tcp.read_u8().await? {
            b'S' => {}
            b'N' if !self.mode.requires_tls() => return Ok(Stream::Plain(tcp)),
            b'N' => return Err(TlsError::ServerRefused(self.mode.name())),
            other => return Err(TlsError::BadAnswer(other as char)),
        }
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| TlsError::BadName(host.to_owned()))?;
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(TlsError::Handshake)?;
        Ok(Stream::ToServer(Box::new(tls)))
    }
}

/// The host part of a `host:port` address (`[v6]:port` too).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("db.example.internal:5432"), "db.example.internal");
        assert_eq!(host_of("127.0.0.1:5432"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5432"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let e = ToServer::new(
            ServerTlsMode::VerifyFull,
            Some(Path::new("/nonexistent/ca.pem")),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}

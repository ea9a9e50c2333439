//! Test certificates (a CA and a server certificate it signed, made with rcgen) and TLS for a
//! fixture server, so TLS is tested against PostgreSQL's own implementation.

use crate::FixtureError;
use crate::cmd::{give_to_pg_user, set_mode};
use std::fs;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A CA and a certificate it signed for the given names, as PEM files in a temp dir (removed
/// on drop); the CA can sign client certificates too.
pub struct TestCerts {
    dir: TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA's certificate: what a verifying client trusts.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn fail(what: &'static str, e: impl std::fmt::Display) -> FixtureError {
    FixtureError::io(
        what,
        Path::new("(rcgen)"),
        std::io::Error::other(e.to_string()),
    )
}

impl std::fmt::Debug for TestCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCerts")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl TestCerts {
    /// A fresh CA, and a certificate for `names` (host names or IP addresses) that it signed.
    pub fn generate(names: &[&str]) -> Result<TestCerts, FixtureError> {
        let dir = tempfile::Builder::new()
            .prefix("switchyard-certs-")
            .tempdir()
            .map_err(|e| FixtureError::io("create temp dir", Path::new("/tmp"), e))?;
        let ca_key = rcgen::KeyPair::generate().map_err(|e| fail("CA key", e))?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| fail("CA params", e))?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchyard test CA");
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|e| fail("CA certificate", e))?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().map_err(|e| fail("key", e))?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params =
            rcgen::CertificateParams::new(names).map_err(|e| fail("certificate params", e))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchyard test server");
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| fail("certificate", e))?;
        let write = |name: &str, text: String| -> Result<PathBuf, FixtureError> {
            let path = dir.path().join(name);
            fs::write(&path, text).map_err(|e| FixtureError::io("write", &path, e))?;
            Ok(path)
        };
        Ok(TestCerts {
            issuer,
            ca: write("ca.crt", ca_cert.pem())?,
            cert: write("server.crt", cert.pem())?,
            key: write("server.key", key.serialize_pem())?,
            dir,
        })
    }

    /// A client certificate with common name `cn`, signed by this CA: its certificate and key
    /// files, in this directory.
    pub fn client(&self, cn: &str) -> Result<(PathBuf, PathBuf), FixtureError> {
        let key = rcgen::KeyPair::generate().map_err(|e| fail("client key", e))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| fail("client certificate params", e))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| fail("client certificate", e))?;
        let cert_path = self.dir.path().join(format!("client-{cn}.crt"));
        let key_path = self.dir.path().join(format!("client-{cn}.key"));
        fs::write(&cert_path, cert.pem()).map_err(|e| FixtureError::io("write", &cert_path, e))?;
        fs::write(&key_path, key.serialize_pem())
            .map_err(|e| FixtureError::io("write", &key_path, e))?;
        // libpq refuses a key file others can read.
        set_mode(&key_path, 0o600)?;
        Ok((cert_path, key_path))
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Copies the certificate and key into `data_dir` as PostgreSQL wants them (the key
    /// private to the server's user) and returns the settings that turn TLS on.
    pub(crate) fn install(&self, data_dir: &Path) -> Result<Vec<String>, FixtureError> {
        for (from, name) in [(&self.cert, "server.crt"), (&self.key, "server.key")] {
            let to = data_dir.join(name);
            fs::copy(from, &to).map_err(|e| FixtureError::io("copy to", &to, e))?;
            set_mode(&to, 0o600)?;
            give_to_pg_user(&to)?;
        }
        Ok(vec![
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
        ])
    }
}

//! [`DnsServer`]: a real name server (dnsmasq, from Debian's `dnsmasq-base`) on a free loopback
//! port, answering for the names a test gives it with a one-second TTL, and moving a name to
//! another address as a managed database's cluster manager moves its endpoint.

use crate::{FixtureError, free_port};
use std::fs;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long dnsmasq may take to answer its first query.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One dnsmasq serving `hosts` (name → address) on `127.0.0.1:port`, nothing else (no upstream,
/// no `/etc/hosts`). Dropping it kills it and removes its directory.
#[derive(Debug)]
pub struct DnsServer {
    dir: TempDir,
    port: u16,
    child: Child,
}

/// The dnsmasq binary.
fn dnsmasq() -> Option<PathBuf> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Why the DNS tests cannot run here, if they cannot.
pub fn dnsmasq_available() -> Result<(), String> {
    dnsmasq()
        .map(drop)
        .ok_or_else(|| "dnsmasq is not installed (scripts/setup installs dnsmasq-base)".into())
}

impl DnsServer {
    /// Starts dnsmasq answering `names` (each → its address) and waits until it answers.
    pub fn start(names: &[(&str, Ipv4Addr)]) -> Result<DnsServer, FixtureError> {
        let bin = dnsmasq().ok_or_else(|| {
            FixtureError::io(
                "find",
                std::path::Path::new("/usr/sbin/dnsmasq"),
                std::io::Error::other(
                    "dnsmasq is not installed (scripts/setup installs dnsmasq-base)",
                ),
            )
        })?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-dns-")
            .tempdir()
            .map_err(|e| FixtureError::io("create temp dir", std::path::Path::new("/tmp"), e))?;
        let port = free_port();
        write_hosts(&dir, names)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg(format!(
                "--addn-hosts={}",
                dir.path().join("hosts").display()
            ))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg(format!("--port={port}"))
            .arg("--local-ttl=1")
            .arg("--cache-size=0")
            .arg("--pid-file=")
            .arg("--user=root")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| FixtureError::io("spawn", &bin, e))?;
        let mut server = DnsServer { dir, port, child };
        server.wait_answering(names.first().map_or("localhost", |n| n.0))?;
        Ok(server)
    }

    /// `127.0.0.1:PORT`, for a resolver's configuration.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Points the names at new addresses: the file is rewritten and dnsmasq told to read it
    /// again (SIGHUP).
    pub fn point(&self, names: &[(&str, Ipv4Addr)]) -> Result<(), FixtureError> {
        write_hosts(&self.dir, names)?;
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .map_err(|e| FixtureError::io("run", std::path::Path::new("kill"), e))?;
        if status.success() {
            Ok(())
        } else {
            Err(FixtureError::io(
                "signal",
                std::path::Path::new("dnsmasq"),
                std::io::Error::other(format!("kill -HUP exited {status}")),
            ))
        }
    }

    /// Sends an A query for `name` until an answer comes (dnsmasq is up), at most
    /// [`START_TIMEOUT`].
    fn wait_answering(&mut self, name: &str) -> Result<(), FixtureError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let query = a_query(name);
        let sock = UdpSocket::bind("127.0.0.1:0")
            .map_err(|e| FixtureError::io("bind", std::path::Path::new("udp"), e))?;
        let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(FixtureError::io(
                    "start",
                    std::path::Path::new("dnsmasq"),
                    std::io::Error::other(format!("dnsmasq exited: {status}")),
                ));
            }
            if sock.send_to(&query, ("127.0.0.1", self.port)).is_ok() && sock.recv(&mut buf).is_ok()
            {
                return Ok(());
            }
        }
        Err(FixtureError::io(
            "start",
            std::path::Path::new("dnsmasq"),
            std::io::Error::other("no answer within 10 s"),
        ))
    }
}

/// Writes the hosts file dnsmasq serves (replaced whole, never seen half-written).
fn write_hosts(dir: &TempDir, names: &[(&str, Ipv4Addr)]) -> Result<(), FixtureError> {
    let text: String = names.iter().map(|(n, ip)| format!("{ip} {n}\n")).collect();
    let tmp = dir.path().join("hosts.tmp");
    fs::write(&tmp, text).map_err(|e| FixtureError::io("write", &tmp, e))?;
    let hosts = dir.path().join("hosts");
    fs::rename(&tmp, &hosts).map_err(|e| FixtureError::io("rename", &tmp, e))
}

/// A minimal DNS query for `name`'s A record (only to see the server answer).
fn a_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

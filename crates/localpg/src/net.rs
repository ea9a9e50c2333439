//! Network faults on loopback: a [`Blackhole`] makes a local TCP port silently drop every packet,
//! as when a host or its network is gone (nothing answers, nothing is refused).
//!
//! It inserts two `iptables` rules at the head of the `INPUT` chain, for the loopback interface:
//! `-p tcp --dport PORT -j DROP` (packets to the server) and `-p tcp --sport PORT -j DROP`
//! (packets from it). Nothing is dropped in `OUTPUT`: there the sender would get `EPERM` at once,
//! which is a refusal, not a blackhole. Established connections are cut as well as new ones, so
//! a standby streaming from the port loses its primary too.
//!
//! Needs root (or `CAP_NET_ADMIN`) and the `iptables` program (Debian's `iptables` package, nft
//! backend); [`iptables_available`] says whether both are there. Every `iptables` call uses `-w`
//! so concurrent tests wait for the xtables lock instead of failing.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::FixtureError;
use crate::cmd;

/// Deadline for one `iptables` invocation (it may wait for the xtables lock).
const IPTABLES_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether `iptables` is installed and this process may change the `INPUT` chain (checked once:
/// listing the chain needs the same privilege as changing it).
pub fn iptables_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| iptables(&["-S", "INPUT"]).is_ok())
}

fn iptables(args: &[&str]) -> Result<(), FixtureError> {
    let mut command = Command::new("iptables");
    command.arg("-w").args(args);
    cmd::run(command, IPTABLES_TIMEOUT).map(drop)
}

/// The rule spec (after `-I INPUT` / `-D INPUT`) dropping loopback TCP packets whose `side`
/// (`--dport` or `--sport`) is `port`.
fn rule<'a>(side: &'static str, port: &'a str) -> [&'a str; 8] {
    ["-i", "lo", "-p", "tcp", side, port, "-j", "DROP"]
}

fn insert(side: &'static str, port: &str) -> Result<(), FixtureError> {
    let mut args = vec!["-I", "INPUT"];
    args.extend(rule(side, port));
    iptables(&args)
}

fn delete(side: &'static str, port: &str) -> Result<(), FixtureError> {
    let mut args = vec!["-D", "INPUT"];
    args.extend(rule(side, port));
    iptables(&args)
}

/// While alive, every TCP packet to or from `127.0.0.1:PORT` on loopback is silently dropped.
///
/// Dropping it (or [`Blackhole::stop`]) removes exactly the two rules it inserted; drop never
/// panics and removing twice is harmless.
#[derive(Debug)]
pub struct Blackhole {
    port: u16,
    active: bool,
}

impl Blackhole {
    /// Starts dropping packets to and from `port`. On error no rule is left behind.
    pub fn start(port: u16) -> Result<Blackhole, FixtureError> {
        let p = port.to_string();
        insert("--dport", &p)?;
        if let Err(e) = insert("--sport", &p) {
            let _ = delete("--dport", &p);
            return Err(e);
        }
        Ok(Blackhole { port, active: true })
    }

    /// The port being blackholed.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the rules are (still) in place.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Removes the rules now, reporting a failure (the guard then tries no more).
    pub fn stop(&mut self) -> Result<(), FixtureError> {
        if !self.active {
            return Ok(());
        }
        self.active = false;
        let p = self.port.to_string();
        let dport = delete("--dport", &p);
        let sport = delete("--sport", &p);
        dport.and(sport)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    /// Whether the INPUT chain holds a DROP rule naming `port`.
    fn has_rule(port: u16) -> bool {
        let mut command = Command::new("iptables");
        command.args(["-w", "-S", "INPUT"]);
        let out = cmd::run(command, IPTABLES_TIMEOUT).expect("list INPUT");
        out.stdout
            .lines()
            .any(|l| l.contains(&format!("port {port} ")) && l.contains("DROP"))
    }

    #[test]
    fn blackhole_drops_loopback_traffic_and_cleans_up() {
        if !iptables_available() {
            eprintln!("skipped: iptables is not usable here (needs root and the iptables package)");
            return;
        }
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut before = TcpStream::connect(("127.0.0.1", port)).expect("connect before");
        let (mut accepted, _) = listener.accept().expect("accept");

        let mut hole = Blackhole::start(port).expect("start blackhole");
        assert!(has_rule(port));
        // New connections get no answer at all (no RST): the connect times out.
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let err = TcpStream::connect_timeout(&addr, Duration::from_millis(300))
            .expect_err("a blackholed port accepts nothing");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        // An established connection goes silent: writes succeed locally, nothing arrives.
        before.write_all(b"ping").expect("write is buffered");
        accepted
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut buf = [0u8; 4];
        assert!(std::io::Read::read(&mut accepted, &mut buf).is_err());

        hole.stop().expect("stop");
        assert!(!has_rule(port));
        drop(hole); // a second removal is a no-op
        accepted
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        std::io::Read::read_exact(&mut accepted, &mut buf).expect("retransmitted data arrives");
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn drop_removes_the_rules() {
        if !iptables_available() {
            eprintln!("skipped: iptables is not usable here");
            return;
        }
        let port = crate::free_port();
        {
            let _hole = Blackhole::start(port).expect("start blackhole");
            assert!(has_rule(port));
        }
        assert!(!has_rule(port));
    }
}

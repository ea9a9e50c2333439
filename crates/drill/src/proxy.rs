//! The Switchyard proxy under test, run as a separate process (`switchyard serve`) from a config
//! the drill writes, so the drill is a black-box client of the real thing. Its log goes to a
//! file in the drill's output directory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::error::DrillError;

/// How long the proxy may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the proxy may take to drain and exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `switchyard serve`; dropping it stops the process.
pub struct Proxy {
    child: Option<Child>,
    pub addr: String,
    /// The admin HTTP listener (status page, metrics, JSON API).
    pub admin: String,
    pub log: PathBuf,
}

/// An incident is Resolved after this long of stable traffic on the new primary (short, so a
/// drill sees the whole incident; the production default is a minute).
const RESOLVE_AFTER: &str = "5s";

/// The proxy's config: one cluster of both members, any database passed through, user
/// `postgres` with trust, transaction pooling, DEFAULT failover settings; the admin listener
/// on `admin`, incidents kept in the output directory.
fn config_toml(
    listen: &str,
    admin: &str,
    incidents: &Path,
    members: &[String],
    name: Option<(&str, String)>,
    pool_size: u16,
    (mode, resolve_commits): (&str, bool),
) -> String {
    let members = members
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    // The dns topology: the name alone, resolved by the drill's name server.
    let (members, discovery) = match name {
        Some((endpoint, dns)) => (
            String::new(),
            format!("endpoint = \"{endpoint}\"\n\n[failover]\ndns_servers = [\"{dns}\"]\n"),
        ),
        None => (members, String::new()),
    };
    let discovery = match (resolve_commits, discovery.is_empty()) {
        (false, _) => discovery,
        (true, true) => "\n[failover]\nresolve_commits = true\n".to_string(),
        (true, false) => format!("{discovery}resolve_commits = true\n"),
    };
    format!(
        "# Written by `switchyard drill`: default failover settings.\n\
         [proxy]\nlisten = \"{listen}\"\n\n\
         [pool]\nmode = \"{mode}\"\nsize = {pool_size}\n\n\
         [clusters.drill]\nmembers = [{members}]\n{discovery}\n\
         [[sites]]\ndatabase = \"*\"\ncluster = \"drill\"\n\n\
         [[users]]\nname = \"postgres\"\nauth = \"trust\"\n\n\
         [admin]\nlisten = \"{admin}\"\nusers = [\"postgres\"]\nincidents_file = \"{incidents}\"\n\
         resolve_after = \"{RESOLVE_AFTER}\"\n",
        incidents = incidents.display()
    )
}

impl Proxy {
    /// Writes the config into `out`, starts `exe serve`, and waits until a query through it
    /// reaches the primary.
    pub async fn start(
        exe: &Path,
        out: &Path,
        members: &[String],
        name: Option<&crate::cluster::PathName>,
        sites: u16,
        (sessions, resolve_commits): (bool, bool),
    ) -> Result<Proxy, DrillError> {
        let addr = format!("127.0.0.1:{}", switchyard_localpg::free_port());
        let admin = format!("127.0.0.1:{}", switchyard_localpg::free_port());
        let config = out.join("switchyard.toml");
        let incidents = out.join("incidents.json");
        let _ = std::fs::remove_file(&incidents);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DrillError::Io { path, source }
        };
        let name = name.map(|n| (n.endpoint.as_str(), n.dns.addr()));
        let mode = if sessions { "session" } else { "transaction" };
        let pooling = (mode, resolve_commits);
        let toml = config_toml(
            &addr,
            &admin,
            &incidents,
            members,
            name,
            sites.max(4),
            pooling,
        );
        std::fs::write(&config, toml).map_err(io(&config))?;
        let log = out.join("switchyard.log");
        let log_file = File::create(&log).map_err(io(&log))?;
        let child = Command::new(exe)
            .arg("serve")
            .arg("-c")
            .arg(&config)
            .env("SWITCHYARD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(io(&log))?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| DrillError::Proxy {
                what: format!("could not be started ({}: {e})", exe.display()),
                log: log.clone(),
            })?;
        let mut proxy = Proxy {
            child: Some(child),
            addr,
            admin,
            log,
        };
        proxy.wait_serving().await?;
        Ok(proxy)
    }

    /// Polls `SELECT 1` through the proxy (it answers once it knows the primary).
    async fn wait_serving(&mut self) -> Result<(), DrillError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let (host, port) = self.addr.rsplit_once(':').unwrap_or_default();
        let conninfo =
            format!("host={host} port={port} user=postgres dbname=postgres connect_timeout=2");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(DrillError::Proxy {
                    what: format!("exited at start ({status})"),
                    log: self.log.clone(),
                });
            }
            let attempt = async {
                let (client, conn) = tokio_postgres::connect(&conninfo, NoTls).await?;
                let driver = tokio::spawn(conn);
                let result = client.simple_query("SELECT 1").await;
                driver.abort();
                result.map(drop)
            };
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(3), attempt).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(DrillError::Proxy {
                    what: format!("did not serve within {} s", START_TIMEOUT.as_secs()),
                    log: self.log.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The proxy's newest incident record (`/api/incidents`), if it has one.
    pub async fn newest_incident(&self) -> Option<serde_json::Value> {
        let body = http_get(&self.admin, "/api/incidents").await?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["incidents"].get(0).cloned()
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_TIMEOUT`]. Blocking.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-s", "TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP/1.0 GET with a deadline: the body of a 200 answer. (The drill needs nothing more
/// of HTTP than this; an HTTP client crate would be all weight here.)
pub async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: switchyard\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.split_whitespace().nth(1).filter(|c| *c == "200")?;
        Some(body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_commits_lands_in_the_one_failover_table() {
        let members = ["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
        let incidents = Path::new("/tmp/incidents.json");
        for name in [None, Some(("db.example:5432", "127.0.0.1:53".to_string()))] {
            for resolve in [false, true] {
                let toml = config_toml(
                    "127.0.0.1:6432",
                    "127.0.0.1:9930",
                    incidents,
                    &members,
                    name.clone(),
                    4,
                    ("transaction", resolve),
                );
                let config = switchyard_config::Config::from_toml(&toml)
                    .unwrap_or_else(|e| panic!("{e}\n{toml}"));
                assert_eq!(config.failover.resolve_commits, resolve, "{toml}");
            }
        }
    }
}

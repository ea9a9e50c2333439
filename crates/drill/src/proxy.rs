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
    pub log: PathBuf,
}

/// The proxy's config: one cluster of both members, any database passed through, user
/// `postgres` with trust, transaction pooling, DEFAULT failover settings.
fn config_toml(listen: &str, members: &[String], pool_size: u16) -> String {
    let members = members
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "# Written by `switchyard drill`: default failover settings.\n\
         [proxy]\nlisten = \"{listen}\"\n\n\
         [pool]\nmode = \"transaction\"\nsize = {pool_size}\n\n\
         [clusters.drill]\nmembers = [{members}]\n\n\
         [[sites]]\ndatabase = \"*\"\ncluster = \"drill\"\n\n\
         [[users]]\nname = \"postgres\"\nauth = \"trust\"\n"
    )
}

impl Proxy {
    /// Writes the config into `out`, starts `exe serve`, and waits until a query through it
    /// reaches the primary.
    pub async fn start(
        exe: &Path,
        out: &Path,
        members: &[String],
        sites: u16,
    ) -> Result<Proxy, DrillError> {
        let addr = format!("127.0.0.1:{}", switchyard_localpg::free_port());
        let config = out.join("switchyard.toml");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DrillError::Io { path, source }
        };
        std::fs::write(&config, config_toml(&addr, members, sites.max(4))).map_err(io(&config))?;
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

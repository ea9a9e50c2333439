//! A `switchyard serve` process on a config file written from a [`Config`], for the tests that
//! need the real binary (signals, reload, drain, console commands): its port, pid, config file
//! and stderr log, with bounded waits on it.

use super::{STEP, within};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};
use switchyard_config::Config;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Interval of the bounded polling loops below.
const POLL: Duration = Duration::from_millis(50);

/// A `switchyard serve` process, its config file and its stderr log.
pub struct Served {
    pub child: Child,
    pub pid: u32,
    pub port: u16,
    pub config: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Writes `cfg` (listening on a free port) and starts the binary on it, waiting until it
    /// accepts connections.
    pub async fn start(cfg: Config) -> Self {
        Self::start_on(cfg, switchyard_localpg::free_port()).await
    }

    /// [`Served::start`] on `port` (the port of a process it takes over from, say).
    pub async fn start_on(mut cfg: Config, port: u16) -> Self {
        cfg.proxy.listen = format!("127.0.0.1:{port}");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("switchyard.toml");
        let log = dir.path().join("stderr.log");
        write_config(&config, &cfg);
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1")
            .env("SWITCHYARD_LOG", "info")
            .env("SWITCHYARD_WORKERS", "2")
            .env_remove("SWITCHYARD_LOG_JSON")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn switchyard");
        let pid = child.id().expect("pid");
        let mut p = Self {
            child,
            pid,
            port,
            config,
            log,
            _dir: dir,
        };
        p.wait_listening().await;
        p
    }

    pub async fn wait_listening(&mut self) {
        let deadline = Instant::now() + STEP;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "switchyard exited ({status}) before listening:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "switchyard not listening on {} after {STEP:?}:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// A memory figure of the process from `/proc/PID/status` (`"VmRSS"`, `"VmHWM"`,
    /// `"VmData"`), in KiB.
    pub fn status_kib(&self, field: &str) -> u64 {
        let pid = self.pid;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log until it contains `text` `times` times or more.
    pub async fn wait_log(&self, text: &str, times: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.log().matches(text).count() < times {
            assert!(
                Instant::now() < deadline,
                "log does not mention {text:?} {times} time(s) after {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn signal(&self, sig: &str) {
        let status = within(
            STEP,
            "kill",
            Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(self.pid.to_string())
                .status(),
        )
        .await
        .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid);
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for switchyard"),
            Err(_) => panic!(
                "switchyard still running {limit:?} after SIGTERM:\n{}",
                self.log()
            ),
        }
    }
    /// Rewrites the config file; with `keep_mtime` the file keeps its previous modification time,
    /// so only a signal can make the proxy notice. The new file is put in place with a rename, so
    /// the proxy never reads a half-written one.
    pub fn rewrite(&self, text: &str, keep_mtime: bool) {
        let old = std::fs::metadata(&self.config)
            .and_then(|m| m.modified())
            .expect("mtime");
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write config");
        if keep_mtime {
            set_mtime(&tmp, old);
        }
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }
}

fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .expect("set mtime");
}

/// Serialises `cfg` as the binary will read it (and checks it reads back the same).
pub fn to_toml(cfg: &Config) -> String {
    let text = toml::to_string(cfg).expect("serialise config");
    let back = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(&back, cfg, "config round-trips through TOML");
    text
}

pub fn write_config(path: &Path, cfg: &Config) {
    std::fs::write(path, to_toml(cfg)).expect("write config");
}

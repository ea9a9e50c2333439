//! [`Etcd`]: one real etcd member (Debian's `etcd-server`, etcd 3.4) in its own temp dir on free
//! loopback ports, the distributed configuration store of a [`crate::PatroniCluster`]. This module
//! owns its start (with retries when another process steals a port), its health wait, the
//! few v3 gateway calls the fixture needs, and killing it on drop.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::server::HOST;
use crate::{FixtureError, cmd, free_port, http};

/// How long etcd may take to answer `/health` with `true`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts at starting on fresh ports when another process stole ours.
const START_ATTEMPTS: u32 = 3;

/// Deadline of one HTTP call to etcd.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a killed etcd may take to be reaped.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Lines of the etcd log quoted in errors.
const LOG_TAIL_LINES: usize = 30;

/// One running etcd member, serving clients on `http://127.0.0.1:PORT` (Patroni talks to it
/// through the v3 API's JSON gateway: its `etcd3` DCS). It lives in a temp dir (`data*/`,
/// `etcd.log`); dropping it kills it (`SIGKILL`) and removes the directory. Drop never panics.
#[derive(Debug)]
pub struct Etcd {
    dir: TempDir,
    client_port: u16,
    child: Child,
}

/// Why one start attempt failed.
enum Failure {
    /// The log says a port was already taken: try again on new ones.
    PortClash,
    /// Anything else.
    Fatal(FixtureError),
}

impl Etcd {
    /// Starts one etcd member in a new temp dir on free client and peer ports on `127.0.0.1`,
    /// and waits (up to 30 s) until `GET /health` says `true`. Retries on new ports (3 attempts
    /// in all) when the log says a port was taken. Errors quote the end of `etcd.log`.
    pub fn start() -> Result<Etcd, FixtureError> {
        let root = cmd::scratch_root();
        let dir = tempfile::Builder::new()
            .prefix("switchyard-etcd-")
            .tempdir_in(&root)
            .map_err(|e| FixtureError::io("create temp dir in", &root, e))?;
        let log = dir.path().join("etcd.log");
        let mut attempt = 1;
        loop {
            let client_port = free_port();
            let peer_port = loop {
                let port = free_port();
                if port != client_port {
                    break port;
                }
            };
            let data = dir.path().join(format!("data{attempt}"));
            let log_offset = fs::metadata(&log).map_or(0, |m| m.len());
            let mut child = spawn(dir.path(), &data, &log, client_port, peer_port)?;
            match wait_healthy(&mut child, client_port, &log, log_offset) {
                Ok(()) => {
                    return Ok(Etcd {
                        dir,
                        client_port,
                        child,
                    });
                }
                Err(failure) => {
                    kill_and_reap(&mut child);
                    match failure {
                        Failure::PortClash if attempt < START_ATTEMPTS => attempt += 1,
                        Failure::PortClash => {
                            return Err(start_error(&log, port_clash(client_port, peer_port)));
                        }
                        Failure::Fatal(e) => return Err(start_error(&log, e)),
                    }
                }
            }
        }
    }

    /// `http://127.0.0.1:PORT`, where clients (Patroni) reach it.
    pub fn client_url(&self) -> String {
        format!("http://{HOST}:{}", self.client_port)
    }

    /// The client port on `127.0.0.1`.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// etcd's log file (its stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// How many keys start with `prefix` (a v3 range count through the JSON gateway).
    pub(crate) fn count_keys(&self, prefix: &str) -> Result<u64, FixtureError> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let body = format!(
            r#"{{"key":"{}","range_end":"{}","count_only":true}}"#,
            base64(prefix.as_bytes()),
            base64(&end)
        );
        let what = format!("POST {}/v3/kv/range", self.client_url());
        let reply = http::post_json(self.client_port, "/v3/kv/range", &body, HTTP_TIMEOUT)
            .map_err(|source| FixtureError::Spawn {
                command: what.clone(),
                source,
            })?;
        if reply.status != 200 {
            return Err(FixtureError::BadOutput {
                command: what,
                output: format!("HTTP {}: {}", reply.status, reply.body),
            });
        }
        // proto3 JSON leaves out zero values: no "count" means none.
        let Some((_, rest)) = reply.body.split_once(r#""count":""#) else {
            return Ok(0);
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().map_err(|_| FixtureError::BadOutput {
            command: what,
            output: reply.body.clone(),
        })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
        // The TempDir field removes the directory (ignoring errors) when dropped after this.
    }
}

/// Starts etcd as a single-member cluster, its output appended to `log`.
fn spawn(
    dir: &Path,
    data: &Path,
    log: &Path,
    client_port: u16,
    peer_port: u16,
) -> Result<Child, FixtureError> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| FixtureError::io("open", log, e))?;
    let err = out
        .try_clone()
        .map_err(|e| FixtureError::io("duplicate handle of", log, e))?;
    let client = format!("http://{HOST}:{client_port}");
    let peer = format!("http://{HOST}:{peer_port}");
    let token = dir.file_name().map_or_else(
        || "switchyard".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut etcd = Command::new("etcd");
    etcd.arg("--name=switchyard")
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=switchyard={peer}"))
        .arg("--initial-cluster-state=new")
        .arg(format!("--initial-cluster-token={token}"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let command = cmd::describe(&etcd);
    etcd.spawn()
        .map_err(|source| FixtureError::Spawn { command, source })
}

/// Polls `/health` until it says `true`; fails if etcd exits or the deadline passes.
fn wait_healthy(
    child: &mut Child,
    client_port: u16,
    log: &Path,
    log_offset: u64,
) -> Result<(), Failure> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            if log_since(log, log_offset).contains("address already in use") {
                return Err(Failure::PortClash);
            }
            return Err(Failure::Fatal(FixtureError::WaitTimeout {
                what: "etcd to become healthy",
                timeout: START_TIMEOUT,
                last: format!("etcd exited early ({status})"),
            }));
        }
        let last = match http::get(client_port, "/health", HTTP_TIMEOUT) {
            Ok(r) if r.status == 200 && r.body.contains("true") => return Ok(()),
            Ok(r) => format!("HTTP {}: {}", r.status, r.body.trim()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(Failure::Fatal(FixtureError::WaitTimeout {
                what: "etcd to become healthy",
                timeout: START_TIMEOUT,
                last,
            }));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn port_clash(client_port: u16, peer_port: u16) -> FixtureError {
    FixtureError::WaitTimeout {
        what: "etcd to find free ports",
        timeout: START_TIMEOUT,
        last: format!("ports {client_port}/{peer_port} already in use, {START_ATTEMPTS} attempts"),
    }
}

fn start_error(log: &Path, cause: FixtureError) -> FixtureError {
    FixtureError::Manager {
        what: "etcd did not start".to_owned(),
        cause: Box::new(cause),
        logs: format!(
            "--- last lines of {} ---\n{}",
            log.display(),
            tail(log, LOG_TAIL_LINES)
        ),
    }
}

/// `SIGKILL`s `child` (if still running) and reaps it, giving up after [`EXIT_TIMEOUT`].
pub(crate) fn kill_and_reap(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = child.kill();
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The log's text from byte `offset` on.
fn log_since(log: &Path, offset: u64) -> String {
    let bytes = fs::read(log).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Standard base64 with padding, as etcd's JSON gateway wants keys.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }
}

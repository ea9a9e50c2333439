//! Running the external client programs of `tests/clients.rs` (psql, pgbench, Python) with a
//! clean environment, bounded waits and readable failures.

use crate::common::{STEP, within};
use crate::json::Json;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python interpreter that has psycopg 3; fails (never skips) when there is none.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SWITCHYARD_PYTHON").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.components().count() == 1 || p.exists(),
            "SWITCHYARD_PYTHON={} does not exist; run scripts/setup or fix the variable",
            p.display()
        );
        return p;
    }
    let venv = workspace_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python for the psycopg client tests: {} does not exist. Run scripts/setup (it creates \
         .venv with psycopg[binary]), or point SWITCHYARD_PYTHON at a Python that has psycopg 3.",
        venv.display()
    );
    venv
}

/// A command with no `PG*` variables from the environment (libpq, psql and pgbench read them).
pub fn clean_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A PostgreSQL 15 client program (psql, pgbench).
pub fn pg_program(name: &str) -> Command {
    clean_command(switchyard_localpg::pg_bin_dir().join(name))
}

pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn expect_success(self, what: &str) -> Self {
        assert!(
            self.status.success(),
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Collects everything `pipe` yields into `buf`, so it can be shown even if the program hangs.
fn collect(
    pipe: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
    buf: Arc<Mutex<Vec<u8>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(mut pipe) = pipe else { return };
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
            buf.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    })
}

fn text(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// Runs `cmd` to completion within `limit`, feeding it `stdin` if given. A program still running
/// at the limit is killed and the test fails with what it printed so far.
pub async fn run(mut cmd: Command, stdin: Option<&[u8]>, limit: Duration, what: &str) -> Ran {
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    let (out, err) = (Arc::default(), Arc::default());
    let readers = [
        collect(child.stdout.take(), Arc::clone(&out)),
        collect(child.stderr.take(), Arc::clone(&err)),
    ];
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        within(STEP, "write stdin", pipe.write_all(input))
            .await
            .expect("write stdin");
    }
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.expect("wait for program"),
        Err(_) => {
            let _ = child.kill().await;
            panic!(
                "timed out after {limit:?}: {what}\n--- stdout so far\n{}\n--- stderr so far\n{}",
                text(&out),
                text(&err)
            );
        }
    };
    for reader in readers {
        within(STEP, "program output", reader)
            .await
            .expect("output reader");
    }
    Ran {
        status,
        stdout: text(&out),
        stderr: text(&err),
    }
}

/// Runs `tests/clients/<script>` with `args`; returns the JSON object it printed last.
pub async fn run_python(script: &str, args: &[&str], limit: Duration) -> Json {
    let mut cmd = clean_command(python());
    cmd.env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(clients_dir().join(script))
        .args(args);
    let ran = run(cmd, None, limit, script).await;
    if ran.stderr.contains("No module named 'psycopg'") {
        panic!(
            "psycopg is not installed for {:?}; run scripts/setup",
            python()
        );
    }
    last_json(ran.expect_success(script), script)
}

/// The JSON object a program printed last.
pub fn last_json(ran: Ran, what: &str) -> Json {
    let line = ran.stdout.lines().rev().find(|l| !l.trim().is_empty());
    let line = line.unwrap_or_else(|| panic!("{what} printed nothing; stderr:\n{}", ran.stderr));
    Json::parse(line).unwrap_or_else(|e| panic!("{what}: {e} in {line:?}"))
}

pub fn read_expected(name: &str) -> String {
    let path = clients_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

//! Running external programs with a deadline, as the `postgres` user when we are root, plus the
//! small file-system helpers (ownership, modes) that running as another user needs.

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::FixtureError;

/// The OS user that runs PostgreSQL when the tests run as root.
pub(crate) const PG_USER: &str = "postgres";

/// How long ordinary helper commands (`cp`, `chown`, `kill`) may take.
pub(crate) const SHORT: Duration = Duration::from_secs(30);

/// What a successful command printed.
pub(crate) struct Output {
    pub stdout: String,
}

/// Whether this process runs as root (effective uid 0), cached after the first `id -u`.
pub(crate) fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let mut cmd = Command::new("id");
        cmd.arg("-u");
        run(cmd, SHORT).is_ok_and(|out| out.stdout.trim() == "0")
    })
}

/// Where the fixture makes its directories: `/tmp` when root (it must be traversable by the
/// `postgres` user), else the usual temp dir.
pub(crate) fn scratch_root() -> PathBuf {
    if running_as_root() {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    }
}

/// A command for the PostgreSQL program `name` (from [`crate::pg_bin_dir`]) that runs as the
/// `postgres` user when we are root. Its working directory is `/`, which every user can enter.
pub(crate) fn pg_command(name: &str) -> Command {
    let program = crate::pg_bin_dir().join(name);
    let mut cmd = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.current_dir("/");
    cmd
}

/// The command line of `cmd`, for error messages. Do not use for commands holding secrets.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` to completion within `timeout`, failing on a non-zero exit.
pub(crate) fn run(cmd: Command, timeout: Duration) -> Result<Output, FixtureError> {
    let label = describe(&cmd);
    run_labelled(cmd, &label, timeout)
}

/// Like [`run`], naming the command `label` in errors (to keep SQL and passwords out of them).
pub(crate) fn run_labelled(
    mut cmd: Command,
    label: &str,
    timeout: Duration,
) -> Result<Output, FixtureError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| FixtureError::Spawn {
        command: label.to_owned(),
        source,
    })?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let Some(status) = wait_with_deadline(&mut child, timeout) else {
        // Readers may block on a grandchild still holding the pipes: leave them be.
        return Err(FixtureError::CommandTimeout {
            command: label.to_owned(),
            timeout,
        });
    };
    let stdout = join_text(stdout);
    let stderr = join_text(stderr);
    if status.success() {
        return Ok(Output { stdout });
    }
    let detail = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    Err(FixtureError::Command {
        command: label.to_owned(),
        status,
        stderr: detail.trim().to_owned(),
    })
}

/// Reads a pipe to the end on a helper thread.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<Vec<u8>>> {
    pipe.map(|mut p| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            buf
        })
    })
}

fn join_text(handle: Option<JoinHandle<Vec<u8>>>) -> String {
    let bytes = handle.and_then(|h| h.join().ok()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Waits for `child` until `timeout`; on expiry kills and reaps it and returns `None`.
fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Runs a plain system tool (`cp`, `chown`, `kill`, ...) with [`SHORT`] as its deadline.
pub(crate) fn tool<I, S>(program: &str, args: I) -> Result<Output, FixtureError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    run(cmd, SHORT)
}

/// Gives `path` (recursively) to the `postgres` user when we are root; no-op otherwise.
pub(crate) fn give_to_pg_user(path: &Path) -> Result<(), FixtureError> {
    if running_as_root() {
        tool(
            "chown",
            [OsStr::new("-R"), OsStr::new("postgres:"), path.as_os_str()],
        )?;
    }
    Ok(())
}

/// Whether the user that runs PostgreSQL may create files in `dir` (always true when not root).
pub(crate) fn pg_user_can_write(dir: &Path) -> bool {
    if !running_as_root() {
        return true;
    }
    let mut test = Command::new("runuser");
    test.args(["-u", PG_USER, "--", "test", "-w"])
        .arg(dir)
        .current_dir("/");
    run(test, SHORT).is_ok()
}

/// Sets the permission bits of `path` (e.g. `0o700`).
pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), FixtureError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| FixtureError::io("chmod", path, e))
}

/// Creates directory `path` (and parents) and sets its mode.
pub(crate) fn make_dir(path: &Path, mode: u32) -> Result<(), FixtureError> {
    fs::create_dir_all(path).map_err(|e| FixtureError::io("create directory", path, e))?;
    set_mode(path, mode)
}

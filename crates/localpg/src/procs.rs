//! Process-tree inspection through `/proc` and signal delivery through the `kill` program (so the
//! crate needs no `unsafe`). Linux only, like the rest of the fixture.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::FixtureError;
use crate::cmd::{self, SHORT};

/// What `/proc/<pid>/stat` says about one process.
#[derive(Debug, Clone, Copy)]
struct Stat {
    ppid: u32,
    state: char,
}

/// Parses `/proc/<pid>/stat`; `None` if the process is gone.
fn stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything: split after it.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Stat { ppid, state })
}

/// Whether `pid` exists and has not exited (zombies count as dead).
pub(crate) fn is_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
}

/// Whether `pid` is stopped by a signal (or gone, which is as good for a freeze).
fn is_stopped_or_gone(pid: u32) -> bool {
    stat(pid).is_none_or(|s| matches!(s.state, 'T' | 'Z' | 'X' | 'x'))
}

/// The working directory of `pid` (the postmaster's is its data directory).
pub(crate) fn cwd(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// The command line of `pid`, arguments joined by spaces (`None` if it is gone).
pub(crate) fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(args.join(" "))
}

/// The postmaster running in `data_dir`: line 1 of its `postmaster.pid`, checked to be a live
/// process whose working directory is that data directory (so a stale file never names a
/// stranger).
pub(crate) fn postmaster_of(data_dir: &Path) -> Result<u32, FixtureError> {
    let not_running = |detail: String| FixtureError::NotRunning {
        data_dir: data_dir.to_owned(),
        detail,
    };
    let path = data_dir.join("postmaster.pid");
    let text = fs::read_to_string(&path).map_err(|e| not_running(format!("{e}")))?;
    let first = text.lines().next().unwrap_or_default().trim();
    let pid: u32 = first
        .parse()
        .map_err(|_| not_running(format!("bad pid {first:?} in postmaster.pid")))?;
    let ours = fs::canonicalize(data_dir).ok();
    if is_alive(pid) && cwd(pid).is_some_and(|cwd| Some(cwd) == ours) {
        Ok(pid)
    } else {
        Err(not_running(format!("stale postmaster.pid (pid {pid})")))
    }
}

/// Living processes whose working directory is `dir` or below it (PostgreSQL's processes work
/// in their data directory), for a last sweep when a pid file can no longer be trusted.
pub(crate) fn working_in(dir: &Path) -> Vec<u32> {
    let Ok(dir) = fs::canonicalize(dir) else {
        return Vec::new();
    };
    all_pids()
        .into_iter()
        .filter(|&p| is_alive(p) && cwd(p).is_some_and(|c| c.starts_with(&dir)))
        .collect()
}

/// `root` and all its living descendants, parents before children.
pub(crate) fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in all_pids() {
        if let Some(s) = stat(pid).filter(|s| !matches!(s.state, 'Z' | 'X' | 'x')) {
            children.entry(s.ppid).or_default().push(pid);
        }
    }
    let mut out = vec![root];
    let mut next = 0;
    while let Some(&pid) = out.get(next) {
        out.extend(children.get(&pid).into_iter().flatten().copied());
        next += 1;
    }
    out
}

fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Sends `signal` (e.g. `"STOP"`) to `pids` with `kill`. Best effort: processes that exited in
/// the meantime are not an error; callers verify the outcome through `/proc`.
pub(crate) fn signal(signal: &str, pids: &[u32]) -> Result<(), FixtureError> {
    if pids.is_empty() {
        return Ok(());
    }
    let mut kill = Command::new("kill");
    kill.args(["-s", signal, "--"]);
    kill.args(pids.iter().map(u32::to_string));
    match cmd::run(kill, SHORT) {
        Ok(_) | Err(FixtureError::Command { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Stops `root` and all its descendants, repeating until a scan finds the whole tree stopped (to
/// catch processes forked while the first signals were in flight).
pub(crate) fn freeze_tree(root: u32, timeout: Duration) -> Result<(), FixtureError> {
    let deadline = Instant::now() + timeout;
    loop {
        let running: Vec<u32> = tree(root)
            .into_iter()
            .filter(|&p| !is_stopped_or_gone(p))
            .collect();
        if running.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(FixtureError::WaitTimeout {
                what: "the server's processes to stop (SIGSTOP)",
                timeout,
                last: format!("still running: {running:?}"),
            });
        }
        signal("STOP", &running)?;
        thread::sleep(Duration::from_millis(10));
    }
}

/// Continues `root` and all its descendants (twice, for good measure; it is idempotent).
pub(crate) fn thaw_tree(root: u32) -> Result<(), FixtureError> {
    for _ in 0..2 {
        signal("CONT", &tree(root))?;
    }
    Ok(())
}

/// Freezes the tree (so nothing forks behind our back), `SIGKILL`s it, and waits for it to die.
pub(crate) fn kill_tree(root: u32, timeout: Duration) -> Result<(), FixtureError> {
    freeze_tree(root, timeout)?;
    let pids = tree(root);
    signal("KILL", &pids)?;
    wait_dead(&pids, timeout)
}

/// Waits until none of `pids` is alive.
pub(crate) fn wait_dead(pids: &[u32], timeout: Duration) -> Result<(), FixtureError> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| is_alive(p)).collect();
        if alive.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(FixtureError::WaitTimeout {
                what: "the server's processes to exit",
                timeout,
                last: format!("still alive: {alive:?}"),
            });
        }
        thread::sleep(Duration::from_millis(10));
    }
}

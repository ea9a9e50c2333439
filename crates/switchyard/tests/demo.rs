//! `switchyard demo` as a user runs it: the real binary starts a primary, a streaming standby and
//! the proxy in a state directory; writes through the proxy reach the standby; a second demo on
//! the same directory is refused; SIGINT stops everything it started; a second run finds the
//! data again.

mod common;

use common::{connect, within};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use switchyard_localpg::free_port;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Longest a demo may take to be ready (a cold start may build the initdb template first).
const READY: Duration = Duration::from_secs(90);

/// Longest a demo may take to stop after SIGINT, or to refuse to start.
const EXIT: Duration = Duration::from_secs(30);

/// The demo's ports: proxy, primary, standby.
#[derive(Clone, Copy)]
struct Ports {
    proxy: u16,
    primary: u16,
    standby: u16,
}

/// A running `switchyard demo` and the file its stderr goes to.
struct Demo {
    child: Child,
    pid: u32,
    log: PathBuf,
    /// What it printed when ready, from the ready line to the last ("Ctrl-C stops ...").
    printed: String,
}

fn command(state: &Path, ports: Ports) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("demo")
        .arg("--state-dir")
        .arg(state)
        .args(["--listen", &format!("127.0.0.1:{}", ports.proxy)])
        .args(["--primary-port", &ports.primary.to_string()])
        .args(["--standby-port", &ports.standby.to_string()])
        .env("SWITCHYARD_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Starts a demo and waits for its ready line; panics with its stderr if it never comes.
async fn start_demo(state: &Path, ports: Ports, log: PathBuf) -> Demo {
    let stderr = std::fs::File::create(&log).expect("create log");
    let mut child = command(state, ports)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn switchyard demo");
    let pid = child.id().expect("pid");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = String::new();
    let ready = tokio::time::timeout(READY, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("switchyard demo: ready") || !printed.is_empty() {
                printed.push_str(&line);
                printed.push('\n');
            }
            if line.starts_with("Ctrl-C stops") && !printed.is_empty() {
                return true;
            }
        }
        false
    })
    .await;
    if ready != Ok(true) {
        let _ = child.start_kill();
        panic!(
            "no ready line within {READY:?} (exited: {:?}); stderr:\n{}",
            ready.is_ok(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    // Keep reading, so the demo never writes to a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Demo {
        child,
        pid,
        log,
        printed,
    }
}

/// Sends SIGINT and asserts the demo exits 0 within [`EXIT`].
async fn interrupt(mut demo: Demo) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &demo.pid.to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let exit = within(EXIT, "the demo to exit after SIGINT", demo.child.wait())
        .await
        .expect("wait");
    let stderr = std::fs::read_to_string(&demo.log).unwrap_or_default();
    assert!(exit.success(), "demo exited with {exit}; stderr:\n{stderr}");
}

/// The postmaster pid of the server in `<state>/<role>/data`.
fn postmaster_pid(state: &Path, role: &str) -> u32 {
    let path = state.join(role).join("data/postmaster.pid");
    let text = std::fs::read_to_string(&path).expect("postmaster.pid");
    text.lines()
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .expect("pid")
}

/// Whether `pid` is gone (a zombie waiting for init counts as gone).
fn is_dead(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')').next().unwrap_or("").trim().starts_with('Z')
    })
}

/// Polls `sql` (one count) on `conninfo` until it returns `want`, bounded by [`within`].
async fn wait_for_count(conninfo: &str, sql: &str, want: i64) {
    within(
        Duration::from_secs(20),
        "the standby to see the row",
        async {
            loop {
                if let Ok(client) = connect(conninfo).await
                    && let Ok(row) = client.query_one(sql, &[]).await
                    && row.get::<_, i64>(0) == want
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
}

fn conninfo(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname=postgres")
}

/// The demo prints how to reach the admin console, and its user may use it.
async fn check_console(demo: &Demo, proxy: u16) {
    let line = format!("psql -h 127.0.0.1 -p {proxy} -U postgres switchyard");
    assert!(
        demo.printed.contains(&line),
        "the demo prints `{line}`; it printed:\n{}",
        demo.printed
    );
    let console = connect(&conninfo(proxy).replace("dbname=postgres", "dbname=switchyard"))
        .await
        .expect("connect to the admin console");
    for show in ["SHOW POOLS", "SHOW CLUSTERS", "SHOW INCIDENTS"] {
        within(Duration::from_secs(10), show, console.simple_query(show))
            .await
            .unwrap_or_else(|e| panic!("{show} on the demo's console: {e}"));
    }
    let clusters = within(
        Duration::from_secs(10),
        "SHOW CLUSTERS",
        console.simple_query("SHOW CLUSTERS"),
    )
    .await
    .expect("SHOW CLUSTERS");
    let rows = clusters
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert!(rows >= 1, "SHOW CLUSTERS lists the demo's cluster");
}

#[tokio::test]
async fn demo_starts_refuses_a_second_stops_cleanly_and_keeps_its_data() {
    let state = tempfile::Builder::new()
        .prefix("switchyard-demo-test-")
        .tempdir_in("/tmp")
        .expect("state dir");
    // PostgreSQL runs as `postgres` when the tests run as root: it must be able to enter.
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let dir = state.path();
    let ports = Ports {
        proxy: free_port(),
        primary: free_port(),
        standby: free_port(),
    };
    let demo = start_demo(dir, ports, dir.join("demo1.log")).await;

    let client = connect(&conninfo(ports.proxy))
        .await
        .expect("connect through the proxy");
    let write = "CREATE TABLE demo_kept (x int); INSERT INTO demo_kept VALUES (1)";
    within(
        Duration::from_secs(20),
        "create and insert",
        client.batch_execute(write),
    )
    .await
    .expect("create and insert through the proxy");
    drop(client);
    check_console(&demo, ports.proxy).await;
    wait_for_count(
        &conninfo(ports.standby),
        "SELECT count(*) FROM demo_kept",
        1,
    )
    .await;

    let second = command(dir, ports)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let second = within(EXIT, "a second demo to give up", second)
        .await
        .expect("run");
    let said = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "second demo: {said}");
    let running = format!("a demo is already running (pid {})", demo.pid);
    assert!(said.contains(&running), "second demo said: {said}");

    let pids = [
        postmaster_pid(dir, "primary"),
        postmaster_pid(dir, "standby"),
    ];
    interrupt(demo).await;
    for (role, pid) in ["primary", "standby"].into_iter().zip(pids) {
        // pg_ctl's wait ends when postmaster.pid is gone, a moment before the process.
        let what = format!("the {role} (pid {pid}) to exit");
        within(Duration::from_secs(10), &what, async {
            while !is_dead(pid) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let pid_file = dir.join(role).join("data/postmaster.pid");
        assert!(!pid_file.exists(), "{} is left", pid_file.display());
    }

    // Again on the same directory: the data is still there.
    let demo = start_demo(dir, ports, dir.join("demo2.log")).await;
    let client = connect(&conninfo(ports.proxy))
        .await
        .expect("connect again");
    let count = within(
        Duration::from_secs(20),
        "count",
        client.query_one("SELECT count(*) FROM demo_kept", &[]),
    )
    .await
    .expect("the table survived");
    assert_eq!(count.get::<_, i64>(0), 1);
    drop(client);
    interrupt(demo).await;
}

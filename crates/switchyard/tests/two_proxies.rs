//! Two Switchyards in front of one cluster, behind a TCP load balancer (HAProxy from Debian,
//! as in `examples/haproxy.cfg`): when one instance is killed, only its own clients lose their
//! connections (and reconnect through the balancer at once); the other instance's clients are
//! untouched. (That two instances never disagree about the primary follows from each deciding
//! from evidence alone: `fencing.rs` shows it for one; nothing is shared between them.)

mod common;

use common::served::Served;
use common::*;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use switchyard_config::PoolMode;
use tokio::process::{Child, Command};
use tokio_postgres::Client;

/// HAProxy from Debian's package.
const HAPROXY: &str = "/usr/sbin/haproxy";

/// The example configuration with its three ports filled in.
fn haproxy_config(front: u16, a: u16, b: u16) -> String {
    let example = include_str!("../../../examples/haproxy.cfg");
    example
        .replace("127.0.0.1:6432", &format!("127.0.0.1:{front}"))
        .replace("10.0.0.11:6432", &format!("127.0.0.1:{a}"))
        .replace("10.0.0.12:6432", &format!("127.0.0.1:{b}"))
}

/// Starts HAProxy in the foreground on `config`, waiting until it accepts on `port`.
async fn start_haproxy(dir: &Path, config: &str, port: u16) -> Child {
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).expect("write haproxy.cfg");
    let check = std::process::Command::new(HAPROXY)
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("run haproxy -c (scripts/setup installs it)");
    assert!(
        check.status.success(),
        "haproxy -c refuses the example:\n{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let log = dir.join("haproxy.log");
    let mut child = Command::new(HAPROXY)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start haproxy");
    let deadline = Instant::now() + STEP;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        let exited = child.try_wait().ok().flatten();
        let why = || std::fs::read_to_string(&log).unwrap_or_default();
        assert!(exited.is_none(), "haproxy exited ({exited:?}):\n{}", why());
        assert!(
            Instant::now() < deadline,
            "haproxy does not listen:\n{}",
            why()
        );
        // A poll interval, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child
}

/// How many clients of database `app` the instance on `port` has (SHOW CLIENTS).
async fn clients_of(port: u16) -> usize {
    let console = format!("host=127.0.0.1 port={port} user=postgres dbname=switchyard");
    let c = within(STEP, "console", connect(&console))
        .await
        .expect("console");
    let rows = within(STEP, "SHOW CLIENTS", c.simple_query("SHOW CLIENTS"))
        .await
        .expect("SHOW CLIENTS");
    rows.iter()
        .filter(|m| {
            matches!(m, tokio_postgres::SimpleQueryMessage::Row(r)
                if r.try_get("database").ok().flatten() == Some("app"))
        })
        .count()
}

async fn one(c: &Client) -> Result<i32, tokio_postgres::Error> {
    within(STEP, "query", c.query_one("SELECT 1", &[]))
        .await
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_instance_touches_only_its_own_clients() {
    let pg = start_pg();
    let mut cfg = config_for(&pg, PoolMode::Transaction);
    cfg.admin.users = vec!["postgres".into()];
    let a = Served::start(cfg.clone()).await;
    let b = Served::start(cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let front = switchyard_localpg::free_port();
    let _haproxy = start_haproxy(dir.path(), &haproxy_config(front, a.port, b.port), front).await;
    let info = format!("host=127.0.0.1 port={front} user=postgres dbname=app connect_timeout=5");
    // Round robin: half the clients on each instance.
    let mut clients = Vec::new();
    for _ in 0..6 {
        let c = within(STEP, "connect", connect(&info))
            .await
            .expect("connect");
        assert_eq!(one(&c).await.expect("first query"), 1);
        clients.push(c);
    }
    // Which of them the balancer gave to A, from A's own console.
    let on_a = clients_of(a.port).await;
    assert!(
        (1..6).contains(&on_a),
        "the balancer used both instances: {on_a} on A"
    );
    a.signal("KILL").await;
    let mut lost = 0;
    for c in &clients {
        match one(c).await {
            Ok(1) => {}
            Ok(other) => panic!("SELECT 1 gave {other}"),
            // The killed instance's clients see their connection closed, as with any server
            // that dies; nothing else.
            Err(e) => {
                assert!(e.is_closed() || e.code().is_none(), "{e:?}");
                lost += 1;
            }
        }
    }
    assert_eq!(
        lost, on_a,
        "only the killed instance's clients lose their connections"
    );
    // They reconnect through the balancer at once (to the instance still up).
    for _ in 0..lost {
        let c = within(STEP, "reconnect", connect(&info))
            .await
            .expect("reconnect");
        assert_eq!(one(&c).await.expect("query after reconnecting"), 1);
    }
    // And the others go on.
    for c in clients.iter().filter(|c| !c.is_closed()) {
        assert_eq!(one(c).await.expect("untouched"), 1);
    }
    drop(b);
}

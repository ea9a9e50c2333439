//! `switchyard drill` as an operator runs it, shortened: the real binary, both paths, a real
//! freeze of both primaries and a real promotion. Through Switchyard nothing may be stuck and no
//! acknowledged write lost; the direct path's figures must be reported (not required to be bad).
//! A drill interrupted with SIGINT stops everything it started.

mod common;

use common::within;
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Longest a short drill may take, cold start (initdb template) included.
const DRILL: Duration = Duration::from_secs(150);

fn drill(out: &Path, fault: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["drill", "--fault", fault, "--sites", "4", "--warmup", "2s"])
        .args([
            "--promote-after",
            "4s",
            "--observe",
            "4s",
            "--think-time",
            "50ms",
        ])
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

fn path<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["paths"]
        .as_array()
        .and_then(|paths| paths.iter().find(|p| p["path"] == name))
        .unwrap_or_else(|| panic!("no {name} path in {report:#}"))
}

#[tokio::test]
async fn a_short_freeze_drill_shows_nothing_stuck_through_switchyard() {
    let out = tempfile::tempdir().unwrap();
    let output = within(DRILL, "the drill", drill(out.path(), "freeze").output())
        .await
        .expect("the drill runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "drill failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("through Switchyard"),
        "text report on stdout:\n{stdout}"
    );

    let json = std::fs::read_to_string(out.path().join("report.json")).unwrap();
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["fault"], "freeze");
    let sy = path(&report, "switchyard");
    assert_eq!(sy["stuck"], 0, "{sy:#}");
    assert_eq!(sy["lost_writes"], 0, "{sy:#}");
    assert!(sy["acked_writes"].as_u64().unwrap() > 0, "{sy:#}");
    assert!(sy["first_write_after_fault_s"].as_f64().is_some(), "{sy:#}");
    assert_eq!(sy["sites_recovered"], 4, "{sy:#}");
    let stages: Vec<&str> = sy["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["stage"].as_str())
        .collect();
    assert_eq!(stages.last(), Some(&"Resolved"), "{sy:#}");

    let direct = path(&report, "direct");
    for field in [
        "stuck",
        "longest_stall_s",
        "acked_writes",
        "errors_by_sqlstate",
        "timeline",
    ] {
        assert!(
            !direct[field].is_null(),
            "direct path lacks {field}: {direct:#}"
        );
    }
    let svg = std::fs::read_to_string(out.path().join("latency.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("through Switchyard"),
        "chart"
    );
}

/// The proxy's and its cluster's ports, from the config the drill wrote.
fn ports_in(config: &str) -> Vec<u16> {
    config
        .split('"')
        .filter_map(|s| s.strip_prefix("127.0.0.1:")?.parse().ok())
        .collect()
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

#[tokio::test]
async fn an_interrupted_drill_stops_everything_it_started() {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = drill(out.path(), "freeze");
    cmd.stderr(Stdio::piped()).stdout(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    within(DRILL, "the fault", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("freeze of both primaries") {
                return;
            }
        }
        panic!("the drill ended before its fault");
    })
    .await;
    let config = std::fs::read_to_string(out.path().join("switchyard.toml")).unwrap();
    let ports = ports_in(&config);
    assert_eq!(ports.len(), 3, "proxy and two members in {config}");
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-s", "INT", &pid])
        .status()
        .unwrap();
    let status = within(Duration::from_secs(60), "the drill to stop", child.wait())
        .await
        .unwrap();
    assert!(!status.success(), "an interrupted drill reports failure");
    for port in ports {
        assert!(
            !listening(port),
            "port {port} still served after the drill stopped"
        );
    }
}

//! `switchyard drill` as an operator runs it, shortened: the real binary, both paths, a real
//! freeze of both primaries and a real promotion. Through Switchyard nothing may be stuck and no
//! acknowledged write lost; the direct path's figures must be reported (not required to be bad).
//! A drill interrupted with SIGINT stops everything it started.

mod common;

use common::{STEP, within};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStderr, Command};

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

/// Reads the drill's progress lines until it reports its fault.
async fn wait_for_fault(lines: &mut Lines<BufReader<ChildStderr>>) {
    within(DRILL, "the fault", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("freeze of both primaries") {
                return;
            }
        }
        panic!("the drill ended before its fault");
    })
    .await;
}

fn path<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["paths"]
        .as_array()
        .and_then(|paths| paths.iter().find(|p| p["path"] == name))
        .unwrap_or_else(|| panic!("no {name} path in {report:#}"))
}

/// What a finished drill left: its text report, the proxy's config and the JSON report.
struct Ran {
    stdout: String,
    config: String,
    report: Value,
}

/// Runs a drill to its end (it must succeed) and reads what it wrote into `out`.
async fn run_drill(mut cmd: Command, out: &Path) -> Ran {
    let output = within(DRILL, "the drill", cmd.output())
        .await
        .expect("the drill runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "drill failed:\n{stdout}\n{stderr}");
    let config = std::fs::read_to_string(out.join("switchyard.toml")).unwrap();
    let json = std::fs::read_to_string(out.join("report.json")).unwrap();
    Ran {
        stdout,
        config,
        report: serde_json::from_str(&json).unwrap(),
    }
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

#[tokio::test]
async fn a_dns_drill_follows_the_name_to_the_promoted_standby() {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = drill(out.path(), "crash");
    cmd.args(["--topology", "dns"]);
    let Ran {
        stdout,
        config,
        report,
    } = run_drill(cmd, out.path()).await;
    assert!(stdout.contains("one DNS name"), "{stdout}");
    assert!(
        config.contains("endpoint = \"db.drill-switchyard.test:"),
        "{config}"
    );
    assert!(config.contains("members = []"), "{config}");
    assert_eq!(report["topology"], "dns");
    let sy = path(&report, "switchyard");
    assert_eq!(sy["stuck"], 0, "{sy:#}");
    assert_eq!(sy["lost_writes"], 0, "{sy:#}");
    assert_eq!(sy["sites_recovered"], 4, "{sy:#}");
    assert!(sy["first_write_after_fault_s"].as_f64().is_some(), "{sy:#}");
}

/// `--sessions`: session pooling, each backend's session holding a setting and a prepared
/// statement its reads use. Through Switchyard every session is rebuilt on the promoted
/// standby: the only errors are those of requests in flight (08007, 40001), none says the
/// session or its state was lost.
#[tokio::test]
async fn a_session_drill_keeps_every_session() {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = drill(out.path(), "crash");
    cmd.arg("--sessions");
    let Ran {
        stdout,
        config,
        report,
    } = run_drill(cmd, out.path()).await;
    assert!(stdout.contains("session pooling"), "{stdout}");
    assert!(config.contains("mode = \"session\""), "{config}");
    assert_eq!(report["sessions"], true);
    let sy = path(&report, "switchyard");
    assert_eq!(sy["stuck"], 0, "{sy:#}");
    assert_eq!(sy["lost_writes"], 0, "{sy:#}");
    assert_eq!(sy["sites_recovered"], 4, "{sy:#}");
    let errors = sy["errors_by_sqlstate"].as_object().expect("errors");
    // What the proxy said of sessions, for a failure's message (a `connection` error has no
    // SQLSTATE to say more).
    let log = std::fs::read_to_string(out.path().join("switchyard.log")).unwrap_or_default();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("session"))
        .collect();
    for code in errors.keys() {
        assert!(
            ["08007", "40001"].contains(&code.as_str()),
            "{code}: a session or its state was lost\n{sy:#}\nproxy log:\n{}",
            said.join("\n")
        );
    }
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
    wait_for_fault(&mut lines).await;
    let config = std::fs::read_to_string(out.path().join("switchyard.toml")).unwrap();
    let ports = ports_in(&config);
    assert_eq!(
        ports.len(),
        4,
        "proxy, admin listener and two members in {config}"
    );
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

/// Where the drill's proxy serves its status page (from the config the drill wrote).
fn admin_addr(config: &str) -> String {
    let admin = config.split("[admin]").nth(1).expect("an [admin] section");
    admin
        .split('"')
        .find(|s| s.starts_with("127.0.0.1:"))
        .expect("admin listen")
        .to_owned()
}

/// Loads the status page in headless Chromium (Debian's package) and saves a screenshot as a
/// test artifact; false (with a message) where Chromium is not installed.
async fn screenshot(url: &str, name: &str) -> bool {
    let chromium = std::path::Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        eprintln!(
            "skipped screenshot {name}: /usr/bin/chromium is not installed (scripts/setup installs it)"
        );
        return false;
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join(format!("{name}.png"));
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
    ])
    .args([
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg("--window-size=1100,1400")
    .arg(format!("--screenshot={}", png.display()))
    .arg(url)
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    let status = within(Duration::from_secs(60), "chromium", cmd.status())
        .await
        .unwrap();
    assert!(status.success(), "chromium failed on {url}");
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        png.display()
    );
    eprintln!("status page screenshot: {}", png.display());
    true
}

/// Polls the drill proxy's newest incident until it is in `stage`.
async fn wait_for_stage(admin: &str, stage: &str) -> Value {
    within(Duration::from_secs(60), "the incident's stage", async {
        loop {
            if let Some(inc) = newest_incident(admin).await
                && inc["stage"] == stage
            {
                return inc;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

async fn newest_incident(admin: &str) -> Option<Value> {
    let body = http_get(admin, "/api/incidents").await?;
    let v: Value = serde_json::from_str(&body).ok()?;
    v["incidents"].get(0).cloned()
}

async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.ok()?;
    raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// During a drill, the status page shows the incident as it moves through its stages (a
/// screenshot at Investigating and at Resolved), and the drill's report carries the same record.
#[tokio::test]
async fn the_status_page_follows_a_drill_made_incident() {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "drill", "--fault", "freeze", "--sites", "3", "--warmup", "2s",
    ])
    .args(["--promote-after", "5s", "--observe", "8s"])
    .arg("--out")
    .arg(out.path())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    wait_for_fault(&mut lines).await;
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let config = std::fs::read_to_string(out.path().join("switchyard.toml")).unwrap();
    let admin = admin_addr(&config);
    let url = format!("http://{admin}/");

    let investigating = wait_for_stage(&admin, "Investigating").await;
    let page = http_get(&admin, "/").await.expect("status page");
    assert!(
        page.contains("Investigating") && page.contains("unresponsive"),
        "{page}"
    );
    screenshot(&url, "status-page-investigating").await;
    let resolved = wait_for_stage(&admin, "Resolved").await;
    assert_eq!(resolved["id"], investigating["id"]);
    let page = http_get(&admin, "/").await.expect("status page");
    assert!(
        page.contains("All systems operational") && page.contains("Resolved"),
        "{page}"
    );
    screenshot(&url, "status-page-resolved").await;
    // The metrics and the admin console tell the same story as the incident record.
    let metrics = http_get(&admin, "/metrics").await.expect("metrics");
    let console = show_incidents(proxy_port(&config)).await;

    let output = within(DRILL, "the drill", child.wait_with_output())
        .await
        .unwrap();
    assert!(output.status.success());
    let _ = within(STEP, "the drill's stderr to close", drain).await;
    let json = std::fs::read_to_string(out.path().join("report.json")).unwrap();
    let report: Value = serde_json::from_str(&json).unwrap();
    let record = &report["switchyard_incident"];
    assert_eq!(record["id"], resolved["id"], "{report:#}");
    assert_eq!(record["stage"], "Resolved");
    let sy = path(&report, "switchyard");
    let sites = record["scope"]["sites"].as_array().unwrap().len() as u64;
    assert_eq!(
        sites,
        sy["sites"].as_u64().unwrap(),
        "every site was touched: {record:#}"
    );
    let held = record["scope"]["held"].as_u64().unwrap();
    assert!(held >= 1, "{record:#}");
    let scope = &record["scope"];
    for (outcome, key) in [
        ("held", "held"),
        ("rolled_back", "rolled_back"),
        ("unknown", "unknown"),
        ("gate_timeout", "gate_timeouts"),
        ("retried", "retried"),
        ("session_lost", "sessions_lost"),
    ] {
        let labels = format!("cluster=\"drill\",outcome=\"{outcome}\"");
        let metric = metric_value(&metrics, "switchyard_failover_requests_total", &labels)
            .unwrap_or_else(|| panic!("/metrics has {outcome}"));
        let recorded = scope[key]
            .as_f64()
            .unwrap_or_else(|| panic!("the incident record has {key}"));
        assert_eq!(
            metric, recorded,
            "/metrics {outcome} vs the incident record"
        );
        assert_eq!(
            console[key],
            scope[key].to_string(),
            "SHOW INCIDENTS {key} vs the incident record"
        );
    }
    assert_eq!(
        metric_value(&metrics, "switchyard_failovers_total", "cluster=\"drill\""),
        Some(1.0)
    );
    assert_eq!(console["id"], record["id"].to_string());
    assert_eq!(console["stage"], "Resolved");
    let errors: u64 = sy["errors_by_sqlstate"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let told = ["rolled_back", "unknown", "gate_timeouts"]
        .iter()
        .map(|k| record["scope"][k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(
        told, errors,
        "Switchyard's counts of errors match what the backends saw: {record:#}"
    );
}

#[tokio::test]
async fn a_patroni_drill_lets_patroni_fail_over() {
    if let Err(why) = switchyard_localpg::patroni_available() {
        eprintln!("skipped: {why}");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "drill",
        "--manager",
        "patroni",
        "--fault",
        "freeze",
        "--sites",
        "3",
    ])
    .args([
        "--warmup",
        "2s",
        "--observe",
        "4s",
        "--promotion-timeout",
        "60s",
    ])
    .arg("--out")
    .arg(out.path())
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let output = within(DRILL, "the patroni drill", cmd.output())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json = std::fs::read_to_string(out.path().join("report.json")).unwrap();
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["manager"], "patroni");
    assert!(
        report["promotion_after_fault_s"].as_f64().is_some(),
        "Patroni promoted: {report:#}"
    );
    let sy = path(&report, "switchyard");
    assert_eq!(sy["stuck"], 0, "{sy:#}");
    assert_eq!(sy["lost_writes"], 0, "{sy:#}");
    assert!(sy["first_write_after_fault_s"].as_f64().is_some(), "{sy:#}");
}

/// The proxy's own port (the first address in the config the drill wrote).
fn proxy_port(config: &str) -> u16 {
    ports_in(config)[0]
}

/// One sample's value from a Prometheus text exposition: the line `name{labels} value`.
fn metric_value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let want = format!("{name}{{{labels}}}");
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series == want).then(|| value.parse().ok())?
    })
}

/// The newest row of `SHOW INCIDENTS` on the drill proxy's admin console, by column name,
/// through PostgreSQL 15's psql.
async fn show_incidents(port: u16) -> std::collections::HashMap<String, String> {
    let psql = switchyard_localpg::pg_bin_dir().join("psql");
    let mut cmd = Command::new(psql);
    cmd.args([
        "-X",
        "-A",
        "-F",
        "\u{1f}",
        "-P",
        "footer=off",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
    ])
    .args(["-d", "switchyard", "-c", "SHOW INCIDENTS", "-p"])
    .arg(port.to_string())
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let out = within(STEP, "psql SHOW INCIDENTS", cmd.output())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split('\u{1f}').collect();
    let row: Vec<&str> = lines.next().expect("an incident").split('\u{1f}').collect();
    header
        .iter()
        .map(|h| h.to_string())
        .zip(row.iter().map(|v| v.to_string()))
        .collect()
}

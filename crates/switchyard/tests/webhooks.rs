//! Incident webhooks against a real failover: a receiver in the test gets the four stage
//! notifications in order (JSON and the Slack-style text), while two webhooks that are down (a
//! refused port, and a listener that never answers) end Failed after their configured attempts,
//! visible in `/api/incidents` — and the data path answers quickly all the while.

mod common;

use common::cluster::{Cluster, ClusterOptions, Fault};
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_config::{Duration as CfgDuration, WebhookConfig, WebhookFormat};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const STAGES: [&str; 4] = ["Investigating", "Identified", "Monitoring", "Resolved"];
/// The down webhooks' attempts.
const DOWN_ATTEMPTS: u32 = 2;

/// Requests received: (path, body), in arrival order.
type Received = Arc<Mutex<Vec<(String, String)>>>;

/// A webhook receiver answering every request `200 OK` (keep-alive), recording each one.
async fn receiver() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve(conn, log.clone()));
        }
    });
    (addr, received)
}

/// Answers the requests of one connection until the peer closes it.
async fn serve(mut conn: TcpStream, log: Received) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Some((path, body, used)) = parse(&data) {
            data.drain(..used);
            log.lock().unwrap().push((path, body));
            let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
            if conn.write_all(ok.as_bytes()).await.is_err() {
                return;
            }
        }
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

/// One complete request at the start of `data`: its path, its body and its length.
fn parse(data: &[u8]) -> Option<(String, String, usize)> {
    let text = std::str::from_utf8(data).ok()?;
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let path = head.split_whitespace().nth(1)?.to_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let body = rest.get(..len)?.to_owned();
    Some((path, body, head.len() + 4 + len))
}

/// A listener that accepts connections and never answers; counts the connections.
async fn silent() -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            *count.lock().unwrap() += 1;
            held.push(conn);
        }
    });
    (addr, accepted)
}

fn unix_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as u64)
}

/// An address nothing listens on (bound, then closed).
fn refused() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn hook(url: String, format: WebhookFormat, timeout: CfgDuration, attempts: u32) -> WebhookConfig {
    WebhookConfig {
        url,
        format,
        timeout,
        attempts,
    }
}

/// `/api/incidents`' newest incident.
async fn newest_incident(admin: SocketAddr) -> Value {
    let body = within(STEP, "GET /api/incidents", async {
        let mut s = TcpStream::connect(admin).await.expect("connect");
        let req = "GET /api/incidents HTTP/1.0\r\nHost: switchyard\r\n\r\n";
        s.write_all(req.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        let text = String::from_utf8_lossy(&raw).into_owned();
        text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
    })
    .await
    .expect("an HTTP answer");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["incidents"][0].clone()
}

/// Polls until `done` holds for the newest incident (or fails after `limit`).
async fn wait_until(
    admin: SocketAddr,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let inc = newest_incident(admin).await;
        if done(&inc) {
            return inc;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not within {limit:?}: {inc:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The incident's deliveries to the webhook at `addr`, by stage.
fn deliveries(inc: &Value, addr: SocketAddr) -> Vec<&Value> {
    let prefix = format!("http://{addr}/");
    let all = inc["notifications"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    all.iter()
        .filter(|d| d["url"].as_str().is_some_and(|u| u.starts_with(&prefix)))
        .collect()
}

/// Whether every stage's delivery to `addr` is in `state` (and there is one per stage).
fn all_in(inc: &Value, addr: SocketAddr, state: &str, count: usize) -> bool {
    let ds = deliveries(inc, addr);
    ds.len() == count && ds.iter().all(|d| d["state"] == state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_is_notified_and_dead_webhooks_never_slow_the_data_path() {
    let (good, received) = receiver().await;
    let (hung, hung_accepted) = silent().await;
    let gone = refused();
    let down_timeout = CfgDuration::millis(300);
    let c = Cluster::start_with(ClusterOptions::default(), |cfg| {
        cfg.admin.resolve_after = CfgDuration::secs(2);
        cfg.admin.webhooks = vec![
            hook(
                format!("http://{good}/json"),
                WebhookFormat::Json,
                CfgDuration::secs(5),
                3,
            ),
            hook(
                format!("http://{good}/slack"),
                WebhookFormat::Slack,
                CfgDuration::secs(5),
                3,
            ),
            hook(
                format!("http://{gone}/hook"),
                WebhookFormat::Json,
                down_timeout,
                DOWN_ATTEMPTS,
            ),
            hook(
                format!("http://{hung}/hook"),
                WebhookFormat::Slack,
                down_timeout,
                DOWN_ATTEMPTS,
            ),
        ];
    })
    .await;
    let admin = c.proxy.admin.http.expect("the admin HTTP listener runs");
    let client = c.client().await;
    within(STEP, "select 1", client.simple_query("select 1"))
        .await
        .unwrap();

    let _crashed = c.inject(Fault::Crash).await;
    c.wait_for_no_primary(STEP).await;
    wait_until(admin, STEP, "Investigating", |i| {
        i["stage"] == "Investigating"
    })
    .await;
    c.promote_standby().await;
    c.wait_for_primary(&c.standby.addr(), STEP).await;
    wait_until(admin, STEP, "Identified", |i| i["stage"] == "Identified").await;

    // The data path while the down webhooks are being retried: every statement answers fast.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        within(
            STEP,
            "select 1 during failing deliveries",
            client.simple_query("select 1"),
        )
        .await
        .expect("select 1 on the new primary");
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(200),
        "slowest select 1: {slowest:?}"
    );
    let queries_done_ms = unix_ms();

    let resolved = wait_until(
        admin,
        Duration::from_secs(30),
        "every delivery final",
        |i| {
            i["stage"] == "Resolved"
                && deliveries(i, good).len() == 8
                && deliveries(i, good)
                    .iter()
                    .all(|d| d["state"] == "Delivered")
                && all_in(i, gone, "Failed", 4)
                && all_in(i, hung, "Failed", 4)
        },
    )
    .await;

    // The receiver got the four stages in order, in both formats.
    let got = received.lock().unwrap().clone();
    let of = |path: &str| -> Vec<String> {
        got.iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    };
    let json: Vec<Value> = of("/json")
        .iter()
        .map(|b| serde_json::from_str(b).expect("JSON body"))
        .collect();
    let events: Vec<&str> = json
        .iter()
        .map(|v| v["event"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        events,
        [
            "incident.investigating",
            "incident.identified",
            "incident.monitoring",
            "incident.resolved"
        ],
        "{got:#?}"
    );
    for (v, stage) in json.iter().zip(STAGES) {
        assert_eq!(v["incident"]["id"], resolved["id"], "{v:#}");
        assert_eq!(v["incident"]["stage"], stage, "{v:#}");
        assert_eq!(v["incident"]["old_primary"], c.primary.addr(), "{v:#}");
    }
    assert_eq!(json[3]["incident"]["new_primary"], c.standby.addr());
    let slack = of("/slack");
    assert_eq!(slack.len(), 4, "{got:#?}");
    for (body, stage) in slack.iter().zip(STAGES) {
        let v: Value = serde_json::from_str(body).expect("JSON body");
        let text = v["text"].as_str().expect("a text field");
        let head = format!("[Switchyard] #{} {stage} — ", resolved["id"]);
        assert!(text.starts_with(&head), "{text}");
    }

    // The down webhooks: every stage Failed after exactly the configured attempts, with why.
    for down in [gone, hung] {
        for d in deliveries(&resolved, down) {
            assert_eq!(d["attempts"], DOWN_ATTEMPTS, "{d:#}");
            assert!(d["error"].as_str().is_some_and(|e| !e.is_empty()), "{d:#}");
            assert!(
                !d["url"].as_str().unwrap_or("").contains("/hook"),
                "redacted: {d:#}"
            );
        }
    }
    for d in deliveries(&resolved, hung) {
        assert_eq!(d["error"], "no answer within 300 ms", "{d:#}");
    }
    // The hung webhook's Identified delivery (≥ 2 × 300 ms + 500 ms backoff, begun before the
    // statements) ended after them: they ran while it was failing.
    let identified = deliveries(&resolved, hung)
        .into_iter()
        .find(|d| d["stage"] == "Identified")
        .expect("an Identified delivery");
    let ended_ms = identified["at_ms"].as_u64().expect("at_ms");
    assert!(
        ended_ms > queries_done_ms,
        "{identified:#} vs {queries_done_ms}"
    );
    assert!(*hung_accepted.lock().unwrap() >= 4 * DOWN_ATTEMPTS as usize);
    for d in deliveries(&resolved, good) {
        assert_eq!(d["attempts"], 1, "{d:#}");
    }
}

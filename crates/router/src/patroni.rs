//! The Patroni provider: a cluster's members read from Patroni's REST API (`GET /cluster`),
//! so that members Patroni adds are probed without a config change. Patroni's leader is logged
//! as a hint and never used as evidence: the probes alone decide the primary.
//!
//! One plain HTTP/1.1 GET per poll on a fresh connection (hyper's connection API: no pool is
//! worth keeping for one request a second), with a deadline and a cap on the body.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// Largest `/cluster` answer read (a few hundred bytes per member).
const MAX_BODY: usize = 1 << 20;

/// One member as Patroni lists it.
#[derive(Debug, serde::Deserialize)]
struct Member {
    name: String,
    #[serde(default)]
    role: String,
    host: Option<String>,
    port: Option<u16>,
}

#[derive(Debug, serde::Deserialize)]
struct ClusterAnswer {
    members: Vec<Member>,
}

/// The members (`host:port`) the first of `urls` that answers lists, and the leader's name.
pub(crate) async fn members(
    urls: &[String],
    timeout: Duration,
) -> Result<(Vec<String>, Option<String>), String> {
    let mut errors = Vec::new();
    for url in urls {
        match tokio::time::timeout(timeout, cluster(url)).await {
            Ok(Ok(answer)) => {
                let leader = answer
                    .members
                    .iter()
                    .find(|m| m.role == "leader" || m.role == "standby_leader")
                    .map(|m| m.name.clone());
                let addrs = answer
                    .members
                    .into_iter()
                    .filter_map(|m| Some(format!("{}:{}", m.host?, m.port?)))
                    .collect();
                return Ok((addrs, leader));
            }
            Ok(Err(e)) => errors.push(format!("{url}: {e}")),
            Err(_) => errors.push(format!("{url}: no answer within {timeout:?}")),
        }
    }
    Err(errors.join("; "))
}

/// `GET {url}/cluster`.
async fn cluster(url: &str) -> Result<ClusterAnswer, String> {
    let uri: hyper::Uri = format!("{}/cluster", url.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// Patroni URLs are supported".into());
    }
    let host = uri.host().ok_or("no host in the URL")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    // The connection's own task ends with the request (or with the caller's timeout).
    let driver = tokio::spawn(conn);
    let request = hyper::Request::get(uri.path())
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("not Patroni's /cluster answer: {e}"))
    }
    .await;
    driver.abort();
    answer
}

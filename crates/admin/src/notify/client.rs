//! The webhook HTTP client: hyper's pooled client over plain TCP or rustls (aws-lc-rs, with the
//! system's CA certificates), one POST per attempt bounded by the webhook's timeout, and the
//! redacted form of a URL that delivery states and logs show.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client for `http://` and `https://`; the system's CA certificates are loaded only if
/// `https` (some webhook needs them).
pub fn new_client(https: bool) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector(https))
}

fn connector(https: bool) -> HttpsConnector<HttpConnector> {
    let provider = switchyard_tls::provider();
    let with_roots = if https {
        match HttpsConnectorBuilder::new().with_provider_and_native_roots(provider.clone()) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(error = %e, "no CA certificates: https webhooks will fail");
                None
            }
        }
    } else {
        None
    };
    let with_roots = with_roots.unwrap_or_else(|| {
        // No trusted roots: an https delivery fails with an untrusted-certificate error.
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| rustls::ClientConfig::builder())
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        HttpsConnectorBuilder::new().with_tls_config(config)
    });
    with_roots.https_or_http().enable_http1().build()
}

/// One attempt: POSTs `body` (JSON) to `uri`, bounded by `timeout`. A 2xx answer is success;
/// `Err` says why not (status, transport error or timeout; never the URL).
pub async fn post(
    client: &HttpClient,
    uri: Uri,
    timeout: Duration,
    body: Bytes,
) -> Result<(), String> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("switchyard/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| format!("bad request: {e}"))?;
    match tokio::time::timeout(timeout, client.request(request)).await {
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        Ok(Err(e)) => Err(chain(&e)),
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("HTTP {}", response.status())),
    }
}

/// An error with its sources, `a: b: c` (a message already said once is left out).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// `scheme://host[:port]`, then `/…` if the URL has more (path, query): no userinfo, no path
/// (Slack-style hooks carry their secret there).
pub fn redact(url: &str) -> String {
    let Ok(uri) = url.parse::<Uri>() else {
        return "(unparsable URL)".to_owned();
    };
    let scheme = uri.scheme_str().unwrap_or("?");
    let host = uri.host().unwrap_or("?");
    let port = uri.port_u16().map_or(String::new(), |p| format!(":{p}"));
    let more = uri
        .path_and_query()
        .is_some_and(|pq| !matches!(pq.as_str(), "" | "/"));
    format!("{scheme}://{host}{port}{}", if more { "/…" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const LIMIT: Duration = Duration::from_secs(10);

    #[test]
    fn redact_keeps_only_scheme_host_and_port() {
        let cases = [
            (
                "https://hooks.slack.com/services/T0/B0/SECRET",
                "https://hooks.slack.com/…",
            ),
            (
                "http://user:pw@10.0.0.1:8080/x?key=k",
                "http://10.0.0.1:8080/…",
            ),
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
            ("http://127.0.0.1:9000/", "http://127.0.0.1:9000"),
            ("not a url", "(unparsable URL)"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    /// Answers every request on a fresh listener with `status`; returns where it listens.
    async fn answering(status: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    // Read the head and the (small) body before answering.
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        seen.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&seen);
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if body.len() >= len {
                                break;
                            }
                        }
                    }
                    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        addr
    }

    async fn attempt(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
        let uri: Uri = format!("http://{addr}/hook").parse().unwrap();
        let body = Bytes::from_static(b"{\"text\":\"hi\"}");
        let client = new_client(false);
        let post = post(&client, uri, timeout, body);
        tokio::time::timeout(LIMIT, post).await.expect("bounded")
    }

    #[tokio::test]
    async fn a_2xx_answer_is_success_and_others_are_not() {
        assert_eq!(attempt(answering("200 OK").await, LIMIT).await, Ok(()));
        assert_eq!(
            attempt(answering("204 No Content").await, LIMIT).await,
            Ok(())
        );
        assert_eq!(
            attempt(answering("500 Internal Server Error").await, LIMIT).await,
            Err("HTTP 500 Internal Server Error".to_owned())
        );
    }

    #[tokio::test]
    async fn a_refused_connection_fails_the_attempt() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let error = attempt(addr, LIMIT).await.unwrap_err();
        assert!(error.to_lowercase().contains("refused"), "{error}");
        assert!(!error.contains("/hook"), "never the URL: {error}");
    }

    #[tokio::test]
    async fn a_silent_server_times_the_attempt_out() {
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                kept.push(s);
            }
        });
        let started = std::time::Instant::now();
        let error = attempt(addr, Duration::from_millis(300)).await.unwrap_err();
        assert_eq!(error, "no answer within 300 ms");
        assert!(started.elapsed() < Duration::from_secs(3));
        held.abort();
    }
}

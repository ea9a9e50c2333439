//! A minimal HTTP/1.0 client over `std::net::TcpStream` for the local control APIs the fixture
//! talks to (etcd's health and v3 JSON gateway, Patroni's REST API): one request per connection,
//! the server closes it, every step bounded by a deadline. Not a general HTTP client: no TLS, no
//! chunked encoding (HTTP/1.0 responses are not chunked), no redirects.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Largest response body kept; control API answers are small.
const MAX_RESPONSE: usize = 1 << 20;

/// What the server answered.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The body, lossily decoded as UTF-8.
    pub body: String,
}

/// `GET path` on `127.0.0.1:port`, all within `timeout`.
pub(crate) fn get(port: u16, path: &str, timeout: Duration) -> io::Result<Response> {
    request(port, "GET", path, None, timeout)
}

/// `POST path` with a JSON `body` on `127.0.0.1:port`, all within `timeout`.
pub(crate) fn post_json(
    port: u16,
    path: &str,
    body: &str,
    timeout: Duration,
) -> io::Result<Response> {
    request(port, "POST", path, Some(body), timeout)
}

fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> io::Result<Response> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    if let Some(body) = body {
        head.push_str("Content-Type: application/json\r\n");
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or_default());
    stream.set_write_timeout(Some(remaining(deadline)?))?;
    stream.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    let mut buf = [0_u8; 8192];
    loop {
        stream.set_read_timeout(Some(remaining(deadline)?))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if raw.len() + n <= MAX_RESPONSE => raw.extend_from_slice(&buf[..n]),
            Ok(_) => return Err(invalid("response too large")),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    parse(&raw)
}

/// The time left until `deadline`, or a `TimedOut` error once it has passed.
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))
    } else {
        Ok(left)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Splits a whole HTTP response into status and body.
fn parse(raw: &[u8]) -> io::Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/"))
        .ok_or_else(|| invalid("bad status line"))?;
    Ok(Response {
        status,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r = parse(b"HTTP/1.0 503 Service Unavailable\r\nA: b\r\n\r\n{\"x\":1}").unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "{\"x\":1}");
        assert!(parse(b"garbage").is_err());
        assert!(parse(b"SSH-2.0 x\r\n\r\n").is_err());
    }
}

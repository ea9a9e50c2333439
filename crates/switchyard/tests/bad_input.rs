//! Bad input from clients, spoken as raw bytes: malformed or oversized startup packets and
//! messages, truncation, stalls, SSL/GSS/direct-TLS negotiation, protocol 3.2, the client limit,
//! unknown message types and random garbage. Each case asserts the exact answer (design.md §2:
//! FATAL `08P01` and close for protocol violations) and that an already-connected client keeps
//! working: bad input must never affect other clients, nor panic the proxy.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use switchyard_config::{Config, Duration as CfgDuration, PoolMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::Client;

/// Bound for one read from the proxy.
const READ: Duration = Duration::from_secs(10);
const PROTOCOL_3_0: i32 = 3 << 16;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;

// ---------------------------------------------------------------------------------------------
// Wire helpers.

/// A startup-phase packet: length word, `code`, then `body` as is.
fn packet(code: i32, body: &[u8]) -> Vec<u8> {
    let mut p = ((8 + body.len()) as i32).to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(body);
    p
}

/// NUL-terminated name/value pairs and the final NUL.
fn params(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in pairs {
        b.extend_from_slice(k.as_bytes());
        b.push(0);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b.push(0);
    b
}

/// A StartupMessage for protocol 3.0, user postgres, database app.
fn startup() -> Vec<u8> {
    packet(
        PROTOCOL_3_0,
        &params(&[("user", "postgres"), ("database", "app")]),
    )
}

/// A tagged message.
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// The fields of an ErrorResponse that the tests look at.
#[derive(Debug, Default)]
struct PgError {
    severity: String,
    code: String,
    message: String,
}

impl PgError {
    fn parse(body: &[u8]) -> Self {
        let mut e = PgError::default();
        let mut rest = body;
        while let Some((&field, tail)) = rest.split_first() {
            if field == 0 {
                break;
            }
            let end = tail
                .iter()
                .position(|&b| b == 0)
                .expect("field ends in NUL");
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            match field {
                b'V' => e.severity = value,
                b'S' if e.severity.is_empty() => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                _ => {}
            }
            rest = &tail[end + 1..];
        }
        e
    }
}

/// What came next from the proxy.
#[derive(Debug)]
enum Next {
    Msg(u8, Vec<u8>),
    /// EOF, or a reset (the proxy closed with our bytes unread).
    Closed,
}

/// A raw client connection with a read buffer.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(h: &Harness) -> Self {
        let s = within(STEP, "raw connect", TcpStream::connect(h.addr()))
            .await
            .expect("connect to the proxy");
        s.set_nodelay(true).expect("nodelay");
        Self { s, buf: Vec::new() }
    }

    /// Connects, sends a 3.0 startup and reads the greeting.
    async fn login(h: &Harness) -> Self {
        let mut r = Self::connect(h).await;
        r.send(&startup()).await;
        r.greeting().await;
        r
    }

    async fn send(&mut self, bytes: &[u8]) {
        within(STEP, "raw write", self.s.write_all(bytes))
            .await
            .expect("write to the proxy");
    }

    /// Reads more bytes; false on EOF or reset.
    async fn fill(&mut self, limit: Duration) -> bool {
        let mut chunk = [0u8; 8192];
        match within(limit, "read from the proxy", self.s.read(&mut chunk)).await {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if is_reset(&e) => false,
            Err(e) => panic!("read from the proxy failed: {e}"),
        }
    }

    async fn next_within(&mut self, limit: Duration) -> Next {
        loop {
            if let Some(head) = self.buf.get(..5) {
                let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
                assert!(len >= 4, "proxy sent a bad length {len}: {:?}", self.buf);
                let total = 1 + len as usize;
                if self.buf.len() >= total {
                    let body = self.buf[5..total].to_vec();
                    let tag = self.buf[0];
                    self.buf.drain(..total);
                    return Next::Msg(tag, body);
                }
            }
            if !self.fill(limit).await {
                assert!(self.buf.is_empty(), "closed mid-message: {:?}", self.buf);
                return Next::Closed;
            }
        }
    }

    async fn next(&mut self) -> Next {
        self.next_within(READ).await
    }

    async fn msg(&mut self) -> (u8, Vec<u8>) {
        match self.next().await {
            Next::Msg(t, b) => (t, b),
            Next::Closed => panic!("connection closed; expected a message"),
        }
    }

    /// The answer to an SSLRequest or GSSENCRequest: one byte, or (`None`) a FATAL `code`
    /// then close.
    async fn ssl_answer(&mut self, code: &str) -> Option<u8> {
        if self.buf.is_empty() {
            assert!(self.fill(READ).await, "closed without an answer");
        }
        if self.buf[0] == b'E' {
            self.expect_fatal_then_close(code).await;
            return None;
        }
        assert_eq!(self.buf.len(), 1, "one byte: {:?}", self.buf);
        self.buf.pop()
    }

    async fn expect_closed(&mut self) {
        match self.next().await {
            Next::Closed => {}
            Next::Msg(t, b) => panic!("expected close, got {:?} {b:?}", t as char),
        }
    }

    async fn expect_fatal(&mut self, code: &str) -> PgError {
        let (tag, body) = self.msg().await;
        assert_eq!(tag as char, 'E', "expected ErrorResponse: {body:?}");
        let e = PgError::parse(&body);
        assert_eq!(
            (e.severity.as_str(), e.code.as_str()),
            ("FATAL", code),
            "{e:?}"
        );
        e
    }

    /// FATAL `code`, then the proxy closes the connection; returns the message.
    async fn expect_fatal_then_close(&mut self, code: &str) -> String {
        let e = self.expect_fatal(code).await;
        self.expect_closed().await;
        e.message
    }

    /// AuthenticationOk, ParameterStatus..., BackendKeyData, ReadyForQuery('I').
    async fn greeting(&mut self) {
        assert_eq!(
            self.msg().await,
            (b'R', vec![0, 0, 0, 0]),
            "AuthenticationOk"
        );
        let (mut statuses, mut key) = (0, None);
        loop {
            match self.msg().await {
                (b'S', _) => statuses += 1,
                (b'K', body) => key = Some(body),
                (b'Z', body) => {
                    assert_eq!(body, b"I");
                    break;
                }
                (t, body) => panic!("unexpected {:?} in greeting: {body:?}", t as char),
            }
        }
        assert!(statuses > 0, "no ParameterStatus in the greeting");
        let key = key.expect("BackendKeyData in the greeting");
        assert_eq!(key.len(), 8, "protocol 3.0 keys are pid + 4-byte secret");
    }

    /// Runs a simple query, ignoring its results.
    async fn exec(&mut self, sql: &str) {
        self.send(&query_message(sql)).await;
        while self.msg().await.0 != b'Z' {}
    }

    /// Runs a simple query and returns the first column of its single row.
    async fn query_one(&mut self, sql: &str) -> String {
        self.send(&query_message(sql)).await;
        let mut value = None;
        loop {
            match self.msg().await {
                (b'T', _) | (b'C', _) => {}
                (b'D', body) => {
                    assert_eq!(&body[..2], &[0, 1], "one column");
                    value = Some(String::from_utf8(body[6..].to_vec()).expect("utf-8"));
                }
                (b'Z', _) => return value.expect("one row"),
                (t, body) => panic!("unexpected {:?} for {sql:?}: {body:?}", t as char),
            }
        }
    }
}

fn is_reset(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}

// ---------------------------------------------------------------------------------------------
// Harness helpers.

/// Panics raised in product code (not in test code), counted by a hook installed once.
static PRODUCT_PANICS: AtomicUsize = AtomicUsize::new(0);

fn watch_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let file = info.location().map(|l| l.file()).unwrap_or_default();
            if file.starts_with("crates/") && !file.contains("/tests/") {
                PRODUCT_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// A tokio-postgres client for postgres@app, the pool the raw clients use (`setup` checks that
/// it really is in `app`: a bystander in another pool would prove nothing).
async fn bystander(h: &Harness) -> Result<Client, tokio_postgres::Error> {
    connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        h.port()
    ))
    .await
}

/// A proxy in front of a fresh PostgreSQL, and a tokio-postgres client already connected to it.
async fn setup(mode: PoolMode, tweak: impl FnOnce(&mut Config)) -> (Harness, Client) {
    watch_panics();
    let h = Harness::start_with(mode, tweak).await;
    let other = bystander(&h).await.expect("bystander connects");
    let db: String = within(
        STEP,
        "current_database",
        other.query_one("select current_database()", &[]),
    )
    .await
    .expect("current_database")
    .get(0);
    assert_eq!(db, "app");
    (h, other)
}

/// The bystander still gets answers, and nothing in the proxy panicked.
async fn assert_alive(other: &Client) {
    within(STEP, "bystander select 1", other.simple_query("select 1"))
        .await
        .expect("the other client keeps working");
    assert_eq!(
        PRODUCT_PANICS.load(Ordering::SeqCst),
        0,
        "the proxy panicked"
    );
}

/// Polls (bounded) until the proxy counts `n` clients.
async fn wait_client_count(h: &Harness, n: usize) {
    let deadline = Instant::now() + STEP;
    while h.proxy.proxy.client_count() != n {
        assert!(
            Instant::now() < deadline,
            "client count stuck at {} (want {n})",
            h.proxy.proxy.client_count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Startup packets.

/// A startup packet's length word (big-endian), then the 3.0 protocol code.
fn length_word(len: i32) -> Vec<u8> {
    let mut b = len.to_be_bytes().to_vec();
    b.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    b
}

/// 1–4. Bad startup packets, each on its own connection: FATAL 08P01 from Switchyard, then close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_startup_packets_are_fatal_08p01() {
    let (h, other) = setup(PoolMode::Transaction, |_| {}).await;
    let user = params(&[("user", "postgres")]);
    let v3 = |body: &[u8]| packet(PROTOCOL_3_0, body);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // 1. Over PostgreSQL's 10,000-byte cap: refused from the length word alone.
        ("length 10001", length_word(10_001)),
        ("length 1 MiB", length_word(1 << 20)),
        ("length i32::MAX", length_word(i32::MAX)),
        // 2. No room for the protocol code.
        ("length 7", length_word(7)),
        ("length 0", length_word(0)),
        ("length -1", length_word(-1)),
        ("length i32::MIN", length_word(i32::MIN)),
        // 3. Protocol majors other than 3.
        ("protocol 2.0", packet(2 << 16, &user)),
        ("protocol 4.0", packet(4 << 16, &user)),
        ("protocol 0.1234", packet(1234, &user)),
        // 4. Parameter lists that do not end well.
        ("no final NUL", v3(b"user\0postgres\0database\0app\0")),
        ("name without value", v3(b"user\0postgres\0database\0")),
        ("unterminated value", v3(b"user\0postgres")),
        ("junk after the list", v3(b"user\0postgres\0\0junk")),
        ("invalid UTF-8", v3(b"user\0\xff\xfe\0\0")),
    ];
    for (case, bytes) in cases {
        eprintln!("case: {case}");
        let mut r = Raw::connect(&h).await;
        r.send(&bytes).await;
        let m = r.expect_fatal_then_close("08P01").await;
        assert!(m.starts_with("switchyard:"), "{case}: {m}");
    }
    wait_client_count(&h, 1).await;
    assert_alive(&other).await;
}

// ---------------------------------------------------------------------------------------------
// Messages after login.

/// 5. A message whose length word is below 4 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_length_below_4_is_fatal_08p01() {
    let (h, other) = setup(PoolMode::Transaction, |_| {}).await;
    for len in [2i32, 3, 0, -1] {
        let mut r = Raw::login(&h).await;
        let mut m = vec![b'Q'];
        m.extend_from_slice(&len.to_be_bytes());
        r.send(&m).await;
        r.expect_fatal_then_close("08P01").await;
    }
    assert_alive(&other).await;
}

/// 6. A query larger than `max_message_size` is refused (one just under the cap still runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_max_message_size_is_fatal_08p01() {
    let (h, other) = setup(PoolMode::Transaction, |c| c.proxy.max_message_size = 4096).await;
    let mut r = Raw::login(&h).await;
    let fits = format!("select length('{}')", "x".repeat(3000));
    assert_eq!(r.query_one(&fits).await, "3000");
    let big = query_message(&format!("select '{}'", "x".repeat(10_000)));
    r.send(&big).await;
    let m = r.expect_fatal_then_close("08P01").await;
    assert!(m.contains("4096"), "names the limit: {m}");
    // The same inside a transaction, with a server connection attached.
    let mut r = Raw::login(&h).await;
    r.exec("begin").await;
    r.send(&big).await;
    r.expect_fatal_then_close("08P01").await;
    assert_alive(&other).await;
}

/// 7. A Parse whose parameter count says 2 but carries no type OIDs (transaction mode, where the
///    proxy decodes a named Parse to rename its statement: FATAL from the proxy). An unnamed
///    Parse is not renamed, so not decoded: the server's own ERROR reaches the client, whose
///    session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_parse_is_fatal_08p01() {
    let (h, other) = setup(PoolMode::Transaction, |_| {}).await;
    let malformed = |name: &str| {
        let mut body = format!("{name}\0select $1, $2\0").into_bytes();
        body.extend_from_slice(&2i16.to_be_bytes());
        let mut bytes = msg(b'P', &body);
        bytes.extend_from_slice(&msg(b'S', &[]));
        bytes
    };
    let mut r = Raw::login(&h).await;
    r.send(&malformed("s1")).await;
    r.expect_fatal_then_close("08P01").await;
    let mut r = Raw::login(&h).await;
    r.send(&malformed("")).await;
    let (tag, body) = r.msg().await;
    assert_eq!(
        tag as char, 'E',
        "expected the server's ErrorResponse: {body:?}"
    );
    let e = PgError::parse(&body);
    assert_eq!(
        (e.severity.as_str(), e.code.as_str()),
        ("ERROR", "08P01"),
        "{e:?}"
    );
    assert_eq!(r.msg().await.0 as char, 'Z');
    assert_eq!(r.query_one("select 8").await, "8");
    assert_alive(&other).await;
    // The pool was not poisoned: a fresh client gets a clean server connection.
    let mut r = Raw::login(&h).await;
    assert_eq!(r.query_one("select 7").await, "7");
}

/// 8. Half a message then EOF: during startup, between transactions and inside one. The proxy
///    closes quietly (there is nobody to tell) and lets the client go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_message_then_eof_closes_quietly() {
    let (h, other) = setup(PoolMode::Transaction, |_| {}).await;
    let half_query = {
        let mut q = query_message("select 'a long enough query text'");
        q.truncate(12);
        q
    };
    for case in ["startup", "idle", "in transaction"] {
        let mut r = Raw::connect(&h).await;
        if case == "startup" {
            r.send(&startup()[..10]).await;
        } else {
            r.send(&startup()).await;
            r.greeting().await;
            if case == "in transaction" {
                r.exec("begin").await;
            }
            r.send(&half_query).await;
        }
        within(STEP, "shutdown write", r.s.shutdown())
            .await
            .expect("shutdown");
        r.expect_closed().await;
    }
    wait_client_count(&h, 1).await;
    assert_alive(&other).await;
    let mut r = Raw::login(&h).await;
    assert_eq!(r.query_one("select 8").await, "8");
}

// ---------------------------------------------------------------------------------------------
// Negotiation and stalls.

/// Reads until the proxy closes a stalled login; at most a FATAL 08P01 first. Returns how long it
/// took from `since`.
async fn closed_by_login_timeout(r: &mut Raw, since: Instant) -> Duration {
    match r.next_within(Duration::from_secs(6)).await {
        Next::Closed => {}
        Next::Msg(b'E', body) => {
            let e = PgError::parse(&body);
            assert_eq!(
                (e.severity.as_str(), e.code.as_str()),
                ("FATAL", "08P01"),
                "{e:?}"
            );
            r.expect_closed().await;
        }
        Next::Msg(t, b) => panic!("unexpected {:?} {b:?}", t as char),
    }
    since.elapsed()
}

/// 9. A client that connects and says nothing, sends only an SSLRequest, or half a startup
///    packet, is closed after `login_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_login_is_closed_after_login_timeout() {
    let (h, other) = setup(PoolMode::Transaction, |c| {
        c.proxy.login_timeout = CfgDuration::millis(500)
    })
    .await;
    for case in ["nothing", "ssl request", "half startup"] {
        let start = Instant::now();
        let mut r = Raw::connect(&h).await;
        match case {
            "ssl request" => {
                r.send(&packet(SSL_REQUEST, &[])).await;
                assert_eq!(r.ssl_answer("").await, Some(b'N'));
            }
            "half startup" => r.send(&startup()[..12]).await,
            _ => {}
        }
        let took = closed_by_login_timeout(&mut r, start).await;
        assert!(
            took >= Duration::from_millis(450) && took <= Duration::from_secs(5),
            "{case}: closed after {took:?}"
        );
    }
    wait_client_count(&h, 1).await;
    assert_alive(&other).await;
}

/// 9b. A client that asks for a big answer and stops reading it holds the only server connection
///     of its pool; after `client_write_timeout` without progress it is disconnected, its server
///     connection closed, and the next request of the pool runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_is_cut_off_after_client_write_timeout() {
    let (h, other) = setup(PoolMode::Transaction, |c| {
        c.pool.size = 1;
        c.proxy.client_write_timeout = CfgDuration::millis(1000);
    })
    .await;
    let mut r = Raw::login(&h).await;
    // 200 MB of rows: far more than the socket buffers on the way can hold.
    r.send(&query_message(
        "select repeat('x', 1000) from generate_series(1, 200000)",
    ))
    .await;
    // The answer has started, so the stalled client holds the pool's one connection.
    assert_eq!(r.msg().await.0, b'T', "RowDescription first");
    let start = Instant::now();
    within(
        STEP,
        "the next request of the pool",
        other.simple_query("select 1"),
    )
    .await
    .expect("the next request runs once the stalled client is cut off");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited <= Duration::from_secs(8),
        "the next request waited {waited:?}; the stall limit is 1 s"
    );
    // The stalled client finds its answer cut short: what was buffered, then the close.
    let mut got = r.buf.len();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match within(READ, "drain the cut-off answer", r.s.read(&mut chunk)).await {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if is_reset(&e) => break,
            Err(e) => panic!("read failed: {e}"),
        }
    }
    assert!(
        got < 100 << 20,
        "{got} bytes arrived: the answer was not cut off"
    );
    wait_client_count(&h, 1).await;
    assert_alive(&other).await;
}

/// 10. SSLRequest and GSSENCRequest are declined with a single 'N', after which a plain startup
///     works; a startup sent before the 'N' was read (CVE-2021-23214) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gss_requests_are_declined_with_n() {
    let (h, other) = setup(PoolMode::Transaction, |_| {}).await;
    for (code, n) in [(SSL_REQUEST, 1), (GSSENC_REQUEST, 2)] {
        let mut r = Raw::connect(&h).await;
        r.send(&packet(code, &[])).await;
        assert_eq!(r.ssl_answer("").await, Some(b'N'));
        r.send(&startup()).await;
        r.greeting().await;
        assert_eq!(r.query_one(&format!("select {n}")).await, n.to_string());
    }
    // GSS first, then SSL, as libpq does with gssencmode=prefer and sslmode=prefer.
    let mut r = Raw::connect(&h).await;
    r.send(&packet(GSSENC_REQUEST, &[])).await;
    assert_eq!(r.ssl_answer("").await, Some(b'N'));
    r.send(&packet(SSL_REQUEST, &[])).await;
    assert_eq!(r.ssl_answer("").await, Some(b'N'));
    r.send(&startup()).await;
    r.greeting().await;
    // Plain-text bytes piggybacked on the SSLRequest.
    let mut r = Raw::connect(&h).await;
    let mut bytes = packet(SSL_REQUEST, &[]);
    bytes.extend_from_slice(&startup());
    r.send(&bytes).await;
    assert_eq!(r.ssl_answer("08P01").await, None);
    assert_alive(&other).await;
}

/// 11. A TLS ClientHello where the startup packet belongs (direct TLS): the proxy, which offers
///     no TLS, just closes (the client could not read a plain-text error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_hello_is_closed_without_answer() {
    let (h, other) = setup(PoolMode::Transaction, |_| {}).await;
    let mut r = Raw::connect(&h).await;
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03,
    ];
    hello.extend_from_slice(&[0x5a; 32]);
    r.send(&hello).await;
    assert!(!r.fill(READ).await, "expected close, got {:?}", r.buf);
    wait_client_count(&h, 1).await;
    assert_alive(&other).await;
}

/// 12. Protocol 3.2 with a `_pq_` option: NegotiateProtocolVersion (newest minor 0, the option
///     refused), then the usual 3.0 greeting, and queries work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_3_2_is_negotiated_down_to_3_0() {
    let (h, other) = setup(PoolMode::Transaction, |_| {}).await;
    let mut r = Raw::connect(&h).await;
    let body = params(&[
        ("user", "postgres"),
        ("database", "app"),
        ("_pq_.test_option", "on"),
    ]);
    r.send(&packet(PROTOCOL_3_0 | 2, &body)).await;
    let (tag, body) = r.msg().await;
    assert_eq!(tag as char, 'v', "NegotiateProtocolVersion first: {body:?}");
    // The newest version the server speaks, as PostgreSQL encodes it: 3.0 = 0x00030000.
    let mut want = PROTOCOL_3_0.to_be_bytes().to_vec();
    want.extend_from_slice(&1i32.to_be_bytes());
    want.extend_from_slice(b"_pq_.test_option\0");
    assert_eq!(body, want);
    r.greeting().await;
    assert_eq!(r.query_one("select 32").await, "32");
    assert_alive(&other).await;
}

// ---------------------------------------------------------------------------------------------
// Admission, unknown messages, garbage.

/// 13. `max_client_conn = 2`: the third client gets FATAL 53300 (raw and through tokio-postgres);
///     once one leaves, a new client gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_refuses_with_53300_then_admits_again() {
    let (h, other) = setup(PoolMode::Transaction, |c| c.proxy.max_client_conn = 2).await;
    let second = Raw::login(&h).await;
    wait_client_count(&h, 2).await;
    let mut third = Raw::connect(&h).await;
    let m = third.expect_fatal_then_close("53300").await;
    assert!(m.contains("too many clients"), "{m}");
    let err = bystander(&h).await.err();
    let err = err.expect("a third tokio-postgres client is refused");
    assert_eq!(sqlstate(&err), "53300", "{err}");
    assert_alive(&other).await;
    drop(second);
    wait_client_count(&h, 1).await;
    let mut again = Raw::login(&h).await;
    assert_eq!(again.query_one("select 13").await, "13");
    assert_alive(&other).await;
}

/// 14. An unknown message type after login: whoever answers (the proxy, or PostgreSQL if the
///     proxy forwards it), the client gets FATAL 08P01 first and the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_type_is_fatal_08p01() {
    let (h, other) = setup(PoolMode::Transaction, |_| {}).await;
    let mut r = Raw::login(&h).await;
    r.send(&msg(b'z', b"junk")).await;
    r.expect_fatal("08P01").await;
    // Anything after the first FATAL is checked by the next test; here: it closes.
    while let Next::Msg(t, _) = r.next().await {
        assert_eq!(t, b'E');
    }
    wait_client_count(&h, 1).await;
    assert_alive(&other).await;
    let mut r = Raw::login(&h).await;
    assert_eq!(r.query_one("select 14").await, "14");
}

/// Once a bug: after PostgreSQL's own FATAL (here for an unknown message type the proxy
/// forwarded), the proxy added a second FATAL of its own, `08006 switchyard: server connection
/// lost: server closed the connection`, which blamed the server for the client's error. The
/// contract (design.md §2) is one FATAL 08P01, then close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_type_gets_exactly_one_fatal() {
    let (h, other) = setup(PoolMode::Transaction, |_| {}).await;
    let mut r = Raw::login(&h).await;
    r.send(&msg(b'z', b"junk")).await;
    r.expect_fatal_then_close("08P01").await;
    assert_alive(&other).await;
}

/// Once a bug: a server connection that PostgreSQL closed with a FATAL went back to the pool.
/// Session mode, pool of 2 (one held by the bystander): A's backend is terminated, A gets the
/// FATAL; the next client must not check out A's dead connection (it got FATAL 08006).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closed_by_fatal_is_not_returned_to_the_pool() {
    let (h, other) = setup(PoolMode::Session, |c| c.pool.size = 2).await;
    let mut a = Raw::login(&h).await;
    let pid = a.query_one("select pg_backend_pid()").await;
    let kill = format!("select pg_terminate_backend({pid})");
    within(STEP, "terminate", other.simple_query(&kill))
        .await
        .expect("terminate A's backend");
    a.expect_fatal("57P01").await;
    while let Next::Msg(..) = a.next().await {}
    wait_client_count(&h, 1).await;
    let mut c = Raw::login(&h).await;
    assert_eq!(c.query_one("select 1").await, "1");
    assert_alive(&other).await;
}

/// Once a bug: an unknown message followed at once by Terminate. The proxy forwarded the unknown
/// message untracked, saw Terminate, found the relay "at a sync point" and released the server
/// connection before PostgreSQL's FATAL for it arrived; the next client of the pool (the
/// bystander, pool size 1) got that FATAL ("invalid frontend message type 122") and lost its
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_then_terminate_does_not_reach_the_next_client() {
    let (h, other) = setup(PoolMode::Transaction, |c| c.pool.size = 1).await;
    let mut r = Raw::login(&h).await;
    let mut bytes = msg(b'z', b"junk");
    bytes.extend_from_slice(&msg(b'X', &[]));
    r.send(&bytes).await;
    while let Next::Msg(..) = r.next().await {}
    wait_client_count(&h, 1).await;
    assert_alive(&other).await;
}

/// A small fixed-seed PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One garbage "startup packet": pure noise, a plausible length word with noise after it (too
/// short or too long for it), or a well-formed 3.0 header with a noise parameter list.
fn garbage(rng: &mut Rng) -> Vec<u8> {
    match rng.below(3) {
        0 => {
            let n = rng.below(300);
            rng.bytes(n)
        }
        1 => {
            let mut b = ((8 + rng.below(10_000)) as i32).to_be_bytes().to_vec();
            let n = rng.below(12_000);
            b.extend_from_slice(&rng.bytes(n));
            b
        }
        _ => {
            let n = rng.below(200);
            packet(PROTOCOL_3_0, &rng.bytes(n))
        }
    }
}

/// Sends `bytes`, maybe half-closes, and reads until the proxy closes. Returns the errors seen.
async fn throw_garbage(
    addr: std::net::SocketAddr,
    bytes: Vec<u8>,
    half_close: bool,
) -> Vec<String> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The proxy may close before taking everything: write errors are fine.
    if s.write_all(&bytes).await.is_ok() && half_close {
        let _ = s.shutdown().await;
    }
    let mut r = Raw { s, buf: Vec::new() };
    let mut codes = Vec::new();
    loop {
        match r.next_within(Duration::from_secs(15)).await {
            Next::Closed => return codes,
            Next::Msg(b'E', body) => {
                let e = PgError::parse(&body);
                codes.push(format!("{} {}", e.severity, e.code));
            }
            Next::Msg(_, _) => {}
        }
    }
}

/// 15. 200 connections of random garbage: every one ends within a bound with at most a FATAL
///     08P01/28xxx, the proxy keeps serving, and its client count returns to normal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_garbage_startups_all_end_and_leave_no_trace() {
    let (h, other) = setup(PoolMode::Transaction, |c| {
        c.proxy.login_timeout = CfgDuration::millis(1000)
    })
    .await;
    let mut rng = Rng(0x5eed_2024_bad1_4b07);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let bytes = garbage(&mut rng);
        tasks.spawn(throw_garbage(h.addr(), bytes, i % 2 == 0));
    }
    let all = within(STEP * 2, "200 garbage connections end", async {
        let mut all = Vec::new();
        while let Some(r) = tasks.join_next().await {
            all.extend(r.expect("garbage task"));
        }
        all
    })
    .await;
    for code in &all {
        assert!(
            ["FATAL 08P01", "FATAL 28P01", "FATAL 28000"].contains(&code.as_str()),
            "unexpected error {code}"
        );
    }
    assert_alive(&other).await;
    wait_client_count(&h, 1).await;
    let mut r = Raw::login(&h).await;
    assert_eq!(r.query_one("select 15").await, "15");
    drop((r, other));
    wait_client_count(&h, 0).await;
}

/// Random framed messages after login (known and unknown tags, noise bodies), then Terminate:
/// every connection ends, and the pool's server connections are all still usable afterwards.
/// Fails today: see `unknown_message_then_terminate_does_not_reach_the_next_client`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_messages_after_login_do_not_poison_the_pool() {
    let (h, other) = setup(PoolMode::Transaction, |_| {}).await;
    let mut rng = Rng(0x0dd_f00d_cafe_beef);
    let tags = b"BCdcfDEHFPpQSz\0\xff";
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let mut bytes = Vec::new();
        for _ in 0..1 + rng.below(5) {
            let tag = tags[rng.below(tags.len() as u64)];
            let n = rng.below(64);
            let mut body = rng.bytes(n);
            body.push(0);
            bytes.extend_from_slice(&msg(tag, &body));
        }
        bytes.extend_from_slice(&msg(b'X', &[]));
        let mut r = within(STEP, "login", Raw::login(&h)).await;
        tasks.spawn(async move {
            r.send(&bytes).await;
            let _ = r.s.shutdown().await;
            while let Next::Msg(..) = r.next_within(Duration::from_secs(15)).await {}
        });
    }
    within(STEP * 2, "garbage sessions end", async {
        while let Some(r) = tasks.join_next().await {
            r.expect("garbage session task");
        }
    })
    .await;
    wait_client_count(&h, 1).await;
    assert_alive(&other).await;
    // Four transactions at once use all four pooled server connections.
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut r = Raw::login(&h).await;
        r.exec("begin").await;
        assert_eq!(r.query_one(&format!("select {i}")).await, i.to_string());
        clients.push(r);
    }
    for mut r in clients {
        r.exec("commit").await;
    }
}

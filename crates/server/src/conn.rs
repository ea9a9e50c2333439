//! [`ServerConn`]: an authenticated connection to one PostgreSQL server, idle at a sync point.

use crate::{Closer, ServerError, SocketOptions, auth};
use bytes::BytesMut;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use switchyard_proto::backend::{self, ErrorFields, TxStatus, tag};
use switchyard_proto::{Frame, decode_frame, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest message the proxy reads from a server outside the relay (startup, internal queries).
const MAX_INTERNAL_MESSAGE: usize = 1 << 20;

/// Everything needed to open a server connection.
#[derive(Clone, PartialEq)]
pub struct ConnectParams {
    pub addr: String,
    /// The name the server's TLS certificate must carry (and SNI), when it is not `addr`'s
    /// host: an address learned from a DNS endpoint is checked against the endpoint's name.
    pub server_name: Option<String>,
    pub user: String,
    pub database: String,
    /// What to prove ourselves with when the server asks.
    pub credential: crate::Credential,
    pub connect_timeout: Duration,
    pub socket: SocketOptions,
    /// The authentication methods answered when the server asks.
    pub allowed_auth: crate::AllowedAuth,
    /// TLS to the server (`[server] tls`), shared by every connection of a config load.
    pub tls: std::sync::Arc<switchyard_tls::ToServer>,
    /// Check at login whether this user may run the commit probe (`[failover]
    /// resolve_commits`): a probe that failed inside a transaction would abort it.
    pub probe_commits: bool,
    /// With `probe_commits`: prepare the write probe too (`[failover]
    /// resolve_autocommit_writes`); without it on a connection, writes are not probed.
    pub probe_writes: bool,
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectParams")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// The key a server gave for cancelling its current query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendKey {
    pub process_id: i32,
    pub secret: bytes::Bytes,
}

/// Where and how to cancel what a server connection is running: made once per connection and
/// shared (not copied) with each client that uses it.
#[derive(Debug)]
pub struct CancelKey {
    pub addr: std::sync::Arc<str>,
    pub key: BackendKey,
}

/// An authenticated server connection. Between uses it sits at a sync point (ReadyForQuery seen,
/// nothing outstanding); the relay keeps it that way or discards it.
pub struct ServerConn {
    pub stream: switchyard_tls::Stream,
    /// Bytes read from the server and not yet consumed.
    pub read_buf: BytesMut,
    pub addr: std::sync::Arc<str>,
    /// Parameters as the server last reported them (and search_path as last set).
    pub params: BTreeMap<String, String>,
    /// The backend key with the address: what cancels this connection's work, shared with the
    /// client registry. See [`ServerConn::key`].
    pub cancel_key: std::sync::Arc<CancelKey>,
    pub created: Instant,
    pub last_used: Instant,
    /// Server-side names of prepared statements that exist on this connection.
    pub prepared: crate::Prepared,
    /// Fingerprint of the client settings `params` was last brought in line with (0: none), so
    /// a client whose settings already match skips the comparison.
    pub settings_fingerprint: u64,
    /// Bytes still to come of a message the relay is passing to a client in pieces (0: the
    /// stream is at a message boundary). While it is not zero, that client has part of a
    /// message and nothing else may be written to it.
    pub passthrough: u32,
    /// The probe sent with the COMMIT in flight, if any (commit outcome resolution).
    pub commit_probe: crate::CommitProbe,
    /// This connection's user may run the probe (checked at login when asked for).
    pub can_probe_commits: bool,
    /// What a session-mode client has built on this connection (None in transaction mode).
    pub built: Option<Box<crate::BuiltState>>,
    /// Session mode: the FATAL (57P0x) the server ended the connection with, not yet passed
    /// to the client: passed on if the primary stays (a terminated backend), not if it is
    /// going away (the session is rebuilt elsewhere).
    pub held_fatal: Option<switchyard_proto::Frame>,
    /// Topology generation this connection was opened under; retired when it is over.
    pub generation: u64,
    /// Cuts the socket off from another task (the pool, when the topology moves on).
    pub closer: Closer,
}

impl ServerConn {
    /// The server's backend key (process id and secret), as it sent it at login.
    pub fn key(&self) -> &BackendKey {
        &self.cancel_key.key
    }

    /// Connects, authenticates and reads up to the first ReadyForQuery, all within
    /// `connect_timeout`.
    pub async fn connect(p: &ConnectParams) -> Result<Self, ServerError> {
        let t = p.connect_timeout;
        tokio::time::timeout(t, Self::connect_inner(p))
            .await
            .map_err(|_| ServerError::Timeout {
                addr: p.addr.clone(),
                what: "connect and login",
                after_ms: t.as_millis(),
            })?
    }

    async fn connect_inner(p: &ConnectParams) -> Result<Self, ServerError> {
        let stream = TcpStream::connect(&p.addr)
            .await
            .map_err(|source| ServerError::Connect {
                addr: p.addr.clone(),
                source,
            })?;
        p.socket
            .apply(&stream)
            .map_err(|source| ServerError::Connect {
                addr: p.addr.clone(),
                source,
            })?;
        let closer = Closer::new(&stream).map_err(|source| ServerError::Connect {
            addr: p.addr.clone(),
            source,
        })?;
        let stream = p
            .tls
            .negotiate(
                stream,
                p.server_name
                    .as_deref()
                    .unwrap_or_else(|| switchyard_tls::host_of(&p.addr)),
            )
            .await
            .map_err(|source| ServerError::Tls {
                addr: p.addr.clone(),
                source,
            })?;
        let now = Instant::now();
        let mut conn = Self {
            closer,
            stream,
            read_buf: BytesMut::with_capacity(8192),
            addr: p.addr.as_str().into(),
            params: BTreeMap::new(),
            cancel_key: std::sync::Arc::new(CancelKey {
                addr: p.addr.as_str().into(),
                key: BackendKey {
                    process_id: 0,
                    secret: bytes::Bytes::new(),
                },
            }),
            settings_fingerprint: 0,
            passthrough: 0,
            commit_probe: crate::CommitProbe::None,
            held_fatal: None,
            can_probe_commits: false,
            built: None,
            generation: 0,
            created: now,
            last_used: now,
            prepared: crate::Prepared::default(),
        };
        let mut startup = BytesMut::new();
        switchyard_proto::startup::encode_startup(
            &[("user", &p.user), ("database", &p.database)],
            &mut startup,
        );
        conn.write_out(&startup).await?;
        auth::authenticate(&mut conn, p).await?;
        conn.read_until_ready().await?;
        if p.probe_commits {
            // Outside any transaction, so a refusal here harms nothing.
            let row = conn.query_row(crate::commit_probe::PRIVILEGE_SQL).await;
            conn.can_probe_commits = matches!(row.as_deref(), Ok([Some(t)]) if t == "t");
            if conn.can_probe_commits {
                use crate::commit_probe::{PROBE_SQL, PROBE_STATEMENT};
                use crate::commit_probe::{WRITE_PROBE_SQL, WRITE_PROBE_STATEMENT};
                conn.prepare_probe(PROBE_STATEMENT, PROBE_SQL).await?;
                if p.probe_writes {
                    conn.prepare_probe(WRITE_PROBE_STATEMENT, WRITE_PROBE_SQL)
                        .await?;
                }
            }
        }
        Ok(conn)
    }

    /// Reads one whole message (outside the relay).
    ///
    /// Cancel safety: not cancel-safe across a partial message only in that the partial bytes
    /// stay in `read_buf`; a later call resumes correctly.
    pub async fn read_frame(&mut self) -> Result<Frame, ServerError> {
        loop {
            if let Some(f) = decode_frame(&mut self.read_buf, MAX_INTERNAL_MESSAGE)? {
                return Ok(f);
            }
            if self.stream.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ServerError::Closed);
            }
        }
    }

    pub async fn send(&mut self, frame: &Frame) -> Result<(), ServerError> {
        self.write_out(&frame.to_bytes()).await
    }

    /// Writes all of `bytes` and flushes them (over TLS, written bytes may wait in the
    /// session until then).
    pub(crate) async fn write_out(&mut self, bytes: &[u8]) -> Result<(), ServerError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// After authentication: collects ParameterStatus and BackendKeyData until ReadyForQuery.
    async fn read_until_ready(&mut self) -> Result<(), ServerError> {
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                tag::PARAMETER_STATUS => {
                    let (k, v) = backend::decode_parameter_status(&f)?;
                    self.params.insert(k, v);
                }
                tag::BACKEND_KEY_DATA => {
                    let (process_id, secret) = backend::decode_backend_key_data(&f)?;
                    self.cancel_key = std::sync::Arc::new(CancelKey {
                        addr: self.addr.clone(),
                        key: BackendKey {
                            process_id,
                            secret: secret.into(),
                        },
                    });
                }
                tag::ERROR_RESPONSE => {
                    return Err(ServerError::Refused(Box::new(ErrorFields::decode(&f)?)));
                }
                tag::READY_FOR_QUERY => return Ok(()),
                _ => {} // NoticeResponse and friends
            }
        }
    }

    /// Runs a simple query whose rows are not wanted (reset, SET) and waits for ReadyForQuery.
    /// The caller bounds it with a timeout.
    pub async fn run(&mut self, sql: &str) -> Result<TxStatus, ServerError> {
        self.send(&frontend::query(sql)).await?;
        let mut failure = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                tag::ERROR_RESPONSE => failure = Some(ErrorFields::decode(&f)?),
                tag::PARAMETER_STATUS => {
                    let (k, v) = backend::decode_parameter_status(&f)?;
                    self.params.insert(k, v);
                }
                tag::READY_FOR_QUERY => {
                    let status = backend::decode_ready_for_query(&f)?;
                    return match failure {
                        Some(e) => Err(ServerError::Query(Box::new(e))),
                        None => Ok(status),
                    };
                }
                _ => {}
            }
        }
    }

    /// Runs a query and returns its first row as text values (NULL as `None`); an empty
    /// result gives an empty row. The caller bounds it with a timeout.
    pub async fn query_row(&mut self, sql: &str) -> Result<Vec<Option<String>>, ServerError> {
        self.send(&frontend::query(sql)).await?;
        self.first_row().await
    }

    /// As [`Self::query_row`], with `params` bound to `$1`, `$2`… (extended protocol: a value
    /// is never spliced into the SQL).
    pub async fn query_row_with(
        &mut self,
        sql: &str,
        params: &[&str],
    ) -> Result<Vec<Option<String>>, ServerError> {
        let mut out = BytesMut::new();
        for f in frontend::extended_query(sql, params) {
            out.extend_from_slice(&f.to_bytes());
        }
        self.write_out(&out).await?;
        self.first_row().await
    }

    /// Prepares a probe (the commit probe, [`crate::commit_probe::PROBE_STATEMENT`], or the
    /// write probe); if the server refuses, the commit probe goes as a simple query, and
    /// writes are not probed.
    async fn prepare_probe(&mut self, name: &'static [u8], sql: &str) -> Result<(), ServerError> {
        let mut parse = BytesMut::new();
        parse.extend_from_slice(name);
        parse.extend_from_slice(&[0]);
        parse.extend_from_slice(sql.as_bytes());
        parse.extend_from_slice(&[0, 0, 0]); // no parameter types
        let mut out = BytesMut::new();
        Frame::new(frontend::tag::PARSE, parse.freeze()).encode(&mut out);
        Frame::new(frontend::tag::SYNC, bytes::Bytes::new()).encode(&mut out);
        self.write_out(&out).await?;
        match self.first_row().await {
            Ok(_) => {
                self.prepared
                    .insert(bytes::Bytes::from_static(name), usize::MAX);
                Ok(())
            }
            Err(ServerError::Query(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads a query's answers up to ReadyForQuery; returns its first row.
    async fn first_row(&mut self) -> Result<Vec<Option<String>>, ServerError> {
        let (mut row, mut failure) = (None, None);
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                tag::DATA_ROW if row.is_none() => row = Some(decode_row(&f)?),
                tag::ERROR_RESPONSE => failure = Some(ErrorFields::decode(&f)?),
                tag::READY_FOR_QUERY => {
                    return match failure {
                        Some(e) => Err(ServerError::Query(Box::new(e))),
                        None => Ok(row.unwrap_or_default()),
                    };
                }
                _ => {}
            }
        }
    }

    /// True if the connection still looks usable: nothing arrived while it sat idle (an idle
    /// server sends nothing; an EOF, an error or an unsolicited FATAL means it is gone).
    pub fn is_alive(&self) -> bool {
        self.stream.idle_and_open()
    }

    /// Tells the server goodbye; errors are irrelevant at that point.
    pub async fn terminate(mut self) {
        let bye = Frame::new(frontend::tag::TERMINATE, bytes::Bytes::new());
        let _ = tokio::time::timeout(Duration::from_millis(200), self.send(&bye)).await;
    }
}

fn decode_row(f: &Frame) -> Result<Vec<Option<String>>, ServerError> {
    let mut c = switchyard_proto::cursor::Cursor::new(f.tag, f.body.clone());
    let n = c.i16()?.max(0) as usize;
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        let len = c.i32()?;
        row.push(if len < 0 {
            None
        } else {
            Some(String::from_utf8_lossy(&c.bytes(len as usize)?).into_owned())
        });
    }
    Ok(row)
}

/// Sends a CancelRequest for `key` to the server at `addr`, bounded by `timeout`.
pub async fn send_cancel(
    addr: &str,
    key: &BackendKey,
    timeout: Duration,
) -> Result<(), ServerError> {
    let work = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|source| ServerError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let mut out = BytesMut::new();
        switchyard_proto::startup::encode_cancel(key.process_id, &key.secret, &mut out);
        s.write_all(&out).await?;
        // The server closes the socket once it has read the request.
        let mut sink = [0u8; 16];
        let _ = s.read(&mut sink).await;
        Ok(())
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ServerError::Timeout {
            addr: addr.to_string(),
            what: "cancel request",
            after_ms: timeout.as_millis(),
        })?
}

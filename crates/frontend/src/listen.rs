//! Transaction-mode LISTEN: a [`Hub`] per (cluster, database, user) keeps one server
//! connection of its own that holds every LISTEN its clients asked for, and passes each
//! notification to the [`Inbox`] of every client listening on its channel. After a failover it
//! listens again on the new primary and tells each of those clients, with a NOTICE, for how
//! long nobody listened.
//!
//! Why: a pooled connection goes back to the pool after every transaction, so a LISTEN sent
//! through one would keep hearing for whichever client holds it next. The session side (what
//! is answered here, and when notifications reach the client) is `session/listen.rs`.

use crate::session::login::primary_pool;
use crate::session::pool_for::{INTERNAL_QUERY_TIMEOUT, Target};
use crate::{Proxy, SessionError};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use switchyard_config::EffectivePool;
use switchyard_proto::backend::{ErrorFields, tag};
use switchyard_proto::{Frame, frontend};
use switchyard_server::{ServerConn, ServerError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// A LISTEN or UNLISTEN a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenOp {
    Listen(String),
    /// `None`: `UNLISTEN *`.
    Unlisten(Option<String>),
}

/// Notifications waiting for a client longer than this (in bytes) are dropped, and the client
/// is told how many at the next delivery: a client that never reads cannot grow the proxy.
const MAX_WAITING_BYTES: usize = 1 << 20;

/// How often a hub looks for clients that have left (their inboxes are gone) to UNLISTEN
/// channels nobody wants any more.
const SWEEP: Duration = Duration::from_secs(10);

/// After a failed attempt to listen again on a primary, the next one waits this long.
const RETRY: Duration = Duration::from_millis(500);

/// One client's waiting notifications (NotificationResponse and NoticeResponse messages, as
/// the client will get them). Held by the client's registration; hubs keep a weak reference.
#[derive(Default)]
pub struct Inbox {
    id: u64,
    state: Mutex<Waiting>,
    /// LISTEN/UNLISTEN statements the client prepared by name (asyncpg prepares every
    /// statement), answered here when it binds them.
    prepared: Mutex<HashMap<Bytes, ListenOp>>,
}

/// Most LISTEN statements one client may keep prepared (more are not remembered: binding
/// them then fails as an unknown statement would).
const MAX_PREPARED: usize = 1000;

#[derive(Default)]
struct Waiting {
    frames: VecDeque<Bytes>,
    bytes: usize,
    dropped: u64,
    waker: Option<Waker>,
}

impl Inbox {
    fn state(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn push(&self, frame: Bytes) {
        let mut w = self.state();
        if w.bytes + frame.len() > MAX_WAITING_BYTES {
            w.dropped += 1;
        } else {
            w.bytes += frame.len();
            w.frames.push_back(frame);
        }
        if let Some(waker) = w.waker.take() {
            waker.wake();
        }
    }

    /// Ready once something waits; else the task is woken when something arrives.
    pub fn poll_mail(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut w = self.state();
        if w.frames.is_empty() && w.dropped == 0 {
            w.waker = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    fn prepared(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, ListenOp>> {
        self.prepared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the client's statement `name` does, if it is a LISTEN or UNLISTEN.
    pub fn prepared_listen(&self, name: &[u8]) -> Option<ListenOp> {
        self.prepared().get(name).cloned()
    }

    /// Records the LISTEN statements a flight prepared and forgets those it closed.
    pub fn note_prepared(&self, prepared: Vec<(Bytes, ListenOp)>, closed: &[Bytes]) {
        let mut map = self.prepared();
        for name in closed {
            map.remove(name);
        }
        for (name, op) in prepared {
            if map.len() < MAX_PREPARED || map.contains_key(&name) {
                map.insert(name, op);
            }
        }
    }

    /// Whether the client has LISTEN statements prepared by name.
    pub fn has_prepared(&self) -> bool {
        !self.prepared().is_empty()
    }

    /// Everything waiting, in order; first a warning if some had to be dropped.
    pub fn take(&self) -> Vec<Bytes> {
        let mut w = self.state();
        let mut out = Vec::with_capacity(w.frames.len() + 1);
        if w.dropped > 0 {
            let notice = ErrorFields::warning(
                "01000",
                format!(
                    "switchyard: {} notifications for this client were dropped: more than {} KiB \
                     of them waited while it was busy",
                    w.dropped,
                    MAX_WAITING_BYTES >> 10
                ),
            );
            out.push(notice.to_notice_frame().to_bytes());
            w.dropped = 0;
        }
        out.extend(w.frames.drain(..));
        w.bytes = 0;
        out
    }
}

/// Which hub serves a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct HubKey {
    cluster: String,
    server_db: String,
    user: String,
}

impl HubKey {
    fn of(target: &Target) -> Self {
        Self {
            cluster: target.cluster.clone(),
            server_db: target.server_db.clone(),
            user: target.user.name.clone(),
        }
    }
}

/// What a session asks of its hub.
enum Command {
    Listen {
        inbox: Weak<Inbox>,
        channel: String,
        /// When the client stops waiting for the answer: later, the request is dropped.
        deadline: Instant,
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    Unlisten {
        id: u64,
        channel: Option<String>,
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
}

/// The running hubs, by (cluster, database, user); the proxy holds one.
#[derive(Default)]
pub struct Hubs {
    running: Mutex<HashMap<HubKey, mpsc::UnboundedSender<Command>>>,
    next_inbox: AtomicU64,
}

impl Hubs {
    fn running(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<HubKey, mpsc::UnboundedSender<Command>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new, empty inbox for a client about to listen.
    pub fn inbox(&self) -> Arc<Inbox> {
        Arc::new(Inbox {
            id: self.next_inbox.fetch_add(1, Ordering::Relaxed),
            ..Inbox::default()
        })
    }

    /// Carries out `op` for the client whose inbox is `inbox`: `Ok` once the hub's server
    /// listens (LISTEN), at once for UNLISTEN. Waits at most until `deadline` (a LISTEN during
    /// a failover waits for the next primary).
    pub async fn apply(
        &self,
        proxy: &Arc<Proxy>,
        target: &Arc<Target>,
        settings: &Arc<EffectivePool>,
        inbox: &Arc<Inbox>,
        op: ListenOp,
        deadline: Instant,
    ) -> Result<(), SessionError> {
        let key = HubKey::of(target);
        let (reply, answer) = oneshot::channel();
        let command = match op {
            // Waited for too (briefly: the hub only forgets the client), so that a client
            // cannot pile up commands while its hub waits for a primary.
            ListenOp::Unlisten(channel) => Command::Unlisten {
                id: inbox.id,
                channel,
                reply,
            },
            ListenOp::Listen(channel) => Command::Listen {
                inbox: Arc::downgrade(inbox),
                channel,
                deadline,
                reply,
            },
        };
        {
            let mut running = self.running();
            if matches!(command, Command::Unlisten { .. }) && !running.contains_key(&key) {
                return Ok(()); // no hub: nobody listens for it
            }
            let hub = running.entry(key.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let hub = Hub::new(proxy.clone(), key, target.clone(), settings.clone(), rx);
                tokio::spawn(hub.run());
                tx
            });
            // Sent under the lock: a hub retires under it too, once it has no command left,
            // so a sender found here is one whose hub reads this command.
            let _ = hub.send(command);
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            // The hub stopped (shutdown), or the deadline passed.
            Ok(Err(_)) | Err(_) => Err(SessionError::ListenTimeout),
        }
    }
}

/// The hub's own server connection, at the primary of `generation`.
struct Listening {
    conn: ServerConn,
    generation: u64,
    generations: Option<watch::Receiver<u64>>,
}

/// What a listening hub heard.
enum Heard {
    Frame(Frame),
    Lost(String),
}

/// One (cluster, database, user)'s listening connection and its subscribers.
struct Hub {
    proxy: Arc<Proxy>,
    key: HubKey,
    target: Arc<Target>,
    settings: Arc<EffectivePool>,
    commands: mpsc::UnboundedReceiver<Command>,
    inboxes: HashMap<u64, (Weak<Inbox>, BTreeSet<String>)>,
    by_channel: HashMap<String, HashSet<u64>>,
    server: Option<Listening>,
    /// Since when nobody listens though clients want to (the server was lost), and why.
    deaf_since: Option<(Instant, String)>,
    /// The next attempt to listen again, after a failed one.
    retry_at: Option<Instant>,
}

impl Hub {
    fn new(
        proxy: Arc<Proxy>,
        key: HubKey,
        target: Arc<Target>,
        settings: Arc<EffectivePool>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        Self {
            proxy,
            key,
            target,
            settings,
            commands,
            inboxes: HashMap::new(),
            by_channel: HashMap::new(),
            server: None,
            deaf_since: None,
            retry_at: None,
        }
    }

    async fn run(mut self) {
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let background = self.proxy.background.clone();
        loop {
            let deaf = self.server.is_none() && !self.by_channel.is_empty();
            let retry_at = self.retry_at.unwrap_or_else(Instant::now);
            tokio::select! {
                () = background.cancelled() => return,
                command = self.commands.recv() => match command {
                    Some(c) => self.handle(c).await,
                    None => return,
                },
                heard = next(&mut self.server) => match heard {
                    Heard::Frame(f) => self.heard(f),
                    Heard::Lost(why) => self.lost(why),
                },
                () = tokio::time::sleep_until(retry_at), if deaf => {
                    let deadline = Instant::now() + self.failover_timeout();
                    if self.connect(deadline).await.is_err() {
                        self.retry_at = Some(Instant::now() + RETRY);
                    }
                }
                _ = sweep.tick() => self.sweep().await,
            }
            if self.by_channel.is_empty() && self.retire() {
                return;
            }
        }
    }

    fn failover_timeout(&self) -> Duration {
        self.proxy.failover_timeout()
    }

    /// With no channel left to listen on: leaves the registry, unless a command came
    /// meanwhile (true: the hub ends, its connection closed with it). Commands are sent under
    /// the registry's lock, so none can come between the check and the removal.
    fn retire(&mut self) -> bool {
        let mut running = self.proxy.listen_hubs.running();
        if !self.commands.is_empty() {
            return false;
        }
        running.remove(&self.key);
        true
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Listen {
                inbox,
                channel,
                deadline,
                reply,
            } => {
                if Instant::now() >= deadline || reply.is_closed() {
                    return;
                }
                let id = inbox.upgrade().map(|i| i.id);
                let result = self.listen(inbox, channel.clone(), deadline).await;
                let listened = result.is_ok();
                if reply.send(result).is_err()
                    && listened
                    && let Some(id) = id
                {
                    // The client stopped waiting (its deadline passed): it was told the
                    // LISTEN failed, so it must not hear on that channel.
                    if let Some((_, channels)) = self.inboxes.get_mut(&id) {
                        channels.remove(&channel);
                    }
                    self.leave(id, vec![channel]).await;
                }
            }
            Command::Unlisten { id, channel, reply } => {
                let dropped = match (self.inboxes.get_mut(&id), channel) {
                    (None, _) => Vec::new(),
                    (Some((_, channels)), Some(c)) => {
                        if channels.remove(&c) {
                            vec![c]
                        } else {
                            Vec::new()
                        }
                    }
                    (Some((_, channels)), None) => std::mem::take(channels).into_iter().collect(),
                };
                self.leave(id, dropped).await;
                let _ = reply.send(Ok(()));
            }
        }
    }

    async fn listen(
        &mut self,
        inbox: Weak<Inbox>,
        channel: String,
        deadline: Instant,
    ) -> Result<(), SessionError> {
        let Some(id) = inbox.upgrade().map(|i| i.id) else {
            return Ok(()); // the client has left
        };
        if self.server.is_none() {
            self.connect(deadline).await?;
        }
        let new = !self.by_channel.contains_key(&channel);
        // Registered first: a notification that comes with the LISTEN's answer is passed on.
        self.by_channel
            .entry(channel.clone())
            .or_default()
            .insert(id);
        self.inboxes
            .entry(id)
            .or_insert_with(|| (inbox, BTreeSet::new()))
            .1
            .insert(channel.clone());
        if new {
            let sql = format!("LISTEN {}", quote(&channel));
            if let Err(e) = self.execute(&sql).await {
                if let Some((_, channels)) = self.inboxes.get_mut(&id) {
                    channels.remove(&channel);
                }
                self.leave(id, vec![channel]).await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// `id` no longer listens on `channels`: UNLISTEN those nobody else wants.
    async fn leave(&mut self, id: u64, channels: Vec<String>) {
        let mut unwanted = Vec::new();
        for c in channels {
            if let Some(ids) = self.by_channel.get_mut(&c) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_channel.remove(&c);
                    unwanted.push(c);
                }
            }
        }
        if self.inboxes.get(&id).is_some_and(|(_, c)| c.is_empty()) {
            self.inboxes.remove(&id);
        }
        if unwanted.is_empty() || self.server.is_none() {
            return;
        }
        let sql: Vec<String> = unwanted
            .iter()
            .map(|c| format!("UNLISTEN {}", quote(c)))
            .collect();
        // A failure loses the connection; listening again later covers only wanted channels.
        let _ = self.execute(&sql.join("; ")).await;
    }

    /// Forgets clients that have left, and UNLISTENs what only they wanted.
    async fn sweep(&mut self) {
        let gone: Vec<(u64, Vec<String>)> = self
            .inboxes
            .iter()
            .filter(|(_, (inbox, _))| inbox.strong_count() == 0)
            .map(|(id, (_, channels))| (*id, channels.iter().cloned().collect()))
            .collect();
        for (id, channels) in gone {
            if let Some(entry) = self.inboxes.get_mut(&id) {
                entry.1.clear();
            }
            self.leave(id, channels).await;
        }
    }

    /// Opens a connection at the current primary (waiting in the failover gate until
    /// `deadline`) and listens there on every wanted channel; then tells the clients that
    /// were left without a listener for how long.
    async fn connect(&mut self, deadline: Instant) -> Result<(), SessionError> {
        let gate = deadline.saturating_duration_since(Instant::now());
        let (pool, generation) =
            primary_pool(&self.proxy, &self.target, &self.settings, gate).await?;
        let left = deadline.saturating_duration_since(Instant::now());
        let conn =
            match tokio::time::timeout(left, ServerConn::connect(pool.connect_params())).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return Err(SessionError::Server(e)),
                Err(_) => return Err(SessionError::ListenTimeout),
            };
        let generations = self
            .proxy
            .router
            .monitor(&self.target.cluster)
            .map(|m| m.generations());
        self.server = Some(Listening {
            conn,
            generation,
            generations,
        });
        self.retry_at = None;
        if !self.by_channel.is_empty() {
            let sql: Vec<String> = self
                .by_channel
                .keys()
                .map(|c| format!("LISTEN {}", quote(c)))
                .collect();
            if let Err(e) = self.execute(&sql.join("; ")).await {
                // (A server that refuses, say one in recovery: not listening, so deaf.)
                self.lost(format!("LISTEN again failed: {e}"));
                return Err(e);
            }
        }
        tracing::info!(cluster = %self.key.cluster, database = %self.key.server_db, user = %self.key.user, server = %pool.addr(), channels = self.by_channel.len(), "listening for transaction-mode clients");
        if let Some((since, why)) = self.deaf_since.take() {
            self.tell_gap(since.elapsed(), &why);
        }
        Ok(())
    }

    /// Runs LISTEN/UNLISTEN statements on the hub's connection, passing on notifications that
    /// arrive meanwhile. A failure of the connection loses it (and is the caller's error).
    async fn execute(&mut self, sql: &str) -> Result<(), SessionError> {
        let Some(server) = self.server.as_mut() else {
            return Err(SessionError::ListenTimeout);
        };
        let ran = tokio::time::timeout(INTERNAL_QUERY_TIMEOUT, async {
            server.conn.send(&frontend::query(sql)).await?;
            let mut heard = Vec::new();
            let mut failure = None;
            loop {
                let f = server.conn.read_frame().await?;
                match f.tag {
                    tag::NOTIFICATION_RESPONSE => heard.push(f),
                    tag::ERROR_RESPONSE => failure = Some(ErrorFields::decode(&f)?),
                    tag::READY_FOR_QUERY => return Ok::<_, ServerError>((heard, failure)),
                    _ => {}
                }
            }
        })
        .await;
        match ran {
            Ok(Ok((heard, failure))) => {
                for f in heard {
                    self.heard(f);
                }
                match failure {
                    None => Ok(()),
                    Some(e) => Err(SessionError::Server(ServerError::Query(Box::new(e)))),
                }
            }
            Ok(Err(e)) => {
                self.lost(e.to_string());
                Err(SessionError::Server(e))
            }
            Err(_) => {
                self.lost("a LISTEN was not answered in time".into());
                Err(SessionError::ListenTimeout)
            }
        }
    }

    /// A message from the listening connection.
    fn heard(&mut self, f: Frame) {
        match f.tag {
            tag::NOTIFICATION_RESPONSE => {
                let Some(channel) = notification_channel(&f.body) else {
                    return;
                };
                let Some(ids) = self.by_channel.get(channel) else {
                    return;
                };
                let bytes = f.to_bytes();
                for id in ids {
                    if let Some(inbox) = self.inboxes.get(id).and_then(|(i, _)| i.upgrade()) {
                        inbox.push(bytes.clone());
                    }
                }
            }
            tag::ERROR_RESPONSE => {
                // Only a FATAL comes unasked (a shutdown, a terminated backend).
                let why = ErrorFields::decode(&f)
                    .map(|e| format!("the server ended the connection: {}", e.message))
                    .unwrap_or_else(|_| "the server ended the connection".into());
                self.lost(why);
            }
            _ => {} // ParameterStatus, notices
        }
    }

    /// The listening connection is gone: from now on, until a new one listens, notifications
    /// are lost; the clients are told when listening resumes.
    fn lost(&mut self, why: String) {
        if self.server.take().is_none() {
            return;
        }
        tracing::warn!(cluster = %self.key.cluster, database = %self.key.server_db, user = %self.key.user, reason = %why, "the listening connection for transaction-mode clients was lost");
        if !self.by_channel.is_empty() && self.deaf_since.is_none() {
            self.deaf_since = Some((Instant::now(), why));
        }
        // Try again at once: the topology may already have moved on.
        self.retry_at = None;
    }

    /// Tells every listening client that notifications of its channels sent in the last
    /// `gap` were lost.
    fn tell_gap(&self, gap: Duration, why: &str) {
        for (inbox, channels) in self.inboxes.values() {
            let Some(inbox) = inbox.upgrade() else {
                continue;
            };
            if channels.is_empty() {
                continue;
            }
            let names: Vec<&str> = channels.iter().map(String::as_str).collect();
            let notice = ErrorFields::warning(
                "01000",
                format!(
                    "switchyard: nobody listened on {} for {} ms ({why}); notifications sent in \
                     that time were lost",
                    names.join(", "),
                    gap.as_millis()
                ),
            );
            inbox.push(notice.to_notice_frame().to_bytes());
        }
    }
}

/// The next message of the listening connection, or its loss (a read failure, or the
/// topology moving past its generation: a frozen primary closes nothing). Never resolves
/// without a connection.
///
/// Cancel safety: cancel-safe (a partial message stays in the connection's buffer).
async fn next(server: &mut Option<Listening>) -> Heard {
    let Some(s) = server else {
        return std::future::pending().await;
    };
    let moved = async {
        match s.generations.as_mut() {
            None => std::future::pending().await,
            Some(rx) => loop {
                if *rx.borrow_and_update() != s.generation {
                    return;
                }
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
            },
        }
    };
    tokio::select! {
        f = s.conn.read_frame() => match f {
            Ok(f) => Heard::Frame(f),
            Err(e) => Heard::Lost(e.to_string()),
        },
        () = moved => Heard::Lost("the cluster's primary changed".into()),
    }
}

/// The channel named by a NotificationResponse body (process id, channel, payload).
fn notification_channel(body: &[u8]) -> Option<&str> {
    let rest = body.get(4..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// `name` as a quoted identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inbox_is_bounded_and_says_what_it_dropped() {
        let hubs = Hubs::default();
        let inbox = hubs.inbox();
        let big = Bytes::from(vec![b'x'; 300 << 10]);
        for _ in 0..5 {
            inbox.push(big.clone());
        }
        let got = inbox.take();
        assert_eq!(got.len(), 1 + 3, "a warning, then the three that fit");
        assert_eq!(got[0][0], tag::NOTICE_RESPONSE);
        assert!(inbox.take().is_empty());
    }

    #[test]
    fn channel_names_and_quoting() {
        let mut body = 42i32.to_be_bytes().to_vec();
        body.extend_from_slice(b"jobs\0payload\0");
        assert_eq!(notification_channel(&body), Some("jobs"));
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}

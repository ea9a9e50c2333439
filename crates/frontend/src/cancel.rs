//! The client registry: every logged-in client (sessions and admin-console connections), under
//! the backend key Switchyard gave it.
//!
//! - Cancel routing: a CancelRequest with a client's key is forwarded to whichever server
//!   connection the client is using at that moment.
//! - What the admin console shows of each client (SHOW CLIENTS, SHOW SERVERS, SHOW POOLS): who
//!   it is, where from, since when, and whether it is idle, waiting for a server or using one.
//!
//! Per client this is one small shared [`Slot`], written only when a session attaches, detaches
//! or starts waiting, and read only by cancels and the console.

use crate::session::pool_for::Target;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_config::UserConfig;

/// Where a cancel for a client should go right now: the server connection's own key, shared.
pub type CancelTarget = Arc<switchyard_server::CancelKey>;

/// Who a registered client is.
pub enum Who {
    /// A client session, with what it is served from.
    Session(Arc<Target>),
    /// An admin-console connection, as this user.
    Console(Arc<UserConfig>),
}

/// What is known of a client from its login.
pub struct ClientInfo {
    pub who: Who,
    pub peer: Option<SocketAddr>,
    /// Wall-clock time of the login (Unix seconds).
    pub connected_unix_s: u64,
}

/// What a client is doing, as SHOW CLIENTS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Logged in, no request outstanding.
    Idle,
    /// A request waits for a server connection (failover gate, PAUSE, a full pool).
    Waiting,
    /// Using a server connection.
    Active,
}

impl ClientState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Waiting => "waiting",
            Self::Active => "active",
        }
    }
}

/// A copy of one client's registration, for the admin console.
#[derive(Debug, Clone)]
pub struct ClientSnapshot {
    /// The backend key's process id Switchyard gave the client.
    pub process_id: i32,
    pub user: String,
    /// The server user its pools log in as.
    pub server_user: String,
    /// The server database (`switchyard` for the console).
    pub server_db: String,
    /// Its cluster; `None` for an admin-console connection.
    pub cluster: Option<String>,
    pub peer: Option<SocketAddr>,
    pub connected_unix_s: u64,
    pub state: ClientState,
    /// Since the client's latest request started (waiting or attached), if it made one.
    pub request_age: Option<Duration>,
    /// The server connection in use: address and backend process id.
    pub server: Option<(Arc<str>, i32)>,
}

#[derive(Default)]
struct Link {
    server: Option<CancelTarget>,
    /// When the latest request started waiting or was attached.
    since: Option<Instant>,
    waiting: bool,
    /// A request started since the last sweep for idle sessions to park (see
    /// [`CancelRegistry::ask_idle_to_park`]). Clear at login: a client that has sent nothing
    /// since is parked by the next quick sweep ([`CancelRegistry::ask_fresh_to_park`]).
    touched: bool,
}

/// Where a session stands with parking (`crate::parking`), in [`Slot::park`].
mod park {
    /// Not asked (or asked, and it could not park then).
    pub const NO: u8 = 0;
    /// Asked to park at its next look; its task was woken to look.
    pub const ASKED: u8 = 1;
    /// Parked: no task until its client sends something.
    pub const PARKED: u8 = 2;
    /// Can never park (a TLS client): not asked again.
    pub const NEVER: u8 = 3;
}

/// One client's shared registration.
struct Slot {
    link: Mutex<Link>,
    info: ClientInfo,
    /// The session task's waker, kept from its first idle wait on: a shutdown (and the sweep
    /// that asks idle sessions to park) wakes every idle session through it, so an idle wait
    /// registers nothing anywhere (see `wake_all`). Set again by the task that resumes a parked
    /// session; `has_waker` lets the idle wait check that with one load.
    idle_waker: Mutex<Option<std::task::Waker>>,
    has_waker: AtomicBool,
    /// See [`park`].
    park: AtomicU8,
    /// Notifications waiting for the client (transaction-mode LISTEN), once it listens.
    inbox: std::sync::OnceLock<Arc<crate::listen::Inbox>>,
}

impl Slot {
    fn new(info: ClientInfo) -> Arc<Slot> {
        let park = match info.who {
            Who::Session(_) => park::NO,
            Who::Console(_) => park::NEVER,
        };
        Arc::new(Slot {
            link: Mutex::default(),
            info,
            idle_waker: Mutex::new(None),
            has_waker: AtomicBool::new(false),
            park: AtomicU8::new(park),
            inbox: std::sync::OnceLock::new(),
        })
    }

    /// Asks the session to park (waking its task to look) if it made no request since the
    /// last sweep, holds no server connection, waits for none and does not listen; clears the
    /// mark for the next sweep. True if asked.
    fn ask_to_park_if_idle(&self) -> bool {
        if self.park.load(Ordering::Relaxed) != park::NO || self.inbox.get().is_some() {
            return false;
        }
        let waker = {
            let mut link = self.link();
            let idle = link.server.is_none() && !link.waiting && !link.touched;
            link.touched = false;
            let waker = if idle {
                self.idle_waker().clone()
            } else {
                None
            };
            if waker.is_some() {
                // Under the link's lock: a request that starts now takes the request back
                // (`CancelHandle::link`, `waiting`).
                self.park.store(park::ASKED, Ordering::Release);
            }
            waker
        };
        match waker {
            Some(w) => {
                w.wake();
                true
            }
            None => false,
        }
    }

    /// A request starts: the session is not idle, whatever the last sweep asked (called with
    /// the link's lock held).
    fn touch(&self, link: &mut Link) {
        link.touched = true;
        if self.park.load(Ordering::Relaxed) == park::ASKED {
            self.park.store(park::NO, Ordering::Relaxed);
        }
    }

    fn idle_waker(&self) -> std::sync::MutexGuard<'_, Option<std::task::Waker>> {
        self.idle_waker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Entry {
    secret: [u8; 4],
    slot: Arc<Slot>,
}

type Entries = Arc<Mutex<HashMap<i32, Entry>>>;

#[derive(Default, Clone)]
pub struct CancelRegistry {
    entries: Entries,
    /// Sessions registered since the last sweep of fresh logins
    /// ([`CancelRegistry::ask_fresh_to_park`]), kept only while a sweeper runs
    /// (`sweeping`): nothing else empties it.
    fresh: Arc<Mutex<Vec<std::sync::Weak<Slot>>>>,
    sweeping: Arc<AtomicBool>,
}

fn lock(entries: &Entries) -> std::sync::MutexGuard<'_, HashMap<i32, Entry>> {
    entries.lock().unwrap_or_else(|p| p.into_inner())
}

/// A client's registration; unregisters on drop.
pub struct CancelHandle {
    entries: Entries,
    pub process_id: i32,
    pub secret: [u8; 4],
    slot: Arc<Slot>,
}

impl CancelRegistry {
    /// Wakes every session that has waited idle (at shutdown: each then sees it and ends).
    pub fn wake_all(&self) {
        for e in lock(&self.entries).values() {
            if let Some(w) = e.slot.idle_waker().as_ref() {
                w.wake_by_ref();
            }
        }
    }

    /// The sweep of `crate::parking`: asks every session that has been idle since the last
    /// sweep (no request started, no server connection, not listening) to park, by waking its
    /// task; returns how many were asked. Costs the hot path nothing: `touched` is set under
    /// the lock a session takes anyway when a request starts.
    pub fn ask_idle_to_park(&self) -> usize {
        lock(&self.entries)
            .values()
            .filter(|e| e.slot.ask_to_park_if_idle())
            .count()
    }

    /// The quick sweep of `crate::parking`: asks the sessions that logged in since the last
    /// quick sweep and have sent nothing since to park, so a crowd logging in at once is not
    /// held in tasks until the next full sweep. One not yet waiting for its first request is
    /// looked at again next time.
    pub fn ask_fresh_to_park(&self) -> usize {
        let fresh = std::mem::take(&mut *self.fresh.lock().unwrap_or_else(|p| p.into_inner()));
        let mut asked = 0;
        let mut again = Vec::new();
        for weak in fresh {
            let Some(slot) = weak.upgrade() else {
                continue;
            };
            if !slot.has_waker.load(Ordering::Acquire) {
                again.push(weak);
            } else if slot.ask_to_park_if_idle() {
                asked += 1;
            }
        }
        if !again.is_empty() {
            self.fresh
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(again);
        }
        asked
    }

    /// A sweeper (the parking lot's thread) runs from now on (`true`) or no longer.
    pub fn set_sweeping(&self, on: bool) {
        self.sweeping.store(on, Ordering::Release);
        if !on {
            self.fresh.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// Lists a new session for the next quick sweep, if one will run.
    fn note_fresh(&self, slot: &Arc<Slot>) {
        if let Who::Session(_) = slot.info.who
            && self.sweeping.load(Ordering::Acquire)
        {
            self.fresh
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::downgrade(slot));
        }
    }

    /// Registers a client that keeps the key another Switchyard process gave it (an online
    /// restart). If that process id is taken here, or the secret is not 4 bytes, the client
    /// gets a new key, which its cancel requests will not carry: they are refused then.
    pub fn register_key(&self, info: ClientInfo, process_id: i32, secret: &[u8]) -> CancelHandle {
        let Ok(secret) = <[u8; 4]>::try_from(secret) else {
            return self.register(info, None);
        };
        let mut entries = lock(&self.entries);
        if process_id <= 0 || entries.contains_key(&process_id) {
            drop(entries);
            return self.register(info, None);
        }
        let slot = Slot::new(info);
        self.note_fresh(&slot);
        entries.insert(
            process_id,
            Entry {
                secret,
                slot: slot.clone(),
            },
        );
        CancelHandle {
            entries: self.entries.clone(),
            process_id,
            secret,
            slot,
        }
    }

    /// Gives a new client a unique key: `process_id` if given and free (a session-mode client
    /// gets its server's process id), else a random one.
    pub fn register(&self, info: ClientInfo, process_id: Option<i32>) -> CancelHandle {
        let slot = Slot::new(info);
        self.note_fresh(&slot);
        let mut entries = lock(&self.entries);
        let mut wanted = process_id;
        loop {
            // Two servers may run a process with the same id: the second client gets its own.
            let process_id = wanted
                .take()
                .unwrap_or_else(|| rand::random::<i32>() & 0x7fff_ffff);
            if process_id <= 0 || entries.contains_key(&process_id) {
                continue;
            }
            let secret = rand::random::<[u8; 4]>();
            entries.insert(
                process_id,
                Entry {
                    secret,
                    slot: slot.clone(),
                },
            );
            return CancelHandle {
                entries: self.entries.clone(),
                process_id,
                secret,
                slot,
            };
        }
    }

    /// Forwards a cancel if the key matches a client that is using a server right now.
    /// Returns whether the key is a client's of this process.
    pub async fn cancel(&self, process_id: i32, secret: &[u8]) -> bool {
        let target = {
            let entries = lock(&self.entries);
            match entries.get(&process_id) {
                Some(e) if switchyard_proto::secrets_equal(&e.secret, secret) => {
                    e.slot.link().server.clone()
                }
                _ => return false,
            }
        };
        let Some(t) = target else {
            tracing::debug!(process_id, "cancel request for no active query");
            return true;
        };
        if let Err(e) =
            switchyard_server::send_cancel(&t.addr, &t.key, Duration::from_secs(5)).await
        {
            tracing::warn!(process_id, error = %e, "forwarding cancel request failed");
        }
        true
    }

    /// Every registered client, by process id.
    pub fn clients(&self) -> Vec<ClientSnapshot> {
        let slots: Vec<(i32, Arc<Slot>)> = lock(&self.entries)
            .iter()
            .map(|(pid, e)| (*pid, e.slot.clone()))
            .collect();
        let now = Instant::now();
        let mut all: Vec<ClientSnapshot> = slots
            .into_iter()
            .map(|(pid, slot)| snapshot(pid, &slot, now))
            .collect();
        all.sort_by_key(|c| c.process_id);
        all
    }
}

fn snapshot(process_id: i32, slot: &Slot, now: Instant) -> ClientSnapshot {
    let (server, since, waiting) = {
        let link = slot.link();
        let server = link
            .server
            .as_ref()
            .map(|t| (t.addr.clone(), t.key.process_id));
        (server, link.since, link.waiting)
    };
    let state = match (&server, waiting) {
        (Some(_), _) => ClientState::Active,
        (None, true) => ClientState::Waiting,
        (None, false) => ClientState::Idle,
    };
    let info = &slot.info;
    let (user, server_user, server_db, cluster) = match &info.who {
        Who::Session(t) => (
            t.user.name.clone(),
            t.user.server_user().to_owned(),
            t.server_db.clone(),
            Some(t.cluster.clone()),
        ),
        Who::Console(u) => (
            u.name.clone(),
            u.name.clone(),
            switchyard_config::CONSOLE_DATABASE.to_owned(),
            None,
        ),
    };
    ClientSnapshot {
        process_id,
        user,
        server_user,
        server_db,
        cluster,
        peer: info.peer,
        connected_unix_s: info.connected_unix_s,
        state,
        request_age: since.map(|s| now.saturating_duration_since(s)),
        server,
    }
}

impl CancelHandle {
    /// When the client logged in (Unix seconds).
    pub fn connected_unix_s(&self) -> u64 {
        self.slot.info.connected_unix_s
    }

    /// The client now uses this server connection (since `at`).
    pub fn link(&self, target: CancelTarget, at: Instant) {
        let mut link = self.slot.link();
        link.server = Some(target);
        if !link.waiting {
            link.since = Some(at);
        }
        link.waiting = false;
        self.slot.touch(&mut link);
    }

    /// Keeps `waker` (the session task's: it does not change while the task lives) for
    /// [`CancelRegistry::wake_all`] and [`CancelRegistry::ask_idle_to_park`].
    pub fn wake_on_shutdown(&self, waker: &std::task::Waker) {
        if self.slot.has_waker.load(Ordering::Acquire) {
            return;
        }
        *self.slot.idle_waker() = Some(waker.clone());
        self.slot.has_waker.store(true, Ordering::Release);
    }

    /// Asked to park by the last sweep: the caller either parks ([`CancelHandle::parked`]) or
    /// says it cannot ([`CancelHandle::cannot_park_now`], [`CancelHandle::can_never_park`]).
    pub fn asked_to_park(&self) -> bool {
        self.slot.park.load(Ordering::Acquire) == park::ASKED
    }

    /// The session parks: its task ends, and with it the waker kept here.
    pub fn parked(&self) {
        self.slot.park.store(park::PARKED, Ordering::Relaxed);
        self.slot.has_waker.store(false, Ordering::Release);
        *self.slot.idle_waker() = None;
    }

    /// The session could not park now (mid-request, or in a state only its task holds): it is
    /// asked again after its next idle sweep.
    pub fn cannot_park_now(&self) {
        self.slot.park.store(park::NO, Ordering::Relaxed);
    }

    /// The session can never park (a TLS client): it is not asked again.
    pub fn can_never_park(&self) {
        self.slot.park.store(park::NEVER, Ordering::Relaxed);
    }

    /// A parked session is being served again (by a new task: its waker comes at its first
    /// idle wait).
    pub fn unparked(&self) {
        self.slot.park.store(park::NO, Ordering::Relaxed);
    }

    /// The client's inbox of notifications, if it has listened.
    pub fn inbox(&self) -> Option<&Arc<crate::listen::Inbox>> {
        self.slot.inbox.get()
    }

    /// The client's inbox, made by `make` the first time.
    pub fn inbox_or_init(
        &self,
        make: impl FnOnce() -> Arc<crate::listen::Inbox>,
    ) -> &Arc<crate::listen::Inbox> {
        self.slot.inbox.get_or_init(make)
    }

    /// The client gave its server connection back (or lost it).
    pub fn unlink(&self) {
        self.slot.link().server = None;
    }

    /// The client's request starts (`Some`) or stops (`None`) waiting for a server connection.
    pub fn waiting(&self, since: Option<Instant>) {
        let mut link = self.slot.link();
        link.waiting = since.is_some();
        if since.is_some() {
            link.since = since;
            self.slot.touch(&mut link);
        }
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        lock(&self.entries).remove(&self.process_id);
    }
}

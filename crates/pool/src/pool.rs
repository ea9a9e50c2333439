//! One pool: its slots, idle connections and queue of waiting requests; checkout with a
//! deadline, release, resize, reap, and retiring the connections of an old topology generation.
//!
//! Everything is under one mutex, held for a few instructions at a time: the slot count, the
//! idle list, the queue and the registry of checked-out sockets. (A semaphore beside it would
//! take a second lock on every checkout and release, and could not hand a released connection
//! straight to the request that has waited longest.)

use crate::slots::{Handoff, Inner, Out, Waiter};
use crate::wait::{Queue, Wait};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};
use switchyard_server::{ConnectParams, ServerConn, ServerError};
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no server connection became free within {0:?}")]
    Timeout(Duration),
    /// The topology moved on (or the pool was removed) while the request waited: this pool's
    /// server is not the one to use any more. Nothing was sent; go back to the gate.
    #[error("the cluster's primary changed while waiting for a server connection")]
    Retired,
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// One idle server connection, for SHOW SERVERS.
#[derive(Debug, Clone)]
pub struct IdleServer {
    /// The server's backend process id.
    pub pid: i32,
    pub local_addr: Option<std::net::SocketAddr>,
    pub created: Instant,
    pub last_used: Instant,
    pub generation: u64,
}

/// Counters for SHOW POOLS and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub idle: usize,
    pub active: usize,
    pub waiting: usize,
}

pub use crate::slots::PoolSettings;

pub struct Pool {
    connect: ConnectParams,
    inner: Mutex<Inner>,
    /// Connections of older topology generations are retired, never reused.
    min_generation: AtomicU64,
    /// Wakes connection attempts when a generation is retired.
    retired: Notify,
    /// Removed from the registry (config reload): sessions must look up a new pool.
    removed: AtomicBool,
    /// Parameters the server reported at its first login: what a new client is told at startup.
    welcome: Mutex<Option<Arc<BTreeMap<String, String>>>>,
}

impl Queue for Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        Pool::lock(self)
    }

    fn reuse_or_close(
        &self,
        inner: &mut Inner,
        conn: Box<ServerConn>,
        now: Instant,
    ) -> (Option<Waker>, Option<Box<ServerConn>>) {
        Pool::reuse_or_close(self, inner, conn, now)
    }
}

/// A slot of a pool, held by a checked-out connection or a checkout that is opening one. Gives
/// the slot back when dropped, so a forgotten or cancelled checkout never leaks one.
pub(crate) struct Lease {
    pool: Option<Arc<Pool>>,
    /// The connection's entry among the checked-out sockets, once it has one (else `NO_OUT`).
    out: usize,
}

const NO_OUT: usize = usize::MAX;

impl Lease {
    pub(crate) fn new(pool: &Arc<Pool>, out: Option<usize>) -> Self {
        Self {
            pool: Some(pool.clone()),
            out: out.unwrap_or(NO_OUT),
        }
    }

    fn take_out(&mut self) -> Option<usize> {
        let out = std::mem::replace(&mut self.out, NO_OUT);
        (out != NO_OUT).then_some(out)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let mut inner = pool.lock();
            if let Some(key) = self.take_out() {
                inner.forget_out(key);
            }
            let wake = inner.free_slot();
            drop(inner);
            if let Some(w) = wake {
                w.wake();
            }
        }
    }
}

/// A checked-out server connection. Return it with [`Pool::release`]; dropping it closes it
/// and frees its slot.
pub struct Pooled {
    pub conn: Box<ServerConn>,
    lease: Lease,
}

impl Pooled {
    /// The pool it came from.
    pub fn pool(&self) -> &Arc<Pool> {
        self.lease
            .pool
            .as_ref()
            .expect("a checked-out connection has its pool")
    }

    /// Gives the connection back to its pool (see [`Pool::release`]); `now` is the time of
    /// release, already read by the caller.
    pub fn release_at(self, now: Instant) {
        let Pooled { conn, mut lease } = self;
        // The lease's work is done by `take_back`, under the pool's lock.
        if let Some(pool) = lease.pool.take() {
            pool.take_back(conn, lease.take_out(), now);
        }
    }
}

impl Pool {
    pub fn new(connect: ConnectParams, settings: PoolSettings) -> Arc<Self> {
        Arc::new(Self {
            connect,
            inner: Mutex::new(Inner::new(settings)),
            min_generation: AtomicU64::new(0),
            retired: Notify::new(),
            removed: AtomicBool::new(false),
            welcome: Mutex::new(None),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn addr(&self) -> &str {
        &self.connect.addr
    }

    pub fn connect_params(&self) -> &ConnectParams {
        &self.connect
    }

    /// Takes a connection for `generation`, waiting for a free slot at most `wait` (in line
    /// behind earlier requests), opening one if none is idle. Ends with [`PoolError::Retired`]
    /// as soon as `generation` is retired.
    ///
    /// Cancel safety: cancel-safe; a cancelled wait takes nothing.
    pub async fn checkout(
        self: &Arc<Self>,
        wait: Duration,
        generation: u64,
    ) -> Result<Pooled, PoolError> {
        self.checkout_by(wait, Instant::now() + wait, generation)
            .await
    }

    /// [`Pool::checkout`] with the deadline (`wait` after the request began) already worked out.
    pub async fn checkout_by(
        self: &Arc<Self>,
        wait: Duration,
        deadline: Instant,
        generation: u64,
    ) -> Result<Pooled, PoolError> {
        self.retire_before(generation);
        if generation < self.min_generation.load(Ordering::Relaxed) {
            return Err(PoolError::Retired);
        }
        let queued = {
            let mut inner = self.lock();
            if inner.busy < inner.settings.size && inner.waiting == 0 {
                inner.busy += 1;
                None
            } else {
                // The waker is set at the first poll.
                let key = inner.enqueue(Waiter::new(deadline, generation, Waker::noop().clone()));
                self.ensure_sweeper(&mut inner);
                Some(key)
            }
        };
        let lease = match queued {
            None => Lease::new(self, None),
            Some(key) => match Wait::new(self, key).await {
                Handoff::Conn(conn, key) => {
                    return Ok(Pooled {
                        conn,
                        lease: Lease::new(self, Some(key)),
                    });
                }
                Handoff::Slot => Lease::new(self, None),
                Handoff::Expired => return Err(PoolError::Timeout(wait)),
                Handoff::Retired => return Err(PoolError::Retired),
            },
        };
        self.fill(lease, generation).await
    }

    /// Takes an idle connection at once if a slot and a connection are free; never waits and
    /// never connects. The common case of a busy pool, without a future to poll.
    pub fn try_checkout(self: &Arc<Self>, generation: u64) -> Option<Pooled> {
        self.retire_before(generation);
        let min_generation = self.min_generation.load(Ordering::Relaxed);
        let mut inner = self.lock();
        if inner.busy >= inner.settings.size || inner.waiting > 0 || generation < min_generation {
            return None;
        }
        let conn = inner.take_idle(min_generation)?;
        inner.busy += 1;
        let key = inner.out.insert(Out::of(&conn));
        drop(inner);
        Some(Pooled {
            conn,
            lease: Lease::new(self, Some(key)),
        })
    }

    /// Puts a connection under a slot just taken: an idle one, or a new one.
    async fn fill(&self, mut lease: Lease, generation: u64) -> Result<Pooled, PoolError> {
        let min_generation = self.min_generation.load(Ordering::Relaxed);
        if generation < min_generation {
            // Retired while this request waited for its slot (the slot goes on to the next).
            return Err(PoolError::Retired);
        }
        {
            let mut inner = self.lock();
            if let Some(conn) = inner.take_idle(min_generation) {
                lease.out = inner.out.insert(Out::of(&conn));
                drop(inner);
                return Ok(Pooled { conn, lease });
            }
        }
        // Boxed: connecting is rare, and its state would make every checkout's future large.
        Box::pin(self.open_for(lease, generation)).await
    }

    /// Opens a connection under `lease`, abandoned as soon as `generation` is retired.
    async fn open_for(&self, mut lease: Lease, generation: u64) -> Result<Pooled, PoolError> {
        let mut open = std::pin::pin!(self.open());
        let mut conn = loop {
            let retired = self.retired.notified();
            tokio::pin!(retired);
            retired.as_mut().enable();
            if self.min_generation.load(Ordering::Relaxed) > generation {
                return Err(PoolError::Retired);
            }
            tokio::select! {
                c = &mut open => break c?,
                // Some generation was retired: this one, or an older one (then keep going).
                () = retired => {}
            }
        };
        conn.generation = generation;
        {
            let mut inner = self.lock();
            // Checked under the lock, so that a retirement either sees this socket or happened
            // before (and is seen here).
            if self.min_generation.load(Ordering::Relaxed) <= generation {
                lease.out = inner.out.insert(Out::of(&conn));
                drop(inner);
                return Ok(Pooled { conn, lease });
            }
        }
        Err(PoolError::Retired)
    }

    async fn open(&self) -> Result<Box<ServerConn>, ServerError> {
        let conn = Box::new(ServerConn::connect(&self.connect).await?);
        let mut welcome = self.welcome.lock().unwrap_or_else(|p| p.into_inner());
        if welcome.is_none() {
            *welcome = Some(Arc::new(conn.params.clone()));
        }
        Ok(conn)
    }

    pub fn cached_welcome(&self) -> Option<Arc<BTreeMap<String, String>>> {
        self.welcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The parameters a new client is told at startup, opening a connection to learn them if no
    /// connection was ever made.
    pub async fn welcome_params(
        self: &Arc<Self>,
        wait: Duration,
    ) -> Result<Arc<BTreeMap<String, String>>, PoolError> {
        if let Some(w) = self.cached_welcome() {
            return Ok(w);
        }
        // Any generation's server will do for the parameters: a retirement meanwhile is retried.
        let mut tries = 0;
        let c = loop {
            let generation = self.min_generation.load(Ordering::Relaxed);
            match self.checkout(wait, generation).await {
                Err(PoolError::Retired) if tries < 3 => tries += 1,
                other => break other?,
            }
        };
        let params = self
            .cached_welcome()
            .unwrap_or_else(|| Arc::new(c.conn.params.clone()));
        self.release(c);
        Ok(params)
    }

    /// Returns a connection that is at a sync point and idle (no transaction open). (The same
    /// as [`Pooled::release_at`] with the time now.)
    pub fn release(&self, pooled: Pooled) {
        debug_assert!(std::ptr::eq(&**pooled.pool(), self));
        pooled.release_at(Instant::now());
    }

    /// Takes back a connection whose lease was just ended (`out`: its checked-out entry).
    fn take_back(&self, conn: Box<ServerConn>, out: Option<usize>, now: Instant) {
        let mut inner = self.lock();
        if let Some(key) = out {
            inner.forget_out(key);
        }
        let (wake, closed) = self.reuse_or_close(&mut inner, conn, now);
        drop(inner);
        drop(closed);
        if let Some(w) = wake {
            w.wake();
        }
    }

    /// Under the lock: a connection that came back goes on (to a waiter or the idle list) if it
    /// is still reusable — within its lifetime, of a current generation, not opened before a
    /// RECONNECT, its pool not removed; else its slot is freed and it is returned, to be closed
    /// once the lock is released. Every way back into the pool comes through here.
    pub(crate) fn reuse_or_close(
        &self,
        inner: &mut Inner,
        mut conn: Box<ServerConn>,
        now: Instant,
    ) -> (Option<Waker>, Option<Box<ServerConn>>) {
        let reusable = now.duration_since(conn.created) < inner.settings.lifetime
            && conn.generation >= self.min_generation.load(Ordering::Relaxed)
            && inner.reconnect_before.is_none_or(|t| conn.created > t)
            && !self.removed.load(Ordering::Relaxed);
        if reusable {
            conn.last_used = now;
            inner.put_back(conn)
        } else {
            (inner.free_slot(), Some(conn))
        }
    }

    /// Closes a checked-out connection that is not reusable (broken, mid-transaction).
    pub fn discard(&self, pooled: Pooled) {
        drop(pooled);
    }

    /// Applies new settings; shrinking takes effect as connections come back, growing lets
    /// waiting requests in at once.
    pub fn resize(&self, settings: PoolSettings) {
        let mut inner = self.lock();
        let new = settings.size;
        inner.settings = settings;
        let mut wakers = Vec::new();
        while inner.busy < new
            && let Some(key) = inner.next_waiting()
        {
            inner.busy += 1;
            wakers.push(inner.hand(key, Handoff::Slot));
        }
        let max_idle = new.saturating_sub(inner.busy);
        while inner.idle.len() > max_idle {
            inner.idle.pop_front();
        }
        drop(inner);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Retires connections opened before `generation`: idle ones close now, checked-out ones
    /// are shut down (their session's read ends at once) and close when they come back, and
    /// requests waiting for an older generation are sent back to the gate.
    pub fn retire_before(&self, generation: u64) {
        // A plain read first: this is on every checkout, and almost never retires anything.
        if self.min_generation.load(Ordering::Relaxed) >= generation
            || self.min_generation.fetch_max(generation, Ordering::Relaxed) >= generation
        {
            return;
        }
        let mut inner = self.lock();
        inner.idle.retain(|c| c.generation >= generation);
        for (_, o) in inner.out.iter() {
            if o.generation < generation {
                o.closer.shut_down();
            }
        }
        let wakers = inner.retire_waiters(generation);
        drop(inner);
        wakers.into_iter().for_each(Waker::wake);
        self.retired.notify_waiters();
    }

    /// RECONNECT: closes the idle connections now, and the checked-out ones when they come
    /// back; new connections are opened as needed.
    pub fn reconnect(&self) {
        let mut inner = self.lock();
        inner.reconnect_before = Some(Instant::now());
        inner.idle.clear();
    }

    /// The idle connections, oldest use first.
    pub fn idle_servers(&self) -> Vec<IdleServer> {
        self.lock()
            .idle
            .iter()
            .map(|c| IdleServer {
                pid: c.key().process_id,
                local_addr: c.stream.tcp().and_then(|t| t.local_addr().ok()),
                created: c.created,
                last_used: c.last_used,
                generation: c.generation,
            })
            .collect()
    }

    pub fn stats(&self) -> PoolStats {
        let inner = self.lock();
        PoolStats {
            idle: inner.idle.len(),
            active: inner.out.len(),
            waiting: inner.waiting,
        }
    }

    /// Closes idle connections past their idle timeout (keeping `min_idle`) or lifetime; returns
    /// how many connections should be opened to reach `min_idle`, and whether the pool itself
    /// has been unused (no connection, no request, no `min_idle`) for `idle_timeout`: the
    /// registry then forgets it, so a `*` site does not keep a pool for every name ever asked.
    pub(crate) fn reap(&self) -> (usize, bool) {
        let mut inner = self.lock();
        let s = inner.settings.clone();
        inner.idle.retain(|c| c.created.elapsed() < s.lifetime);
        while inner.idle.len() > s.min_idle {
            match inner.idle.front() {
                Some(c) if c.last_used.elapsed() >= s.idle_timeout => drop(inner.idle.pop_front()),
                _ => break,
            }
        }
        let unused = inner.is_unused();
        let since = match (unused, inner.unused_since) {
            (false, _) => None,
            (true, None) => Some(Instant::now()),
            (true, Some(t)) => Some(t),
        };
        inner.unused_since = since;
        let total = inner.idle.len() + inner.busy;
        let missing = s
            .min_idle
            .saturating_sub(inner.idle.len())
            .min(s.size.saturating_sub(total));
        (
            missing,
            since.is_some_and(|t| t.elapsed() >= s.idle_timeout),
        )
    }

    /// No connection open or opening, no request waiting, none to keep open.
    pub fn is_unused(&self) -> bool {
        self.lock().is_unused()
    }

    /// Opens one connection straight into the idle list (for `min_idle`), or to a waiting
    /// request if one arrived meanwhile.
    pub(crate) async fn prefill_one(self: &Arc<Self>) -> Result<(), ServerError> {
        let lease = {
            let mut inner = self.lock();
            if inner.busy + inner.idle.len() >= inner.settings.size || inner.waiting > 0 {
                return Ok(());
            }
            inner.busy += 1;
            Lease::new(self, None)
        };
        let mut conn = self.open().await?;
        conn.generation = self.min_generation.load(Ordering::Relaxed);
        self.release(Pooled { conn, lease });
        Ok(())
    }

    /// Marks the pool removed from the registry, drops its idle connections and sends waiting
    /// requests back to look up their new pool.
    pub fn remove(&self) {
        self.removed.store(true, Ordering::Relaxed);
        let mut inner = self.lock();
        inner.idle.clear();
        let wakers = inner.retire_waiters(u64::MAX);
        drop(inner);
        wakers.into_iter().for_each(Waker::wake);
        self.retired.notify_waiters();
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Starts the task that ends waits at their deadline, unless one is running.
    fn ensure_sweeper(self: &Arc<Self>, inner: &mut Inner) {
        if !inner.sweeping {
            inner.sweeping = true;
            tokio::spawn(crate::wait::sweep(Arc::downgrade(self)));
        }
    }
}

//! One pool: permits, idle connections, checkout with a deadline, release, resize, reap.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_server::{ConnectParams, ServerConn, ServerError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub size: usize,
    pub min_idle: usize,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no server connection became free within {0:?}")]
    Timeout(Duration),
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

struct Inner {
    /// Boxed so that checkouts and releases move a pointer, not a whole connection.
    idle: VecDeque<Box<ServerConn>>,
    settings: PoolSettings,
    /// Permits to destroy as they come back, after a resize down.
    excess: usize,
    /// RECONNECT: connections opened up to this moment close when they come back.
    reconnect_before: Option<Instant>,
}

pub struct Pool {
    connect: ConnectParams,
    permits: Arc<Semaphore>,
    inner: Mutex<Inner>,
    active: AtomicUsize,
    waiting: AtomicUsize,
    /// Connections of older topology generations are retired, never reused.
    min_generation: AtomicU64,
    /// Removed from the registry (config reload): sessions must look up a new pool.
    removed: std::sync::atomic::AtomicBool,
    /// Parameters the server reported at its first login: what a new client is told at startup.
    welcome: Mutex<Option<Arc<BTreeMap<String, String>>>>,
}

/// A checked-out server connection. Return it with [`Pool::release`]; dropping it closes it.
pub struct Pooled {
    pub conn: Box<ServerConn>,
    permit: OwnedSemaphorePermit,
}

impl Pool {
    pub fn new(connect: ConnectParams, settings: PoolSettings) -> Arc<Self> {
        Arc::new(Self {
            connect,
            permits: Arc::new(Semaphore::new(settings.size)),
            inner: Mutex::new(Inner {
                idle: VecDeque::new(),
                settings,
                excess: 0,
                reconnect_before: None,
            }),
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            min_generation: AtomicU64::new(0),
            removed: std::sync::atomic::AtomicBool::new(false),
            welcome: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn addr(&self) -> &str {
        &self.connect.addr
    }

    pub fn connect_params(&self) -> &ConnectParams {
        &self.connect
    }

    /// Takes a connection, waiting for a free slot at most `wait`.
    ///
    /// Cancel safety: cancel-safe; a cancelled wait takes nothing.
    pub async fn checkout(&self, wait: Duration, generation: u64) -> Result<Pooled, PoolError> {
        self.retire_before(generation);
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => self.wait_for_permit(wait).await?,
        };
        let reused = self.take_idle();
        let conn = match reused {
            Some(c) => c,
            None => {
                let mut c = self.open().await?;
                c.generation = generation;
                c
            }
        };
        self.active.fetch_add(1, Ordering::Relaxed);
        Ok(Pooled { conn, permit })
    }

    /// Takes an idle connection at once if a slot and a connection are free; never waits and
    /// never connects. The common case of a busy pool, without a future to poll.
    pub fn try_checkout(&self, generation: u64) -> Option<Pooled> {
        self.retire_before(generation);
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let conn = self.take_idle()?;
        self.active.fetch_add(1, Ordering::Relaxed);
        Some(Pooled { conn, permit })
    }

    async fn wait_for_permit(&self, wait: Duration) -> Result<OwnedSemaphorePermit, PoolError> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        match permit {
            Ok(Ok(p)) => Ok(p),
            _ => Err(PoolError::Timeout(wait)),
        }
    }

    /// The most recently used idle connection that is of the current generation and still
    /// alive. (Lifetime is enforced on release and by the reaper, not here: no clock read on the
    /// hot path.)
    fn take_idle(&self) -> Option<Box<ServerConn>> {
        let mut inner = self.lock();
        let min_generation = self.min_generation.load(Ordering::Relaxed);
        while let Some(c) = inner.idle.pop_back() {
            if c.generation >= min_generation && c.is_alive() {
                return Some(c);
            }
        }
        None
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
        &self,
        wait: Duration,
    ) -> Result<Arc<BTreeMap<String, String>>, PoolError> {
        if let Some(w) = self
            .welcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(w);
        }
        let c = self
            .checkout(wait, self.min_generation.load(Ordering::Relaxed))
            .await?;
        let params = self
            .cached_welcome()
            .unwrap_or_else(|| Arc::new(c.conn.params.clone()));
        self.release(c);
        Ok(params)
    }

    /// Returns a connection that is at a sync point and idle (no transaction open).
    pub fn release(&self, pooled: Pooled) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        let Pooled { mut conn, permit } = pooled;
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.excess > 0 {
            inner.excess -= 1;
            permit.forget();
            return;
        }
        if now.duration_since(conn.created) >= inner.settings.lifetime
            || conn.generation < self.min_generation.load(Ordering::Relaxed)
            || inner.reconnect_before.is_some_and(|t| conn.created <= t)
        {
            return;
        }
        conn.last_used = now;
        inner.idle.push_back(conn);
        drop(inner);
        drop(permit);
    }

    /// Closes a checked-out connection that is not reusable (broken, mid-transaction).
    pub fn discard(&self, pooled: Pooled) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        drop(pooled);
    }

    /// Applies new settings; shrinking takes effect as connections come back.
    pub fn resize(&self, settings: PoolSettings) {
        let mut inner = self.lock();
        let old = inner.settings.size;
        let new = settings.size;
        if new > old {
            let mut grow = new - old;
            let cancel = grow.min(inner.excess);
            inner.excess -= cancel;
            grow -= cancel;
            self.permits.add_permits(grow);
        } else if new < old {
            let shrink = old - new;
            let forgotten = self.permits.forget_permits(shrink);
            inner.excess += shrink - forgotten;
            let max_idle = new.saturating_sub(self.active.load(Ordering::Relaxed));
            while inner.idle.len() > max_idle {
                inner.idle.pop_front();
            }
        }
        inner.settings = settings;
    }

    /// Retires connections opened before `generation`: idle ones close now, checked-out ones
    /// when they come back.
    pub fn retire_before(&self, generation: u64) {
        if self.min_generation.fetch_max(generation, Ordering::Relaxed) < generation {
            self.lock().idle.retain(|c| c.generation >= generation);
        }
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
                pid: c.key.process_id,
                local_addr: c.stream.local_addr().ok(),
                created: c.created,
                last_used: c.last_used,
                generation: c.generation,
            })
            .collect()
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            idle: self.lock().idle.len(),
            active: self.active.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    /// Closes idle connections past their idle timeout (keeping `min_idle`) or lifetime; returns
    /// how many connections should be opened to reach `min_idle`.
    pub(crate) fn reap(&self) -> usize {
        let mut inner = self.lock();
        let s = inner.settings.clone();
        inner.idle.retain(|c| c.created.elapsed() < s.lifetime);
        while inner.idle.len() > s.min_idle {
            match inner.idle.front() {
                Some(c) if c.last_used.elapsed() >= s.idle_timeout => drop(inner.idle.pop_front()),
                _ => break,
            }
        }
        let total = inner.idle.len() + self.active.load(Ordering::Relaxed);
        s.min_idle
            .saturating_sub(inner.idle.len())
            .min(s.size.saturating_sub(total))
    }

    /// Opens one connection straight into the idle list (for `min_idle`).
    pub(crate) async fn prefill_one(&self) -> Result<(), ServerError> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Ok(());
        };
        let mut conn = self.open().await?;
        conn.generation = self.min_generation.load(Ordering::Relaxed);
        self.lock().idle.push_back(conn);
        drop(permit);
        Ok(())
    }

    /// Marks the pool removed from the registry and drops its idle connections.
    pub fn remove(&self) {
        self.removed.store(true, Ordering::Relaxed);
        self.lock().idle.clear();
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }
}

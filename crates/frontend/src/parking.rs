//! The parking lot: idle clients held without a task. Every `park_idle_after` its thread asks
//! the sessions idle since the last sweep to park (`CancelRegistry::ask_idle_to_park`), and
//! ten times as often those that logged in since and sent nothing (`ask_fresh_to_park`); a
//! session that can gives up its task and its socket's tokio registration and lands here as a
//! record. The thread watches the parked sockets and resumes a session, on a new task, when its
//! client sends something or leaves, when its `client_idle_timeout` is due, or at shutdown.
//!
//! Written by hand on mio (tokio's own poller) because tokio keeps a task (384 bytes) per
//! future and a waker slot (256 bytes) per registered socket: at 10,000 idle clients that was
//! most of their memory, and nothing in tokio holds a socket without them. The lot is generic
//! over its records ([`Parkable`]), which the session module provides.

use crate::buffers::Buffers;
use crate::cancel::CancelRegistry;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::future::Future;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A parked session, as the lot sees it.
pub(crate) trait Parkable: Send + 'static {
    /// The client's socket, to watch for its next bytes.
    fn socket(&self) -> RawFd;
    /// When its idle limit is due, if it has one.
    fn idle_deadline(&self) -> Option<Instant>;
    /// Serves the session again (on a task of its own).
    fn resume(self, why: Resume) -> impl Future<Output = ()> + Send + 'static;
}

/// Why a parked session is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// Its client sent something, or left.
    Readable,
    /// Its `client_idle_timeout` is due.
    IdleTimeout,
    /// Shutdown (or the lot's poller failed): it is served by a task again, to end or hand over.
    Shutdown,
}

/// What the lot's periodic sweep looks at besides its records.
pub(crate) struct Sweep {
    /// Sessions idle since the last sweep are asked to park.
    pub clients: CancelRegistry,
    /// Read buffers no request needed since the last sweep are freed.
    pub buffers: Arc<Buffers>,
}

/// The records and their poller; `None` inside when parking is off.
pub(crate) struct ParkingLot<T: Parkable> {
    shared: Option<Arc<Shared<T>>>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    registry: mio::Registry,
    /// Wakes the thread to end (shutdown, or the lot dropped).
    waker: Waker,
    closed: AtomicBool,
    runtime: tokio::runtime::Handle,
    parked: AtomicUsize,
}

struct State<T> {
    records: Slab<T>,
    /// Shutdown has begun: nothing parks any more.
    stopping: bool,
}

/// The thread's own token (its waker); records use their slab keys, which stay below it.
const WAKER: Token = Token(usize::MAX);

impl<T: Parkable> ParkingLot<T> {
    /// No parking (`park_idle_after = 0`).
    pub(crate) fn off() -> Self {
        Self { shared: None }
    }

    /// Starts the lot's thread, sweeping every `period`. Needs a runtime: resumed sessions are
    /// spawned on it. If the poller cannot be made, parking is off (and logged).
    pub(crate) fn start(period: Duration, sweep: Sweep) -> Self {
        match Self::try_start(period, sweep) {
            Ok(lot) => lot,
            Err(e) => {
                tracing::warn!(error = %e, "parking idle clients is off: its poller could not start");
                Self::off()
            }
        }
    }

    fn try_start(period: Duration, sweep: Sweep) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                records: Slab::new(),
                stopping: false,
            }),
            registry: poll.registry().try_clone()?,
            waker: Waker::new(poll.registry(), WAKER)?,
            closed: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            parked: AtomicUsize::new(0),
        });
        let for_thread = shared.clone();
        sweep.clients.set_sweeping(true);
        let clients = sweep.clients.clone();
        let started = std::thread::Builder::new()
            .name("switchyard-parking".into())
            .stack_size(256 << 10)
            .spawn(move || {
                let clients = sweep.clients.clone();
                watch(poll, for_thread, sweep, period);
                clients.set_sweeping(false);
            });
        if let Err(e) = started {
            clients.set_sweeping(false);
            return Err(e);
        }
        Ok(Self {
            shared: Some(shared),
        })
    }

    /// How many sessions are parked now.
    pub(crate) fn len(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(0, |s| s.parked.load(Ordering::Relaxed))
    }

    /// Parks a session; one that cannot be (shutdown under way, parking off, its socket not
    /// watchable) is resumed at once.
    pub(crate) fn park(&self, record: T) {
        let Some(shared) = &self.shared else {
            tokio::spawn(record.resume(Resume::Shutdown));
            return;
        };
        let mut state = shared.lock();
        if state.stopping {
            drop(state);
            tokio::spawn(record.resume(Resume::Shutdown));
            return;
        }
        let fd = record.socket();
        let entry = state.records.vacant_entry();
        let token = Token(entry.key());
        // Registered under the lock: the thread cannot see the token before its record.
        match shared
            .registry
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            Ok(()) => {
                entry.insert(record);
                shared.parked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                drop(state);
                tracing::debug!(error = %e, "a client could not be parked");
                tokio::spawn(record.resume(Resume::Readable));
            }
        }
    }

    /// Shutdown: every parked session is resumed to see it, nothing parks any more, and the
    /// thread ends.
    pub(crate) fn resume_all(&self) {
        if let Some(shared) = &self.shared {
            shared.resume_all();
            shared.closed.store(true, Ordering::Release);
            let _ = shared.waker.wake();
        }
    }
}

impl<T> Drop for ParkingLot<T>
where
    T: Parkable,
{
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.closed.store(true, Ordering::Release);
            let _ = shared.waker.wake();
        }
    }
}

impl<T: Parkable> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one record out of the lot and serves it again.
    fn resume(&self, key: usize, why: Resume) {
        let Some(record) = self.lock().records.try_remove(key) else {
            // Resumed already (a stale event for a key since reused is harmless: that session
            // finds nothing to read and parks again later).
            return;
        };
        self.release(record, why);
    }

    fn release(&self, record: T, why: Resume) {
        let _ = self.registry.deregister(&mut SourceFd(&record.socket()));
        self.parked.fetch_sub(1, Ordering::Relaxed);
        // A runtime that has shut down drops the future, closing the client's socket.
        self.runtime.spawn(record.resume(why));
    }

    /// Resumes the sessions whose idle limit is due.
    fn resume_due(&self, now: Instant) {
        let due: Vec<T> = {
            let mut state = self.lock();
            let keys: Vec<usize> = state
                .records
                .iter()
                .filter(|(_, r)| r.idle_deadline().is_some_and(|d| d <= now))
                .map(|(k, _)| k)
                .collect();
            keys.into_iter().map(|k| state.records.remove(k)).collect()
        };
        for record in due {
            self.release(record, Resume::IdleTimeout);
        }
    }

    fn resume_all(&self) {
        let all: Vec<T> = {
            let mut state = self.lock();
            state.stopping = true;
            state.records.drain().collect()
        };
        for record in all {
            self.release(record, Resume::Shutdown);
        }
    }
}

/// How many quick sweeps (of the clients that logged in since the last) per full sweep.
const QUICK_SWEEPS: u32 = 10;

/// The lot's thread, until shutdown: waits for parked sockets to become readable; every
/// `period` asks the sessions idle since the previous sweep to park and frees the read buffers
/// nothing needed; ten times as often asks the clients that logged in and sent nothing since to
/// park and resumes those whose idle limit is due.
fn watch<T: Parkable>(mut poll: Poll, shared: Arc<Shared<T>>, sweep: Sweep, period: Duration) {
    let mut events = Events::with_capacity(1024);
    let mut next_sweep = Instant::now() + period;
    let quick = period / QUICK_SWEEPS;
    let mut next_quick = Instant::now() + quick;
    loop {
        let wait = next_sweep
            .min(next_quick)
            .saturating_duration_since(Instant::now());
        if let Err(e) = poll.poll(&mut events, Some(wait))
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            tracing::error!(error = %e, "the parking lot's poller failed; parked clients are resumed and no more park");
            shared.resume_all();
            return;
        }
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        for event in events.iter() {
            if event.token() != WAKER {
                shared.resume(event.token().0, Resume::Readable);
            }
        }
        let now = Instant::now();
        if now >= next_quick {
            next_quick = now + quick;
            sweep.clients.ask_fresh_to_park();
            // Idle limits are kept to within a quick sweep.
            shared.resume_due(now);
        }
        if now >= next_sweep {
            next_sweep = now + period;
            sweep.clients.ask_idle_to_park();
            sweep.buffers.trim();
        }
    }
}

//! The state one pool's mutex guards: the slots taken, the idle connections, the checked-out
//! sockets and the queue of waiting requests, with every move between them (a slot or a
//! connection handed to the longest waiter, a wait ended by its deadline or a retirement).
//! Plain data under the lock: no I/O, no await.

use slab::Slab;
use std::collections::VecDeque;
use std::task::Waker;
use std::time::{Duration, Instant};
use switchyard_server::{Closer, ServerConn};

#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub size: usize,
    pub min_idle: usize,
    pub idle_timeout: Duration,
    pub lifetime: Duration,
}

/// How a wait ended.
pub(crate) enum Handoff {
    /// A connection released by another request, already registered as checked out (the key).
    Conn(Box<ServerConn>, usize),
    /// A free slot: take an idle connection or open one.
    Slot,
    Expired,
    /// The generation waited for is over, or the pool was removed.
    Retired,
}

pub(crate) struct Waiter {
    pub(crate) waker: Waker,
    pub(crate) deadline: Instant,
    pub(crate) generation: u64,
    /// Set (under the pool's lock) by whoever ends the wait.
    pub(crate) outcome: Option<Handoff>,
}

impl Waiter {
    pub(crate) fn new(deadline: Instant, generation: u64, waker: Waker) -> Self {
        Self {
            waker,
            deadline,
            generation,
            outcome: None,
        }
    }
}

/// A checked-out connection's socket, to cut off if its generation is retired.
pub(crate) struct Out {
    pub(crate) closer: Closer,
    pub(crate) generation: u64,
}

impl Out {
    pub(crate) fn of(conn: &ServerConn) -> Self {
        Self {
            closer: conn.closer.clone(),
            generation: conn.generation,
        }
    }
}

pub(crate) struct Inner {
    /// Boxed so that checkouts and releases move a pointer, not a whole connection.
    pub(crate) idle: VecDeque<Box<ServerConn>>,
    pub(crate) settings: PoolSettings,
    /// Slots taken: connections checked out, or being opened. At most `settings.size`, except
    /// after a resize down, until enough come back.
    pub(crate) busy: usize,
    /// The checked-out connections' sockets.
    pub(crate) out: Slab<Out>,
    /// Requests waiting for a slot (and those whose outcome is not collected yet).
    pub(crate) waiters: Slab<Waiter>,
    /// `waiters` keys in arrival order: first come, first served. Keys whose wait has ended are
    /// skipped as they come up (a reused key may get served a little early: harmless).
    pub(crate) queue: VecDeque<usize>,
    /// How many of `waiters` have no outcome yet.
    pub(crate) waiting: usize,
    /// A task is enforcing the waiters' deadlines.
    pub(crate) sweeping: bool,
    /// RECONNECT: connections opened up to this moment close when they come back.
    pub(crate) reconnect_before: Option<Instant>,
    /// Since when the reaper has found the pool with no connection and no request (see
    /// [`Pool::reap`]).
    pub(crate) unused_since: Option<Instant>,
}

impl Inner {
    pub(crate) fn new(settings: PoolSettings) -> Self {
        Self {
            idle: VecDeque::new(),
            settings,
            busy: 0,
            out: Slab::new(),
            waiters: Slab::new(),
            queue: VecDeque::new(),
            waiting: 0,
            sweeping: false,
            unused_since: None,
            reconnect_before: None,
        }
    }

    pub(crate) fn is_unused(&self) -> bool {
        self.idle.is_empty() && self.busy == 0 && self.waiting == 0 && self.settings.min_idle == 0
    }

    /// Takes the longest-waiting request that has no outcome yet off the queue.
    pub(crate) fn next_waiting(&mut self) -> Option<usize> {
        if self.waiting == 0 {
            return None;
        }
        while let Some(key) = self.queue.pop_front() {
            if self.waiters.get(key).is_some_and(|w| w.outcome.is_none()) {
                return Some(key);
            }
        }
        None
    }

    pub(crate) fn hand(&mut self, key: usize, what: Handoff) -> Waker {
        self.waiting -= 1;
        let w = &mut self.waiters[key];
        w.outcome = Some(what);
        w.waker.clone()
    }

    /// Queues a request; returns its key.
    pub(crate) fn enqueue(&mut self, waiter: Waiter) -> usize {
        let key = self.waiters.insert(waiter);
        self.queue.push_back(key);
        self.waiting += 1;
        key
    }

    /// A slot came free: the longest-waiting request gets it, or it is freed.
    pub(crate) fn free_slot(&mut self) -> Option<Waker> {
        if self.busy <= self.settings.size
            && let Some(key) = self.next_waiting()
        {
            return Some(self.hand(key, Handoff::Slot));
        }
        self.busy -= 1;
        None
    }

    /// A reusable connection came back: straight to the longest-waiting request, or idle; else
    /// (the pool was shrunk and is still over its size, or its idle list is full) it is given
    /// back to be closed once the lock is released.
    pub(crate) fn put_back(
        &mut self,
        conn: Box<ServerConn>,
    ) -> (Option<Waker>, Option<Box<ServerConn>>) {
        if self.busy <= self.settings.size
            && let Some(key) = self.next_waiting()
        {
            let out = self.out.insert(Out::of(&conn));
            return (Some(self.hand(key, Handoff::Conn(conn, out))), None);
        }
        self.busy -= 1;
        if self.busy + self.idle.len() < self.settings.size {
            self.idle.push_back(conn);
            return (None, None);
        }
        (None, Some(conn))
    }

    pub(crate) fn forget_out(&mut self, key: usize) {
        self.out.try_remove(key);
    }

    /// The most recently used idle connection that is of a current generation and still alive.
    /// (Lifetime is enforced on release and by the reaper, not here: no clock read on the hot
    /// path.)
    pub(crate) fn take_idle(&mut self, min_generation: u64) -> Option<Box<ServerConn>> {
        while let Some(c) = self.idle.pop_back() {
            if c.generation >= min_generation && c.is_alive() {
                return Some(c);
            }
        }
        None
    }

    /// Ends the wait of every request queued for a generation before `generation`.
    pub(crate) fn retire_waiters(&mut self, generation: u64) -> Vec<Waker> {
        let keys: Vec<usize> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.outcome.is_none() && w.generation < generation)
            .map(|(k, _)| k)
            .collect();
        keys.into_iter()
            .map(|k| self.hand(k, Handoff::Retired))
            .collect()
    }

    /// Ends the wait of every request past its deadline; returns their wakers and the next
    /// deadline among those still waiting.
    pub(crate) fn expire(&mut self, now: Instant) -> (Vec<Waker>, Option<Instant>) {
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for (k, w) in &self.waiters {
            if w.outcome.is_some() {
                continue;
            }
            if w.deadline <= now {
                due.push(k);
            } else {
                next = Some(next.map_or(w.deadline, |n| n.min(w.deadline)));
            }
        }
        let wakers = due
            .into_iter()
            .map(|k| self.hand(k, Handoff::Expired))
            .collect();
        // Keys of ended waits pile up in the queue while nothing is released: drop them.
        if self.queue.len() > 2 * self.waiting + 16 {
            let waiters = &self.waiters;
            self.queue
                .retain(|k| waiters.get(*k).is_some_and(|w| w.outcome.is_none()));
        }
        (wakers, next)
    }
}

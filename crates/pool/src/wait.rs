//! Waiting in a pool's queue: the future a request awaits, and the task that ends waits at
//! their deadline.
//!
//! A request's deadline is enforced by one sweeper task per pool (started when the first request
//! queues, gone when the queue empties) rather than by a timer per request: under load every
//! request may queue, and a timer armed and disarmed each time costs more than the rest of the
//! wait.

use crate::slots::{Handoff, Inner};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use switchyard_server::ServerConn;

/// Longest a sweeper sleeps, so that a wait with a shorter deadline than those before it (after
/// a reload) ends at most this late.
const SWEEP_AT_LEAST_EVERY: Duration = Duration::from_millis(100);

/// What waiting needs of a pool: its lock, and the way back for a connection handed to a wait
/// that was dropped before collecting it. (A trait so that waiting knows the queue, not the
/// pool that owns it.)
pub(crate) trait Queue: Send + Sync + 'static {
    fn lock(&self) -> MutexGuard<'_, Inner>;
    /// See `Pool::reuse_or_close`.
    fn reuse_or_close(
        &self,
        inner: &mut Inner,
        conn: Box<ServerConn>,
        now: Instant,
    ) -> (Option<Waker>, Option<Box<ServerConn>>);
}

/// A queued request's wait for its outcome.
///
/// Cancel safety: dropping it leaves the queue; whatever was handed to it meanwhile is given
/// back (to the next request in line, or the idle list).
pub(crate) struct Wait<'a, Q: Queue> {
    pool: &'a Arc<Q>,
    /// The waiter's key in the pool (only this future removes it, so it cannot be reused
    /// meanwhile).
    key: usize,
    done: bool,
}

impl<'a, Q: Queue> Wait<'a, Q> {
    pub(crate) fn new(pool: &'a Arc<Q>, key: usize) -> Self {
        Self {
            pool,
            key,
            done: false,
        }
    }
}

impl<Q: Queue> Future for Wait<'_, Q> {
    type Output = Handoff;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Handoff> {
        let mut inner = self.pool.lock();
        let Some(w) = inner.waiters.get_mut(self.key) else {
            // Not reachable: only this future removes its record.
            self.done = true;
            return Poll::Ready(Handoff::Expired);
        };
        if w.outcome.is_none() {
            if !w.waker.will_wake(cx.waker()) {
                w.waker = cx.waker().clone();
            }
            return Poll::Pending;
        }
        let w = inner.waiters.remove(self.key);
        drop(inner);
        self.done = true;
        Poll::Ready(w.outcome.expect("checked"))
    }
}

impl<Q: Queue> Drop for Wait<'_, Q> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut inner = self.pool.lock();
        let Some(w) = inner.waiters.try_remove(self.key) else {
            return;
        };
        let (wake, closed) = match w.outcome {
            None => {
                inner.waiting -= 1;
                (None, None)
            }
            // Handed over but never used: back the way any connection comes back.
            Some(Handoff::Conn(conn, key)) => {
                inner.forget_out(key);
                self.pool.reuse_or_close(&mut inner, conn, Instant::now())
            }
            Some(Handoff::Slot) => (inner.free_slot(), None),
            Some(Handoff::Expired | Handoff::Retired) => (None, None),
        };
        drop(inner);
        drop(closed);
        if let Some(w) = wake {
            w.wake();
        }
    }
}

/// Ends waits at their deadlines while any request is queued in `pool`.
pub(crate) async fn sweep<Q: Queue>(pool: Weak<Q>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else {
                return;
            };
            let mut inner = pool.lock();
            let now = Instant::now();
            let (wakers, next) = inner.expire(now);
            if next.is_none() {
                inner.sweeping = false;
            }
            drop(inner);
            wakers.into_iter().for_each(Waker::wake);
            match next {
                Some(t) => t.min(now + SWEEP_AT_LEAST_EVERY),
                None => return,
            }
        };
        tokio::time::sleep_until(next.into()).await;
    }
}

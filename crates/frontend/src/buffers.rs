//! A small cache of read and write buffers shared by all sessions.
//!
//! An idle client holds no buffer (at 10,000 idle clients that is most of the memory), so a busy
//! one takes a buffer for each request and gives it back when idle again. Allocating an 8 KiB
//! buffer that often is slow (it misses the allocator's per-thread cache), hence this cache:
//! bounded, so it holds at most `MAX_CACHED` buffers however many clients come and go, and
//! trimmed by the idle sweep (`crate::parking`) to what the last period needed, so a burst of
//! requests does not leave its buffers behind.

use bytes::BytesMut;
use std::sync::Mutex;

/// Size of a fresh buffer.
pub const BUFFER_SIZE: usize = 8192;
const MAX_CACHED: usize = 256;

#[derive(Default)]
pub struct Buffers {
    free: Mutex<Free>,
}

#[derive(Default)]
struct Free {
    bufs: Vec<BytesMut>,
    /// The fewest buffers the cache held since the last trim: that many were not needed.
    low_water: usize,
}

impl Buffers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty buffer with room for at least `BUFFER_SIZE` bytes.
    pub fn take(&self) -> BytesMut {
        let mut free = self.lock();
        let buf = free.bufs.pop();
        free.low_water = free.low_water.min(free.bufs.len());
        drop(free);
        buf.unwrap_or_else(|| BytesMut::with_capacity(BUFFER_SIZE))
    }

    /// Frees the buffers no request needed since the last trim; returns how many.
    pub fn trim(&self) -> usize {
        let surplus = {
            let mut free = self.lock();
            let n = free.low_water.min(free.bufs.len());
            let surplus: Vec<BytesMut> = free.bufs.drain(..n).collect();
            free.low_water = free.bufs.len();
            surplus
        };
        surplus.len()
    }

    /// Takes back an empty buffer of the usual size; others are simply freed.
    pub fn give(&self, mut buf: BytesMut) {
        if !buf.is_empty() {
            return;
        }
        // Reclaims the space before the read position, without allocating, when it can.
        buf.reserve(BUFFER_SIZE);
        if buf.capacity() < BUFFER_SIZE || buf.capacity() > 4 * BUFFER_SIZE {
            return;
        }
        let mut free = self.lock();
        if free.bufs.len() < MAX_CACHED {
            free.bufs.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let b = Buffers::default();
        let mut x = b.take();
        let ptr = x.as_ptr();
        x.extend_from_slice(b"abc");
        let _ = x.split_to(3);
        b.give(x);
        let y = b.take();
        assert_eq!(
            y.as_ptr(),
            ptr,
            "the same allocation comes back, reclaimed from its start"
        );
        let mut big = BytesMut::with_capacity(10 * BUFFER_SIZE);
        big.clear();
        b.give(big);
        assert!(b.lock().bufs.is_empty(), "oversized buffers are not cached");
        let mut full = BytesMut::new();
        full.extend_from_slice(b"x");
        b.give(full);
        assert!(b.lock().bufs.is_empty(), "non-empty buffers are not cached");
    }

    #[test]
    fn a_trim_frees_what_the_last_period_did_not_need() {
        let b = Buffers::default();
        let taken: Vec<BytesMut> = (0..4).map(|_| b.take()).collect();
        for buf in taken {
            b.give(buf);
        }
        // Four cached; the first trim only sets the mark (the cache was empty before).
        assert_eq!(b.trim(), 0);
        // One buffer in use at a time during this period: three were never needed.
        let one = b.take();
        b.give(one);
        assert_eq!(b.trim(), 3);
        assert_eq!(b.lock().bufs.len(), 1);
        // Nothing taken since: the last one goes too.
        assert_eq!(b.trim(), 1);
        assert!(b.lock().bufs.is_empty());
    }
}

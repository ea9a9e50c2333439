//! Pools of server connections, one per (member, database, user).
//!
//! A pool has `size` slots, a stack of idle connections and a queue of waiting requests. A
//! checkout takes a slot (queueing, first come first served, at most until its deadline), then
//! reuses an idle connection or opens one. A [`Pooled`] connection goes back with
//! [`Pool::release`], straight to the longest-waiting request if there is one; dropping it
//! instead closes the connection and frees the slot, so a forgotten checkout never leaks one.
//! When the topology moves on, [`Pool::retire_before`] cuts off the checked-out connections of
//! the old generation (their sockets are shut down, so reads in flight end at once) and sends
//! queued requests back to the gate.
//!
//! [`Pools`] is the registry. Its reaper loop (every second) closes connections idle past
//! `server_idle_timeout` or older than `server_lifetime`, and opens connections up to `min_idle`.
#![forbid(unsafe_code)]

mod pool;
mod registry;
mod slots;
mod wait;

pub use pool::{IdleServer, Pool, PoolError, PoolSettings, PoolStats, Pooled};
pub use registry::{PoolKey, Pools};

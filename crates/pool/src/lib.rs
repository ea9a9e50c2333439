//! Pools of server connections, one per (member, database, user).
//!
//! A pool is a semaphore of `size` permits plus a stack of idle connections. A checkout takes a
//! permit (waiting at most until its deadline), then reuses an idle connection or opens one.
//! A [`Pooled`] connection goes back with [`Pool::release`]; dropping it instead closes the
//! connection and frees the permit, so a forgotten checkout can never leak a slot.
//!
//! [`Pools`] is the registry. Its reaper loop (every second) closes connections idle past
//! `server_idle_timeout` or older than `server_lifetime`, and opens connections up to `min_idle`.
#![forbid(unsafe_code)]

mod pool;
mod registry;

pub use pool::{IdleServer, Pool, PoolError, PoolSettings, PoolStats, Pooled};
pub use registry::{PoolKey, Pools};

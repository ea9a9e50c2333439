//! Switchyard's client side: the listener, startup negotiation and client authentication, the
//! client session (the relay between one client and pooled server connections), the client
//! registry (cancel routing, what the admin console lists), PAUSE/RESUME, the hook the admin
//! console is served through, and the one map from internal failures to what a client sees.
//!
//! Concurrency: one task accepts connections ([`listener::serve`]); one task per client runs its
//! [`session`]. Shared state lives in [`Proxy`], built once by the binary and passed down.
#![forbid(unsafe_code)]

mod auth;
mod auth_query;
mod buffers;
mod cancel;
mod client;
pub mod console;
mod encodings;
mod errors;
pub mod handover;
pub mod listen;
pub mod listener;
mod logins;
mod params;
mod parking;
pub mod pause;
mod proxy;
mod session;
mod session_state;
mod sql;
mod startup;
mod statements;
mod targets;

pub use cancel::{ClientSnapshot, ClientState};
pub use client::ClientConn;
pub use errors::SessionError;
pub use proxy::{ForwardCancels, ForwardedCancel, Live, Proxy, UserAuth};

//! The Switchyard process: start the proxy from a config ([`serve::start`]), reload it on SIGHUP or
//! when the file changes, and drain on SIGTERM; and `switchyard demo` ([`demo::run`]), a local
//! cluster with the proxy in front. The binary (`main.rs`) is a thin CLI over this; integration
//! tests start proxies in-process through the same function.
#![forbid(unsafe_code)]

pub mod demo;
pub mod handover;
pub mod serve;

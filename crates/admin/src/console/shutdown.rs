//! SHUTDOWN: the same drain as SIGTERM — stop accepting, let open transactions finish (up to
//! `shutdown_timeout`), end idle sessions and console connections with 57P01, exit.

use super::{ConsoleError, Ctx};

pub fn run(ctx: &Ctx<'_>) -> Result<&'static str, ConsoleError> {
    ctx.record("", "SHUTDOWN: draining".into());
    ctx.proxy().shutdown.cancel();
    Ok("SHUTDOWN")
}

//! RELOAD: read the config file again and apply it, as SIGHUP does; an invalid file is refused
//! with every error, and the running config stays.

use super::{ConsoleError, Ctx};

pub fn run(ctx: &Ctx<'_>) -> Result<&'static str, ConsoleError> {
    let reload = ctx
        .hooks
        .reload
        .as_ref()
        .ok_or(ConsoleError::NoConfigFile)?;
    match reload(ctx.proxy()) {
        Ok(()) => {
            ctx.record("", "RELOAD: config reloaded".into());
            Ok("RELOAD")
        }
        Err(why) => {
            ctx.record("", format!("RELOAD refused: {why}"));
            Err(ConsoleError::ReloadRefused(why))
        }
    }
}

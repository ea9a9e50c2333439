//! FENCE member and UNFENCE member: an operator's fence on a member (`host:port`, as in the
//! cluster's `members`). A fenced member is never the primary: if it was, the cluster has no
//! primary at once (new work waits in the failover gate, work on it is answered as in a
//! failover) until another member is promoted or the fence is lifted. The fence lives in the
//! cluster's monitor; a monitor a reload restarts takes it over (until Switchyard restarts).

use super::{ConsoleError, Ctx};

pub fn run(ctx: &Ctx<'_>, member: &str, fence: bool) -> Result<&'static str, ConsoleError> {
    let monitors = ctx.proxy().router.monitors();
    let monitor = monitors
        .iter()
        .find(|m| m.probes().any(|(addr, _)| addr == member))
        .ok_or_else(|| ConsoleError::NoSuchMember(member.to_owned()))?;
    monitor.set_fenced(member, fence);
    let (verb, detail) = if fence {
        ("FENCE", "fenced: it carries no traffic until UNFENCE")
    } else {
        ("UNFENCE", "unfenced")
    };
    ctx.record(monitor.name(), format!("{verb} {member}: {detail}"));
    Ok(verb)
}

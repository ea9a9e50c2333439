//! One admin-console connection: reads simple queries, answers each statement in them
//! (results, or an error that leaves the connection usable), then ReadyForQuery. The extended
//! protocol gets a clear error; Terminate, the client leaving, or the proxy shutting down end
//! the connection.

use std::sync::Arc;

use switchyard_frontend::SessionError;
use switchyard_frontend::console::ConsoleClient;
use switchyard_proto::backend::{self, ErrorFields, TxStatus};
use switchyard_proto::cursor::Cursor;
use switchyard_proto::frontend::tag;
use switchyard_proto::{Frame, sqlstate};

use super::{ConsoleError, ConsoleHooks, Ctx, command};
use crate::state::AdminState;

/// Serves `client` to its end.
pub async fn serve(state: Arc<AdminState>, hooks: Arc<ConsoleHooks>, mut client: ConsoleClient) {
    let shutdown = state.proxy.shutdown.clone();
    let pid = client.process_id();
    let mut skipping_to_sync = false;
    loop {
        let frame = tokio::select! {
            biased;
            // Cancel safety: read_frame keeps partial input in the connection's buffer.
            f = client.conn.read_frame() => f,
            () = shutdown.cancelled() => {
                let bye = ErrorFields::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "switchyard: terminating connection due to administrator command",
                );
                client.conn.send_error(&bye).await;
                return;
            }
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return end(&mut client, e).await,
        };
        let ctx = Ctx {
            state: &state,
            hooks: &hooks,
            user: &client.user,
        };
        let draining = shutdown.is_cancelled();
        let reply = match frame.tag {
            tag::TERMINATE => return,
            tag::QUERY => answer_query(&ctx, &frame),
            tag::SYNC if skipping_to_sync => {
                skipping_to_sync = false;
                vec![ready()]
            }
            tag::SYNC => vec![ready()],
            tag::FLUSH => continue,
            _ if skipping_to_sync => continue,
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE => {
                skipping_to_sync = true;
                vec![ConsoleError::ExtendedProtocol.to_fields().to_frame()]
            }
            _ => vec![
                ConsoleError::ExtendedProtocol.to_fields().to_frame(),
                ready(),
            ],
        };
        let sent = tokio::time::timeout(REPLY_TIMEOUT, client.conn.send(&reply)).await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!(process_id = pid, "admin console client gone or not reading");
            return;
        }
        if !draining && shutdown.is_cancelled() {
            // This connection's SHUTDOWN: it has its answer; it ends quietly, not drained.
            return;
        }
    }
}

/// The client left or broke the protocol: tell it why if there is anyone to tell.
async fn end(client: &mut ConsoleClient, e: SessionError) {
    match e.to_client_fatal() {
        Some(fatal) => {
            tracing::info!(error = %e, "admin console connection ended");
            client.conn.send_error(&fatal).await;
        }
        None => tracing::debug!(error = %e, "admin console client gone"),
    }
}

/// Longest a reply may take to reach a console client (a large SHOW to a client that stopped
/// reading): then the connection is dropped.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn ready() -> Frame {
    backend::ready_for_query(TxStatus::Idle)
}

/// Every statement of a simple query, answered in turn until one fails; then ReadyForQuery.
fn answer_query(ctx: &Ctx<'_>, frame: &Frame) -> Vec<Frame> {
    let mut out = Vec::new();
    let sql = Cursor::new(frame.tag, frame.body.clone()).cstr();
    let Ok(sql) = sql else {
        out.push(ConsoleError::NotUtf8.to_fields().to_frame());
        out.push(ready());
        return out;
    };
    let statements: Vec<&str> = sql
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if statements.is_empty() {
        out.push(backend::empty_query_response());
    }
    for statement in statements {
        if let Err(e) = command::run(ctx, statement, &mut out) {
            tracing::info!(user = ctx.user, %statement, error = %e, "admin console command failed");
            out.push(e.to_fields().to_frame());
            break;
        }
    }
    out.push(ready());
    out
}

//! One client session: login (startup, auth, greeting), then the relay loop in [`run`], then
//! cleanup. `serve_client` is the task body the listener spawns per connection.

mod abort;
mod attach;
mod login;
pub mod pool_for;
mod relay;
mod run;

use crate::client::ClientConn;
use crate::{Proxy, SessionError};
use std::sync::Arc;
use tokio::net::TcpStream;
use tracing::Instrument;

/// Serves one client connection to its end. Never panics on client input; every failure is
/// answered per the error contract and logged once.
pub async fn serve_client(proxy: Arc<Proxy>, stream: TcpStream) {
    let live = proxy.live.load_full();
    let mut client = ClientConn::new(stream, live.config.proxy.max_message_size);
    let login_timeout = live.config.proxy.login_timeout.get();
    drop(live);
    let peer = client
        .stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let span = tracing::info_span!("client", %peer);
    drop(peer);
    // Boxed so the login's state does not stay in every session task for its whole life.
    let login = Box::pin(tokio::time::timeout(
        login_timeout,
        login::login(&proxy, &mut client),
    ));
    let logged_in = match login.instrument(span.clone()).await {
        Ok(Ok(Some(s))) => s,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return refuse(&mut client, e).instrument(span).await,
        Err(_) => {
            return refuse(&mut client, SessionError::LoginTimeout)
                .instrument(span)
                .await;
        }
    };
    // The relay loop is not instrumented: entering a span on every poll costs more than the
    // relay's own work. Its few events name the span explicitly.
    let span = tracing::info_span!(parent: &span, "session", user = %logged_in.user, database = %logged_in.database);
    let mut session = run::Session::new(proxy, client, logged_in, span.clone());
    let result = session.run().await;
    match &result {
        Ok(()) => tracing::debug!(parent: &span, "client left"),
        Err(SessionError::ClientGone(e)) => {
            tracing::debug!(parent: &span, error = %e, "client gone")
        }
        Err(e) => tracing::info!(parent: &span, error = %e, "session ended"),
    }
    Box::pin(session.finish(result.err()))
        .instrument(span)
        .await;
}

async fn refuse(client: &mut ClientConn, e: SessionError) {
    tracing::info!(error = %e, "login refused");
    if let Some(f) = e.to_client_fatal() {
        client.send_error(&f).await;
    }
}

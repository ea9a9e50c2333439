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
///
/// This future is what every client's task holds for its whole life, so it is kept small: the
/// login runs boxed and hands back a boxed [`run::Session`].
pub async fn serve_client(proxy: Arc<Proxy>, stream: TcpStream) {
    let Some(mut session) = Box::pin(open_session(proxy, stream)).await else {
        return;
    };
    let result = session.run().await;
    Box::pin(session.close(result)).await;
}

/// Runs the login; `None` when the connection ends there (refused, or a cancel request).
async fn open_session(proxy: Arc<Proxy>, stream: TcpStream) -> Option<Box<run::Session>> {
    let live = proxy.live.load_full();
    let mut client = ClientConn::new(
        stream,
        live.config.proxy.max_message_size,
        proxy.buffers.clone(),
    );
    let login_timeout = live.config.proxy.login_timeout.get();
    drop(live);
    let peer = client
        .stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // Debug level: at the default level a span per client would cost more memory than the rest
    // of an idle session; the events that matter carry their own fields.
    let span = tracing::debug_span!("client", %peer);
    let login = tokio::time::timeout(login_timeout, login::login(&proxy, &mut client));
    let logged_in = match login.instrument(span.clone()).await {
        Ok(Ok(Some(s))) => s,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            refuse(&mut client, e, &peer).instrument(span).await;
            return None;
        }
        Err(_) => {
            refuse(&mut client, SessionError::LoginTimeout, &peer)
                .instrument(span)
                .await;
            return None;
        }
    };
    Some(Box::new(run::Session::new(proxy, client, logged_in, span)))
}

async fn refuse(client: &mut ClientConn, e: SessionError, peer: &str) {
    tracing::info!(%peer, error = %e, "login refused");
    if let Some(f) = e.to_client_fatal() {
        client.send_error(&f).await;
    }
}

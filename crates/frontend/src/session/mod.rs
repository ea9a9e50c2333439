//! One client session: login (startup, auth, greeting), then the relay loop in [`run`], then
//! cleanup. `serve_client` is the task body the listener spawns per connection.

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
    let span = tracing::info_span!("client", peer = %client.peer);
    async move {
        let logged_in =
            match tokio::time::timeout(login_timeout, login::login(&proxy, &mut client)).await {
                Ok(Ok(Some(s))) => s,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => return refuse(&mut client, e).await,
                Err(_) => return refuse(&mut client, SessionError::LoginTimeout).await,
            };
        let span =
            tracing::info_span!("session", user = %logged_in.user, database = %logged_in.database);
        let mut session = run::Session::new(proxy, client, logged_in);
        let result = session.run().instrument(span.clone()).await;
        match &result {
            Ok(()) => tracing::debug!(parent: &span, "client left"),
            Err(SessionError::ClientGone(e)) => {
                tracing::debug!(parent: &span, error = %e, "client gone")
            }
            Err(e) => tracing::info!(parent: &span, error = %e, "session ended"),
        }
        session.finish(result.err()).instrument(span).await;
    }
    .instrument(span)
    .await
}

async fn refuse(client: &mut ClientConn, e: SessionError) {
    tracing::info!(error = %e, "login refused");
    if let Some(f) = e.to_client_fatal() {
        client.send_error(&f).await;
    }
}

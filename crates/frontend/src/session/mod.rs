//! One client session: login (startup, auth, greeting), then the relay loop in [`run`], then
//! cleanup; or, for the virtual database `switchyard`, the admin console. `serve_client` is the
//! task body the listener spawns per connection.

mod abort;
mod attach;
mod handover;
mod listen;
pub(crate) mod login;
mod park;
pub mod pool_for;
mod rebuild;
mod relay;
mod resolve;
mod run;
mod step;

pub(crate) use park::{Parked, serve_session};
pub(crate) use run::Session;

use crate::SessionError;
use crate::client::ClientConn;
use crate::console::ConsoleClient;
use crate::proxy::Admitted;
use login::Login;
use std::future::Future;
use std::pin::Pin;
use tokio::net::TcpStream;
use tracing::Instrument;

/// Serves one client connection to its end. Never panics on client input; every failure is
/// answered per the error contract and logged once.
///
/// This future is what every client's task holds for its whole life, so it is kept small: the
/// login runs boxed and hands back a boxed [`run::Session`] (or the console's boxed future).
pub(crate) async fn serve_client(accepted: Box<Accepted>) {
    match Box::pin(open_session(accepted)).await {
        Opened::Session(session) => serve_session(session).await,
        Opened::Console(serve, admitted) => {
            serve.await;
            drop(admitted);
        }
        Opened::Nothing => {}
    }
}

/// A connection the listener admitted, as its task starts (one box: the task's future holds a
/// pointer, not the stream and the handles).
pub(crate) struct Accepted {
    pub proxy: Admitted,
    pub stream: TcpStream,
}

/// What a connection turned into after its login.
enum Opened {
    Session(Box<run::Session>),
    /// The console's future, and the client's place in the count.
    Console(Pin<Box<dyn Future<Output = ()> + Send>>, Admitted),
    /// Refused, or a cancel request.
    Nothing,
}

/// Runs the login.
async fn open_session(accepted: Box<Accepted>) -> Opened {
    let Accepted { proxy, stream } = *accepted;
    let live = proxy.live.load_full();
    let mut client = ClientConn::new(
        stream,
        live.config.proxy.max_message_size,
        live.config.proxy.client_write_timeout.get(),
        proxy.buffers.clone(),
    );
    let login_timeout = live.config.proxy.login_timeout.get();
    let max_pending = live.config.proxy.max_pending_logins_per_address;
    drop(live);
    let peer_addr = client.peer_addr();
    let peer = peer_addr.map(|a| a.to_string()).unwrap_or_default();
    // Debug level: at the default level a span per client would cost more memory than the rest
    // of an idle session; the events that matter carry their own fields.
    let span = tracing::debug_span!("client", %peer);
    let pending = match peer_addr {
        Some(a) => match proxy.pending_logins.begin(a.ip(), max_pending) {
            Some(p) => Some(p),
            None => {
                let error = SessionError::TooManyLogins {
                    address: a.ip().to_string(),
                    max: max_pending,
                };
                refuse(&mut client, error, &peer).instrument(span).await;
                return Opened::Nothing;
            }
        },
        None => None,
    };
    let login = tokio::time::timeout(login_timeout, login::login(&proxy, &mut client, peer_addr));
    let login = login.instrument(span.clone()).await;
    drop(pending);
    let error = match login {
        Ok(Ok(Login::Session(s, pinned))) => {
            let mut session = Box::new(run::Session::new(proxy, client, s, span));
            if let Some((server, generation)) = pinned {
                session.pinned(server, generation);
            }
            return Opened::Session(session);
        }
        Ok(Ok(Login::Console {
            user,
            registration,
            console,
        })) => {
            let serve = console.serve(ConsoleClient::new(client, user, registration));
            return Opened::Console(serve, proxy);
        }
        Ok(Ok(Login::Cancel)) => return Opened::Nothing,
        Ok(Err(e)) => e,
        Err(_) => SessionError::LoginTimeout,
    };
    refuse(&mut client, error, &peer).instrument(span).await;
    Opened::Nothing
}

async fn refuse(client: &mut ClientConn, e: SessionError, peer: &str) {
    tracing::info!(%peer, error = %e, "login refused");
    if let Some(f) = e.to_client_fatal() {
        client.send_error(&f).await;
    }
}
#[cfg(test)]
mod sizes;

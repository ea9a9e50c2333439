//! Online restart, the sessions' part: a transaction-mode client that is idle between
//! transactions moves from a Switchyard process being replaced to the one replacing it, its
//! socket passed over the handover socket (`switchyard::handover` carries it) with a
//! [`SessionImage`] of what the session knows: who logged in, its settings, its named
//! statements, its cancel key and any bytes of its next request already read. The new process
//! serves it from its next request on; the client notices nothing.
//!
//! Sessions that cannot move are drained as at a shutdown: session mode (its server
//! connection holds its state), TLS clients (the TLS session lives in this process),
//! auth_query users (their server secret was proved to this process only), the console.

use crate::Proxy;
use crate::cancel::{ClientInfo, Who};
use crate::client::ClientConn;
use crate::params::ClientParams;
use crate::proxy::Admitted;
use crate::session::login::LoggedIn;
use crate::session::pool_for::Target;
use crate::statements::Statements;
use bytes::Bytes;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use switchyard_proto::backend::ErrorFields;
use switchyard_proto::frontend::Parse;
use switchyard_proto::{Frame, sqlstate};

/// What a moving session knows, as the new process needs it. (No Debug: it holds the cancel
/// secret and the client's bytes.)
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionImage {
    pub user: String,
    pub cluster: String,
    pub server_db: String,
    /// The client's settings where they differ from the servers' (as startup parameters).
    pub settings: Vec<(String, String)>,
    /// Named statements: each Parse body (name, NUL, text and types), hex.
    pub statements: Vec<String>,
    pub process_id: i32,
    /// The cancel key's secret, hex.
    pub secret: String,
    pub peer: Option<String>,
    pub connected_unix_s: u64,
    /// Bytes of the client's next request already read, hex.
    pub pending: String,
}

/// Most named statements a moving session may have (more stay and drain: the image must fit
/// one handover message).
pub(crate) const MAX_STATEMENTS: usize = 1000;
/// Most bytes of a next request already read that a moving session may carry.
pub(crate) const MAX_PENDING: usize = 1 << 20;

/// Where a process being replaced sends its moving sessions.
pub type HandoverTx = tokio::sync::mpsc::UnboundedSender<(OwnedFd, SessionImage)>;

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Statements {
    /// Every named statement as its Parse body.
    pub(crate) fn export(&self) -> Vec<String> {
        self.iter()
            .map(|s| {
                let mut body = s.parse.name.to_vec();
                body.push(0);
                body.extend_from_slice(&s.parse.tail);
                hex(&body)
            })
            .collect()
    }
}

/// Takes in a session another process handed over: its client socket `fd` and its image.
/// A session this process cannot serve (its user or database no longer configured here) is
/// told so (57P01) and closed, as a restart would.
pub fn adopt(proxy: &Arc<Proxy>, fd: OwnedFd, image: SessionImage) {
    let admitted = Admitted::counted(proxy.clone());
    proxy
        .clients
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let proxy = proxy.clone();
    tokio::spawn(async move {
        let user = image.user.clone();
        let Some(mut client) = client_of(&proxy, fd) else {
            return;
        };
        match Box::pin(rebuild(&proxy, &mut client, image)).await {
            Ok(info) => {
                tracing::info!(%user, "session taken over from the previous process");
                let (info, statements) = info;
                let span = tracing::debug_span!("client", peer = ?client.peer_addr());
                let mut session =
                    Box::new(crate::session::Session::new(admitted, client, info, span));
                session.statements = statements;
                crate::session::serve_session(session).await;
            }
            Err(why) => {
                tracing::warn!(%user, %why, "a session handed over could not be taken in; its connection is closed");
                let fatal = ErrorFields::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    format!(
                        "switchyard: restarted, and this session could not be taken over \
                         ({why}); reconnect"
                    ),
                );
                client.send_error(&fatal).await;
            }
        }
    });
}

/// The client connection of a socket handed over.
fn client_of(proxy: &Proxy, fd: OwnedFd) -> Option<ClientConn> {
    let stream = std::net::TcpStream::from(fd);
    stream.set_nonblocking(true).ok()?;
    let stream = tokio::net::TcpStream::from_std(stream).ok()?;
    let live = proxy.live.load();
    Some(ClientConn::new(
        stream,
        live.config.proxy.max_message_size,
        live.config.proxy.client_write_timeout.get(),
        proxy.buffers.clone(),
    ))
}

/// The logged-in state and statements of a session from its image (the client's unread
/// bytes go back into `client`).
async fn rebuild(
    proxy: &Arc<Proxy>,
    client: &mut ClientConn,
    image: SessionImage,
) -> Result<(LoggedIn, Statements), String> {
    let live = proxy.live.load_full();
    let user = (live.users.get(&image.user).cloned()).ok_or("its user is not configured")?;
    let site = (live.config.site_for(&image.server_db))
        .filter(|s| s.cluster == image.cluster)
        .ok_or("its database is not configured")?;
    let target = proxy.targets.share(Target {
        cluster: image.cluster.clone(),
        server_db: image.server_db.clone(),
        credential: user.server_password().map(str::to_string).into(),
        user,
    });
    let settings = live.settings_for(site);
    let failover_timeout = live.config.failover.failover_timeout.get();
    drop(live);
    let welcome = crate::session::login::welcome_for(proxy, &target, &settings, failover_timeout)
        .await
        .map_err(|e| e.to_string())?;
    let params = ClientParams::from_startup(&image.settings, &welcome)?;
    let secret = unhex(&image.secret).ok_or("a malformed cancel key")?;
    let mut statements = Statements::default();
    for body in &image.statements {
        let body = unhex(body).ok_or("a malformed statement")?;
        let parse =
            Parse::decode(&Frame::new(b'P', Bytes::from(body))).map_err(|e| e.to_string())?;
        statements.prepare(parse).map_err(|e| e.to_string())?;
    }
    let pending = unhex(&image.pending).ok_or("malformed pending bytes")?;
    let info = ClientInfo {
        who: Who::Session(target.clone()),
        peer: image.peer.as_deref().and_then(|p| p.parse().ok()),
        connected_unix_s: image.connected_unix_s,
    };
    let cancel = proxy.cancels.register_key(info, image.process_id, &secret);
    client.buf.extend_from_slice(&pending);
    let logged_in = LoggedIn {
        target,
        settings,
        welcome,
        params,
        cancel,
    };
    Ok((logged_in, statements))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(unhex(&hex(&bytes)).as_deref(), Some(&bytes[..]));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("abc"), None);
    }
}

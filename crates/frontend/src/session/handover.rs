//! A session's side of an online restart (see `crate::handover`): at an idle point while the
//! process is being replaced, a session that can move sends its socket and image to the new
//! process and ends here without a word to its client.

use super::pool_for::server_db;
use super::run::{Link, Session};
use crate::SessionError;
use crate::handover::{MAX_PENDING, MAX_STATEMENTS, SessionImage, hex};
use std::os::fd::AsFd;
use switchyard_config::PoolMode;
use switchyard_server::Credential;
use switchyard_tls::Stream;

impl Session {
    /// Called where an idle session sees the shutdown: `Err(HandedOver)` if it moved to the
    /// process replacing this one, else the shutdown's own error (it drains as usual).
    pub(super) fn hand_over(&mut self) -> SessionError {
        let Some(to) = self.proxy.handover() else {
            return SessionError::Shutdown;
        };
        let Some(image) = self.image() else {
            return SessionError::Shutdown;
        };
        let Stream::Plain(tcp) = &self.client.stream else {
            return SessionError::Shutdown;
        };
        let Ok(fd) = tcp.as_fd().try_clone_to_owned() else {
            return SessionError::Shutdown;
        };
        if to.send((fd, image)).is_err() {
            return SessionError::Shutdown;
        }
        SessionError::HandedOver
    }

    /// What the new process needs, if this session can move: transaction mode, between
    /// transactions, not listening, a configured user, a database the same config maps the same way.
    fn image(&self) -> Option<SessionImage> {
        let movable = self.mode() == PoolMode::Transaction
            && matches!(self.link, Link::Detached)
            && self.owe_ready_at_sync.is_none()
            // Its LISTENs live in this process's hub.
            && self.info.cancel.inbox().is_none()
            && matches!(self.client.stream, Stream::Plain(_))
            && self.client.buf.len() <= MAX_PENDING
            && self.statements.iter().count() <= MAX_STATEMENTS;
        let target = &self.info.target;
        if !movable || matches!(target.credential, Credential::Learned(_)) {
            return None;
        }
        let live = self.proxy.live.load();
        live.users.get(&target.user.name)?;
        let site = live.config.site_for(&target.server_db)?;
        if site.cluster != target.cluster || server_db(site, &target.server_db) != target.server_db
        {
            return None;
        }
        let peer = self.client.peer_addr().map(|a| a.to_string());
        Some(SessionImage {
            user: target.user.name.clone(),
            cluster: target.cluster.clone(),
            server_db: target.server_db.clone(),
            settings: self.info.params.overrides(),
            statements: self.statements.export(),
            process_id: self.info.cancel.process_id,
            secret: hex(&self.info.cancel.secret),
            peer,
            connected_unix_s: self.info.cancel.connected_unix_s(),
            pending: hex(&self.client.buf),
        })
    }
}

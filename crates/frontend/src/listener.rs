//! The accept loop: admits clients up to `max_client_conn`, spawns a session task per client,
//! and stops accepting when shutdown fires.

use crate::proxy::Admitted;
use crate::session::Accepted;
use crate::{Proxy, SessionError};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;

/// Accepts clients until `proxy.shutdown` fires.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = proxy.shutdown.cancelled() => return,
        };
        let max = proxy.live.load().config.proxy.max_client_conn;
        if proxy.clients.fetch_add(1, Ordering::Relaxed) >= max {
            proxy.clients.fetch_sub(1, Ordering::Relaxed);
            let buffers = proxy.buffers.clone();
            tokio::spawn(async move {
                let mut client = crate::client::ClientConn::new(
                    stream,
                    1024,
                    std::time::Duration::from_secs(1),
                    buffers,
                );
                if let Some(f) = (SessionError::TooManyClients { max }).to_client_fatal() {
                    client.send_error(&f).await;
                }
            });
            continue;
        }
        // One box holds what the task starts with, so its future carries a pointer, not copies.
        let accepted = Box::new(Accepted {
            proxy: Admitted::counted(proxy.clone()),
            stream,
        });
        tokio::spawn(crate::session::serve_client(accepted));
    }
}

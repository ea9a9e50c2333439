//! The hook through which the admin console serves connections to the virtual database
//! [`CONSOLE_DATABASE`]. The console itself lives in `switchyard-admin` (which depends on this
//! crate, never the reverse): the binary installs it with [`crate::Proxy::install_console`].
//!
//! The login is the same as any client's (same users, same authentication); then a user listed
//! in `admin.users` is greeted (AuthenticationOk, ParameterStatus, BackendKeyData,
//! ReadyForQuery) and its connection handed to the console, and anyone else gets FATAL 28000.

use crate::cancel::CancelHandle;
use crate::client::ClientConn;
use std::future::Future;
use std::pin::Pin;

/// The database name that reaches the admin console instead of a site.
pub use switchyard_config::CONSOLE_DATABASE;

/// A logged-in, greeted admin-console connection.
pub struct ConsoleClient {
    pub conn: ClientConn,
    pub user: String,
    /// The connection's registration (SHOW CLIENTS lists it); dropped with the connection.
    registration: CancelHandle,
}

impl ConsoleClient {
    pub(crate) fn new(conn: ClientConn, user: String, registration: CancelHandle) -> Self {
        Self {
            conn,
            user,
            registration,
        }
    }

    /// The backend key's process id the connection was given.
    pub fn process_id(&self) -> i32 {
        self.registration.process_id
    }
}

/// Serves admin-console connections.
pub trait Console: Send + Sync {
    /// Serves one connection until the client leaves (or the proxy shuts down).
    fn serve(&self, client: ConsoleClient) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

//! [`Proxy`]: the state every client session shares: live config, pools, the client registry,
//! pauses, the admin console's hook, shutdown signal and the client count.

use crate::cancel::{CancelRegistry, ClientSnapshot};
use crate::console::Console;
use crate::pause::Pauses;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Arc, OnceLock, Weak};
use switchyard_config::{AuthMethod, Config, EffectivePool, SiteConfig, UserConfig, is_md5_hash};
use switchyard_pool::Pools;
use switchyard_proto::scram::ScramSecret;
use switchyard_router::Router;
use tokio_util::sync::CancellationToken;

/// How one configured user proves who they are, derived once per config load.
#[derive(Debug, Clone)]
pub enum UserAuth {
    Trust,
    /// The stored `md5…` hash of password + user name.
    Md5 {
        stored: String,
    },
    Scram {
        secret: ScramSecret,
    },
    /// A verified client certificate whose common name is the user name.
    Cert,
}

impl UserAuth {
    fn derive(u: &UserConfig) -> Self {
        let password = u.password.clone().unwrap_or_default();
        match u.auth {
            AuthMethod::Trust => Self::Trust,
            AuthMethod::Cert => Self::Cert,
            AuthMethod::Md5 if is_md5_hash(&password) => Self::Md5 { stored: password },
            AuthMethod::Md5 => Self::Md5 {
                stored: switchyard_proto::md5::stored_hash(&u.name, &password),
            },
            AuthMethod::ScramSha256 => {
                let secret = ScramSecret::parse(&password)
                    .unwrap_or_else(|_| ScramSecret::from_password(&password));
                Self::Scram { secret }
            }
        }
    }
}

/// TLS for clients from `[proxy]`: none without a certificate.
fn client_tls(
    p: &switchyard_config::ProxyConfig,
) -> Result<switchyard_tls::FromClient, switchyard_tls::TlsError> {
    use switchyard_config::ClientTls as C;
    use switchyard_tls::ClientTlsMode as M;
    if p.tls_cert_file.is_empty() {
        return Ok(switchyard_tls::FromClient::disabled());
    }
    let mode = match p.client_tls {
        C::Disable => M::Disable,
        C::Allow => M::Allow,
        C::Prefer => M::Prefer,
        C::Require => M::Require,
        C::VerifyCa => M::VerifyCa,
        C::VerifyFull => M::VerifyFull,
    };
    let ca =
        (!p.client_tls_ca_file.is_empty()).then(|| std::path::Path::new(&p.client_tls_ca_file));
    switchyard_tls::FromClient::new(
        mode,
        std::path::Path::new(&p.tls_cert_file),
        std::path::Path::new(&p.tls_key_file),
        ca,
    )
}

/// A config together with what is derived from it.
pub struct Live {
    pub config: Config,
    pub auth: HashMap<String, UserAuth>,
    /// Each user's config, shared by its sessions.
    pub users: HashMap<String, Arc<UserConfig>>,
    /// Each site's pool settings (same order as `config.sites`), shared by its sessions.
    pub site_settings: Vec<Arc<EffectivePool>>,
    /// TLS to servers, built from `[server]` once per config load.
    pub server_tls: Arc<switchyard_tls::ToServer>,
    /// TLS for clients, built from `[proxy]` once per config load (a reload reads the
    /// certificate files again; open connections keep what they have).
    pub client_tls: Arc<switchyard_tls::FromClient>,
}

impl Live {
    /// The pool settings of `site`, shared.
    pub fn settings_for(&self, site: &SiteConfig) -> Arc<EffectivePool> {
        let i = self.config.sites.iter().position(|s| std::ptr::eq(s, site));
        i.and_then(|i| self.site_settings.get(i))
            .cloned()
            .unwrap_or_else(|| Arc::new(self.config.effective_pool(site)))
    }
}

impl Live {
    /// Prepares a config for use; fails if its TLS files cannot be loaded.
    pub fn new(config: Config) -> Result<Self, switchyard_tls::TlsError> {
        let server_tls = Arc::new(switchyard_router::server_tls(&config.server)?);
        let client_tls = Arc::new(client_tls(&config.proxy)?);
        let users = config
            .users
            .iter()
            .map(|u| (u.name.clone(), Arc::new(u.clone())))
            .collect();
        let auth = config
            .users
            .iter()
            .map(|u| (u.name.clone(), UserAuth::derive(u)))
            .collect();
        let site_settings = config
            .sites
            .iter()
            .map(|s| Arc::new(config.effective_pool(s)))
            .collect();
        Ok(Self {
            config,
            auth,
            users,
            site_settings,
            server_tls,
            client_tls,
        })
    }
}

/// A cancel request for a client of another process (online restart).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ForwardedCancel {
    pub process_id: i32,
    pub secret: Vec<u8>,
}

/// See [`Proxy::forward_unknown_cancels`].
pub type ForwardCancels = tokio::sync::mpsc::Sender<ForwardedCancel>;

pub struct Proxy {
    pub live: ArcSwap<Live>,
    pub pools: Arc<Pools>,
    pub router: Arc<Router>,
    pub(crate) cancels: CancelRegistry,
    /// Idle clients held without a task (`park_idle_after`).
    pub(crate) parking: crate::parking::ParkingLot<crate::session::Parked>,
    /// PAUSE/RESUME state, consulted when a session attaches.
    pub pauses: Pauses,
    /// Set when this process is being replaced (online restart): where idle sessions go.
    handover: OnceLock<crate::handover::HandoverTx>,
    /// Set while the process this one replaced drains (online restart): where cancel requests
    /// for keys this process does not know go, since its clients' drivers send them to the
    /// listener this process now owns.
    predecessor: std::sync::Mutex<Option<ForwardCancels>>,
    /// The admin console, once installed (weak: the console holds the proxy).
    console: OnceLock<Weak<dyn Console>>,
    pub(crate) buffers: Arc<crate::buffers::Buffers>,
    /// Where clients' targets are shared.
    pub(crate) targets: crate::targets::Targets,
    /// Fired on SIGTERM: stop accepting, let sessions finish their transactions.
    pub shutdown: CancellationToken,
    /// `shutdown` has fired (an atomic: the token's own check takes a lock, and idle sessions
    /// check this on every wait).
    stopping: AtomicBool,
    /// Fired when the drain is over: stops the background loops (probes, reaper), which
    /// draining sessions still need.
    pub background: CancellationToken,
    pub clients: AtomicUsize,
    /// Logins under way, per client address.
    pub(crate) pending_logins: crate::logins::PendingLogins,
    /// Random per process: keys the mock SCRAM secrets of unknown users.
    pub(crate) mock_nonce: [u8; 32],
    /// Users looked up with `auth_query`, and the secrets their logins proved.
    pub(crate) auth_query: crate::auth_query::AuthQueryUsers,
    /// Transaction-mode LISTEN: one listening connection per (cluster, database, user).
    pub(crate) listen_hubs: crate::listen::Hubs,
}

impl Proxy {
    /// Builds the shared state and starts watching the configured clusters. Needs a runtime.
    /// Fails if the config's TLS files cannot be loaded.
    pub fn new(config: Config) -> Result<Arc<Self>, switchyard_tls::TlsError> {
        let live = Live::new(config)?;
        let pools = Arc::new(Pools::default());
        let shutdown = CancellationToken::new();
        let background = CancellationToken::new();
        let router = Router::new(pools.clone(), background.clone());
        router.reconcile(&live.config, &live.server_tls);
        let cancels = CancelRegistry::default();
        let buffers = Arc::<crate::buffers::Buffers>::default();
        let parking = match live.config.proxy.park_idle_after.limit() {
            Some(period) => crate::parking::ParkingLot::start(
                period,
                crate::parking::Sweep {
                    clients: cancels.clone(),
                    buffers: buffers.clone(),
                },
            ),
            None => crate::parking::ParkingLot::off(),
        };
        let proxy = Arc::new(Self {
            live: ArcSwap::from_pointee(live),
            pools,
            router,
            cancels,
            parking,
            pauses: Pauses::default(),
            handover: OnceLock::new(),
            predecessor: Default::default(),
            console: OnceLock::new(),
            buffers,
            targets: Default::default(),
            shutdown,
            stopping: AtomicBool::new(false),
            background,
            clients: AtomicUsize::new(0),
            pending_logins: Default::default(),
            mock_nonce: rand::random(),
            auth_query: Default::default(),
            listen_hubs: Default::default(),
        });
        tokio::spawn(wake_idle_sessions_at_shutdown(Arc::downgrade(&proxy)));
        Ok(proxy)
    }

    /// Online restart: from now on idle sessions that can move go to `to` (the process
    /// replacing this one) when the shutdown that follows reaches them. False if a handover
    /// was already under way.
    pub fn hand_over_to(&self, to: crate::handover::HandoverTx) -> bool {
        self.handover.set(to).is_ok()
    }

    /// Online restart, in the new process: cancel requests for keys it does not know go to
    /// `to` (the old process, draining) until this is called again with `None`.
    pub fn forward_unknown_cancels(&self, to: Option<ForwardCancels>) {
        *self.predecessor.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }

    /// Online restart, in the old process: a cancel request the new one passed on (see
    /// [`Proxy::forward_unknown_cancels`]), for one of the clients still draining here.
    pub async fn cancel_forwarded(&self, request: ForwardedCancel) {
        if !self
            .cancels
            .cancel(request.process_id, &request.secret)
            .await
        {
            tracing::debug!(
                process_id = request.process_id,
                "forwarded cancel request for an unknown key"
            );
        }
    }

    /// Passes a cancel request on to the process this one replaced, if it is still draining.
    /// Never waits: when the queue is full (a flood of unknown keys), the request is dropped,
    /// as PostgreSQL drops a cancel with an unknown key.
    pub(crate) fn forward_to_predecessor(&self, process_id: i32, secret: Vec<u8>) {
        let to = self.predecessor.lock().unwrap_or_else(|p| p.into_inner());
        match to.as_ref() {
            Some(tx) if tx.try_send(ForwardedCancel { process_id, secret }).is_ok() => {
                tracing::debug!(process_id, "cancel request passed to the previous process");
            }
            _ => tracing::debug!(process_id, "cancel request for an unknown key"),
        }
    }

    /// Where idle sessions go, while this process is being replaced.
    pub(crate) fn handover(&self) -> Option<&crate::handover::HandoverTx> {
        self.handover.get()
    }

    /// True once shutdown has begun (a plain check).
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Ready once shutdown has begun; until then the task's waker is kept in the client's
    /// registration (once per session, see [`crate::cancel::CancelHandle::wake_on_shutdown`]),
    /// and `wake_idle_sessions_at_shutdown` wakes it. The fence pairs with the one there, so
    /// either the flag is seen here or the task is woken.
    pub(crate) fn poll_stopping(
        &self,
        cancel: &crate::cancel::CancelHandle,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.is_stopping() {
            return std::task::Poll::Ready(());
        }
        cancel.wake_on_shutdown(cx.waker());
        fence(Ordering::SeqCst);
        if self.is_stopping() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// The longest new work waits in the failover gate (read live: a reload applies to the
    /// next wait).
    pub fn failover_timeout(&self) -> std::time::Duration {
        self.live.load().config.failover.failover_timeout.get()
    }

    /// Installs a new (already validated) config and applies it to existing pools; refused,
    /// with the running config kept, if its TLS files cannot be loaded.
    pub fn reload(&self, config: Config) -> Result<(), switchyard_tls::TlsError> {
        let live = Live::new(config)?;
        self.router.reconcile(&live.config, &live.server_tls);
        self.live.store(Arc::new(live));
        crate::session::pool_for::reconcile_pools(self);
        Ok(())
    }

    /// Installs the admin console, which serves the virtual database `switchyard`; false if one
    /// was installed already. The proxy keeps only a weak reference: the caller keeps it alive.
    pub fn install_console(&self, console: &Arc<dyn Console>) -> bool {
        self.console.set(Arc::downgrade(console)).is_ok()
    }

    /// The admin console, if one is installed and alive.
    pub fn console(&self) -> Option<Arc<dyn Console>> {
        self.console.get().and_then(Weak::upgrade)
    }

    /// Every logged-in client (sessions and console connections).
    pub fn clients(&self) -> Vec<ClientSnapshot> {
        self.cancels.clients()
    }

    /// Clients parked while idle (`park_idle_after`).
    pub fn parked_count(&self) -> usize {
        self.parking.len()
    }

    pub fn client_count(&self) -> usize {
        self.clients.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Sets `stopping` when shutdown fires, then wakes every idle session to see it.
async fn wake_idle_sessions_at_shutdown(proxy: Weak<Proxy>) {
    let Some(shutdown) = proxy.upgrade().map(|p| p.shutdown.clone()) else {
        return;
    };
    shutdown.cancelled().await;
    if let Some(p) = proxy.upgrade() {
        p.stopping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        p.cancels.wake_all();
        p.parking.resume_all();
    }
}

/// A client counted against `max_client_conn` (the caller has counted it): the count goes down
/// when this drops, however the client's task ends. Dereferences to the proxy, so a session
/// holds this instead of a second handle.
pub(crate) struct Admitted(Arc<Proxy>);

impl Admitted {
    pub(crate) fn counted(proxy: Arc<Proxy>) -> Admitted {
        Admitted(proxy)
    }
}

impl std::ops::Deref for Admitted {
    type Target = Arc<Proxy>;
    fn deref(&self) -> &Arc<Proxy> {
        &self.0
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0
            .clients
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

//! Attaching a session to a server connection at the current primary.
//!
//! An operator's PAUSE of the session's database holds the request first (until RESUME, within
//! the same `failover_timeout`; then 57P03).
//!
//! The failover gate is where waiting happens: `attach` asks the router for the primary (waiting
//! while there is none), checks a connection out of that primary's pool and brings its settings
//! in line with the client's — racing all of it against a topology change. A primary that cannot
//! be reached, or that stops being the primary meanwhile, sends the request back to the gate
//! (and the monitor a hint to probe now) until `failover_timeout` runs out. Nothing of the
//! client's has been sent at this point, so retrying is always safe.

use super::login::primary_pool;
use super::pool_for::sync_settings;
use super::run::{Link, Session, generation_moved_past, stripe_of};
use crate::SessionError;
use std::sync::Arc;
use std::time::Duration;
use switchyard_pool::{Pool, PoolError, Pooled};
use switchyard_router::RouteError;
use switchyard_server::ServerError;
use switchyard_topology::{Caught, ClusterState};
use tokio::time::Instant;

/// Pause before retrying a primary that refused us while the monitor still names it.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What a failed attempt means.
enum Attempt {
    /// The primary could not be reached, or stopped being the primary: try again via the gate.
    Retry(SessionError),
    Fail(SessionError),
}

impl Session {
    /// Takes a server connection at the current primary, waiting (PAUSE, then the failover
    /// gate) for at most `failover_timeout` in all. The client shows as waiting meanwhile.
    pub(super) async fn attach(&mut self) -> Result<(), SessionError> {
        let started = Instant::now();
        self.info.cancel.waiting(Some(started.into_std()));
        let attached = self.attach_from(started).await;
        if attached.is_err() {
            // (Once attached, the link says so already.)
            self.info.cancel.waiting(None);
        }
        attached
    }

    /// The wait behind [`Session::attach`]. Every request of a busy pool comes through here, so
    /// the rare parts (PAUSE, no primary, a retry, a new connection, a settings change) are
    /// boxed: the common future stays small.
    async fn attach_from(&mut self, started: Instant) -> Result<(), SessionError> {
        let deadline = started + self.failover_timeout();
        self.follow_current_monitor();
        if self.proxy.pauses.any() {
            Box::pin(self.wait_unpaused(deadline)).await?;
        }
        // Held: the request had to wait for a primary (none, or an unusable one).
        let mut held = !self.same_primary_as_last_time()
            && self
                .monitor
                .as_ref()
                .is_some_and(|m| !matches!(m.view().state, ClusterState::Primary { .. }));
        loop {
            let (pool, generation) = match self.route(deadline).await {
                Ok(route) => route,
                Err(e) => {
                    if matches!(e, SessionError::Route(RouteError::NoPrimary { .. })) {
                        self.count(Caught::GateTimeout);
                    }
                    return Err(e);
                }
            };
            match self.attempt(&pool, generation, started).await {
                Ok(server) => {
                    self.attached(server, generation);
                    if held {
                        self.count(Caught::Held(started.elapsed()));
                    }
                    return Ok(());
                }
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry(SessionError::PrimaryChanged)) => {
                    // The topology moved on while this request waited: route it afresh, with
                    // the cluster's current monitor (a reload may have replaced the one this
                    // session started with). If nothing newer is known yet, wait for news
                    // rather than asking again at once.
                    held = true;
                    if Instant::now() + RETRY_PAUSE >= deadline {
                        return Err(SessionError::PrimaryChanged);
                    }
                    self.follow_current_monitor();
                    if self
                        .monitor
                        .as_ref()
                        .is_some_and(|m| m.generation() == generation)
                    {
                        Box::pin(self.wait_for_news(generation, RETRY_PAUSE)).await;
                    }
                }
                Err(Attempt::Retry(e)) => {
                    held = true;
                    if let Some(m) = &self.monitor {
                        m.suspect(pool.addr());
                    }
                    tracing::info!(parent: self.span(), server = %pool.addr(), error = %e, "primary unusable; back to the gate");
                    if Instant::now() + RETRY_PAUSE >= deadline {
                        return Err(e);
                    }
                    Box::pin(self.wait_for_news(generation, RETRY_PAUSE)).await;
                }
            }
        }
    }

    /// Takes the cluster's current monitor if a reload replaced this session's. (The generation
    /// is the cluster's, shared by both; the old monitor's view and hints are not followed.)
    fn follow_current_monitor(&mut self) {
        if self.monitor.as_ref().is_some_and(|m| m.is_replaced()) {
            self.monitor = self.proxy.router.monitor(&self.info.target.cluster);
        }
    }

    /// The topology has not changed since `last_pool` was chosen (at a primary): it is still
    /// the primary's pool. (Never with a monitor a reload replaced: its hints would go nowhere.)
    fn same_primary_as_last_time(&self) -> bool {
        self.last_pool.as_ref().is_some_and(|p| !p.is_removed())
            && self
                .monitor
                .as_ref()
                .is_some_and(|m| m.generation() == self.last_generation && !m.is_replaced())
    }

    /// Holds the request while an operator has paused its database (PAUSE), until RESUME or
    /// `deadline`.
    async fn wait_unpaused(&self, deadline: Instant) -> Result<(), SessionError> {
        let pauses = &self.proxy.pauses;
        let t = &self.info.target;
        if !pauses.is_paused(&t.cluster, &t.server_db) {
            return Ok(());
        }
        tracing::info!(parent: self.span(), database = %t.server_db, "database paused; waiting for RESUME");
        if pauses
            .wait_resumed(&t.cluster, &t.server_db, deadline)
            .await
        {
            return Ok(());
        }
        Err(SessionError::Paused {
            database: t.server_db.clone(),
            waited: self.failover_timeout(),
        })
    }

    /// Counts a request caught by a failover, for the metrics and the incident's scope.
    pub(super) fn count(&self, what: Caught) {
        if let Some(m) = &self.monitor {
            m.counters().caught(&self.info.target.server_db, what);
        }
    }

    /// Counts a request answered because its server connection, opened in `generation`, was
    /// lost: as a failover's only if the topology moves on (see
    /// [`ClusterMonitor::count_loss`](switchyard_topology::ClusterMonitor::count_loss)).
    pub(super) fn count_loss(&self, what: Caught, generation: u64) {
        if let Some(m) = &self.monitor {
            m.count_loss(&self.info.target.server_db, what, generation);
        }
    }

    /// Attaches without waiting when the topology has not changed since the pool was last used
    /// and that pool has an idle connection with the client's settings: the common case, with
    /// no future to box or poll and no lock but the pool's. Never while anything is paused
    /// (PAUSE): [`Session::attach`] decides then.
    pub(super) fn try_attach_now(&mut self) -> bool {
        if self.proxy.pauses.any() {
            return false;
        }
        if !self.same_primary_as_last_time() {
            return false;
        }
        let (Some(pool), generation) = (&self.last_pool, self.last_generation) else {
            return false;
        };
        let Some(server) = pool.try_checkout(generation) else {
            return false;
        };
        if server.conn.settings_fingerprint != self.info.params.fingerprint() {
            pool.release(server);
            return false;
        }
        self.attached(server, generation);
        true
    }

    /// The pool at the current primary and its generation, waiting in the gate until
    /// `deadline` while there is none. The common case (the same primary as last time) reads
    /// one atomic.
    async fn route(&mut self, deadline: Instant) -> Result<(Arc<Pool>, u64), SessionError> {
        if self.same_primary_as_last_time()
            && let Some(pool) = &self.last_pool
        {
            return Ok((pool.clone(), self.last_generation));
        }
        let current = self.monitor.as_ref().map(|m| m.view());
        if let Some(view) = current
            && let ClusterState::Primary { addr, .. } = &view.state
            && let Some(pool) = self
                .last_pool
                .as_ref()
                .filter(|p| p.addr() == addr && !p.is_removed())
        {
            self.last_generation = view.generation;
            return Ok((pool.clone(), view.generation));
        }
        let gate = deadline.saturating_duration_since(Instant::now());
        let (pool, generation) = Box::pin(primary_pool(
            &self.proxy,
            &self.info.target,
            &self.info.settings,
            gate,
        ))
        .await?;
        self.last_pool = Some(pool.clone());
        self.last_generation = generation;
        Ok((pool, generation))
    }

    /// Waits until the generation moves past `generation`, or `pause` passes.
    async fn wait_for_news(&mut self, generation: u64, pause: Duration) {
        let _ = tokio::time::timeout(
            pause,
            generation_moved_past(&mut self.generations(), generation),
        )
        .await;
    }

    /// One checkout and settings sync at the primary of `generation`. A topology change ends it
    /// at once without a watch of its own: the pool sends queued requests back and cuts off the
    /// sockets of the old generation, including the one being brought in line here.
    async fn attempt(
        &mut self,
        pool: &Arc<Pool>,
        generation: u64,
        started: Instant,
    ) -> Result<Pooled, Attempt> {
        let wait = self.info.settings.query_wait_timeout.get();
        let server = pool
            .checkout_by(wait, (started + wait).into_std(), generation)
            .await
            .map_err(classify_pool)?;
        if server.conn.settings_fingerprint == self.info.params.fingerprint() {
            return Ok(server);
        }
        Box::pin(sync_settings(
            pool,
            server,
            &self.info.params,
            &self.info.welcome,
        ))
        .await
        .map_err(|e| {
            if self
                .monitor
                .as_ref()
                .is_some_and(|m| m.generation() != generation)
            {
                Attempt::Retry(SessionError::PrimaryChanged)
            } else {
                classify_server(e)
            }
        })
    }

    /// Starts the session on the server connection its login took (session mode).
    pub(super) fn pinned(&mut self, server: Pooled, generation: u64) {
        self.last_pool = Some(server.pool().clone());
        self.last_generation = generation;
        self.attached(server, generation);
    }

    fn attached(&mut self, mut server: Pooled, generation: u64) {
        let now = Instant::now();
        // Statements this attachment uses may have portals open on them: never evicted.
        server.conn.prepared.begin_attachment();
        self.info
            .cancel
            .link(server.conn.cancel_key.clone(), now.into_std());
        if let Some(m) = &self.monitor {
            m.request_started(&server.conn.addr, stripe_of(&server.conn));
        }
        self.relay.reset();
        self.fresh = true;
        self.replay = None;
        if self.mode() == switchyard_config::PoolMode::Session {
            // A new record of what the session builds (a rebuild puts the old one back).
            server.conn.built = Some(Box::default());
        }
        self.link = Link::Attached {
            server,
            generation,
            since: now,
        };
    }
}

fn classify_server(e: ServerError) -> Attempt {
    if e.is_unreachable() {
        Attempt::Retry(SessionError::Server(e))
    } else {
        Attempt::Fail(SessionError::Server(e))
    }
}

fn classify_pool(e: PoolError) -> Attempt {
    match e {
        PoolError::Server(s) => classify_server(s),
        PoolError::Retired => Attempt::Retry(SessionError::PrimaryChanged),
        other => Attempt::Fail(other.into()),
    }
}

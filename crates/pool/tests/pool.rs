//! A pool in front of a real PostgreSQL: the queue is first come first served, waits end at
//! their deadline, a cancelled wait leaks nothing, growing lets waiters in, and retiring a
//! generation cuts off its checked-out sockets and sends its waiters back.

use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_localpg::PgServer;
use switchyard_pool::{Pool, PoolError, PoolSettings, Pooled};
use switchyard_server::{ConnectParams, SocketOptions};
use tokio::io::AsyncReadExt;

const STEP: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn settings(size: usize) -> PoolSettings {
    PoolSettings {
        size,
        min_idle: 0,
        idle_timeout: Duration::from_secs(600),
        lifetime: Duration::from_secs(3600),
    }
}

fn pool(pg: &PgServer, size: usize) -> Arc<Pool> {
    Pool::new(
        ConnectParams {
            addr: pg.addr(),
            server_name: None,
            user: "postgres".into(),
            database: "postgres".into(),
            credential: Default::default(),
            connect_timeout: Duration::from_secs(5),
            socket: SocketOptions::default(),
            allowed_auth: switchyard_server::AllowedAuth::any(),
            tls: std::sync::Arc::new(switchyard_tls::ToServer::disabled()),
            probe_commits: false,
            probe_writes: false,
        },
        settings(size),
    )
}

/// A connection of `generation`, within the step's bound.
async fn take(pool: &Arc<Pool>, generation: u64) -> Pooled {
    within("checkout", pool.checkout(STEP, generation))
        .await
        .expect("checkout")
}

/// Spawns a checkout that reports which waiter got a connection.
fn queue(
    pool: &Arc<Pool>,
    who: u32,
    wait: Duration,
    generation: u64,
    got: tokio::sync::mpsc::UnboundedSender<(u32, Result<Pooled, PoolError>)>,
) -> tokio::task::JoinHandle<()> {
    let pool = pool.clone();
    tokio::spawn(async move {
        let r = pool.checkout(wait, generation).await;
        let _ = got.send((who, r));
    })
}

/// Yields until the pool shows `n` requests waiting.
async fn until_waiting(pool: &Pool, n: usize) {
    within("requests to queue", async {
        while pool.stats().waiting != n {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn released_connections_go_to_the_longest_waiting_request() {
    let pg = PgServer::start().expect("start PostgreSQL");
    let pool = pool(&pg, 1);
    let held = take(&pool, 1).await;
    let pid = held.conn.key().process_id;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for who in 0..3 {
        queue(&pool, who, STEP, 1, tx.clone());
        until_waiting(&pool, who as usize + 1).await;
    }
    // Nobody jumps the queue, not even without waiting.
    assert!(pool.try_checkout(1).is_none());
    pool.release(held);
    for expected in 0..3 {
        let (who, r) = within("a waiter served", rx.recv()).await.expect("sender");
        assert_eq!(who, expected, "served in arrival order");
        let c = r.expect("a connection");
        assert_eq!(
            c.conn.key().process_id,
            pid,
            "the released connection itself"
        );
        pool.release(c);
    }
    let s = pool.stats();
    assert_eq!((s.active, s.waiting, s.idle), (0, 0, 1));
}

#[tokio::test(flavor = "current_thread")]
async fn a_wait_ends_at_its_deadline_and_a_cancelled_one_leaks_nothing() {
    let pg = PgServer::start().expect("start PostgreSQL");
    let pool = pool(&pg, 1);
    let held = take(&pool, 1).await;
    let started = Instant::now();
    let r = within(
        "a bounded wait",
        pool.checkout(Duration::from_millis(300), 1),
    )
    .await;
    let waited = started.elapsed();
    assert!(matches!(r, Err(PoolError::Timeout(_))), "timed out");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "waited {waited:?} for a 300 ms deadline"
    );
    // A wait given up by its caller (a client that left) takes nothing with it.
    let cancelled = tokio::time::timeout(Duration::from_millis(50), pool.checkout(STEP, 1)).await;
    assert!(cancelled.is_err());
    assert_eq!(pool.stats().waiting, 0);
    pool.release(held);
    let again = pool.try_checkout(1).expect("the one slot is free");
    assert_eq!(pool.stats().active, 1);
    drop(again);
    assert_eq!(
        pool.stats().active,
        0,
        "a dropped connection frees its slot"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn growing_the_pool_lets_waiting_requests_in() {
    let pg = PgServer::start().expect("start PostgreSQL");
    let pool = pool(&pg, 1);
    let held = take(&pool, 1).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    queue(&pool, 7, STEP, 1, tx);
    until_waiting(&pool, 1).await;
    pool.resize(settings(2));
    let (who, r) = within("the waiter let in", rx.recv())
        .await
        .expect("sender");
    assert_eq!(who, 7);
    let second = r.expect("a new connection");
    assert_ne!(second.conn.key().process_id, held.conn.key().process_id);
    assert_eq!(pool.stats().active, 2);
}

#[tokio::test(flavor = "current_thread")]
async fn retiring_a_generation_cuts_off_its_sockets_and_sends_waiters_back() {
    let pg = PgServer::start().expect("start PostgreSQL");
    let pool = pool(&pg, 1);
    let mut held = take(&pool, 1).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    queue(&pool, 1, STEP, 1, tx);
    until_waiting(&pool, 1).await;
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = held.conn.stream.read(&mut byte);
    tokio::pin!(read);
    // Nothing to read: the server is idle.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), read.as_mut())
            .await
            .is_err()
    );
    pool.retire_before(2);
    let n = within("the read to end", read).await;
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "a read on a retired connection ends (end-of-file or error), got {n:?}"
    );
    let (_, r) = within("the waiter sent back", rx.recv())
        .await
        .expect("sender");
    assert!(matches!(r, Err(PoolError::Retired)), "waiter retired");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The retired connection is not reused; the next generation gets a new one.
    let old_pid = held.conn.key().process_id;
    pool.release(held);
    let fresh = take(&pool, 2).await;
    assert_ne!(fresh.conn.key().process_id, old_pid);
    // A request still asking for the old generation is sent back at once.
    assert!(matches!(
        within("old generation", pool.checkout(STEP, 1)).await,
        Err(PoolError::Retired)
    ));
}

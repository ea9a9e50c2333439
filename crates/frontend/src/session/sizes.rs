//! Guards for what every idle client costs: the task's future and the boxed session. At 10,000
//! idle clients each 16 bytes here is 160 KB; the budget is 2× PgBouncer's footprint per client
//! (bench/run measures the whole of it).

use super::*;

/// tokio's task cell is this future plus 96 bytes, rounded up to 128: at most 288 keeps it at
/// 384 bytes.
const MAX_TASK_FUTURE: usize = 288;

/// The session is boxed: at most 376 bytes keeps its allocation at 384.
const MAX_SESSION: usize = 376;

#[test]
fn an_idle_client_stays_small() {
    let size = std::mem::size_of::<run::Session>();
    assert!(
        size <= MAX_SESSION,
        "Session is {size} bytes (budget {MAX_SESSION})"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let toml = "[clusters.c]\nmembers = [\"127.0.0.1:1\"]\n[[sites]]\ndatabase = \"*\"\n\
                    cluster = \"c\"\n[[users]]\nname = \"u\"\nauth = \"trust\"\n\
                    [admin]\nlisten = \"\"\nincidents_file = \"\"\n";
        let proxy = crate::Proxy::new(switchyard_config::Config::from_toml(toml).unwrap()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        proxy
            .clients
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let accepted = Box::new(Accepted {
            proxy: crate::proxy::Admitted::counted(proxy.clone()),
            stream,
        });
        let task = serve_client(accepted);
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= MAX_TASK_FUTURE,
            "the task's future is {size} bytes (budget {MAX_TASK_FUTURE})"
        );
        proxy.background.cancel();
    });
}

/// The size of what `f` returns, without calling it.
fn size_of_return<A, R>(_f: impl Fn(A) -> R) -> usize {
    std::mem::size_of::<R>()
}

#[test]
fn a_resumed_client_stays_small() {
    let size = size_of_return(|p: Parked| park::serve_parked(p, crate::parking::Resume::Readable));
    assert!(
        size <= MAX_TASK_FUTURE,
        "a resumed session's future is {size} bytes (budget {MAX_TASK_FUTURE})"
    );
}

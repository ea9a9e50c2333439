//! The floor under any tokio proxy, for `bench/run --floor`: each client gets its own server
//! connection and bytes are copied both ways (`copy_bidirectional`) on a current-thread runtime,
//! as Switchyard runs by default. No pooling, no parsing, no accounting: whatever this costs per
//! transaction, a tokio proxy cannot cost less.
//!
//! Usage: tokio-relay-floor LISTEN_PORT SERVER_ADDR

use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(port), Some(server)) = (args.next(), args.next()) else {
        eprintln!("usage: tokio-relay-floor LISTEN_PORT SERVER_ADDR");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap_or(0))).await?;
        loop {
            let (mut client, _) = listener.accept().await?;
            let server = server.clone();
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(mut upstream) = TcpStream::connect(&server).await else {
                    return;
                };
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    })
}

//! A network hop for `bench/run --server-rtt-us N`: a relay in front of PostgreSQL that holds
//! every chunk it reads for half the round-trip time before writing it on, in each direction,
//! without holding up the chunks behind it (a delay line, as a network link is: latency, not a
//! lower bandwidth). This machine has no second host and no `tc netem`.
//!
//! Plain threads, not tokio: tokio's timer ticks in milliseconds, a thread's sleep is good to
//! about 60 µs. Two threads per direction of each connection (a reader and a writer).
//!
//! Usage: delay-line-floor LISTEN_PORT SERVER_ADDR RTT_MICROSECONDS

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(port), Some(server), Some(rtt)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: delay-line-floor LISTEN_PORT SERVER_ADDR RTT_MICROSECONDS");
        std::process::exit(2);
    };
    let one_way = Duration::from_micros(rtt.parse::<u64>().unwrap_or(0) / 2);
    let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>().unwrap_or(0)))?;
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Ok(upstream) = TcpStream::connect(&server) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
        std::thread::spawn(move || delay(client, u2, one_way));
        std::thread::spawn(move || delay(upstream, c2, one_way));
    }
    Ok(())
}

/// Copies `from` to `to`, each chunk written `by` after it was read.
fn delay(mut from: TcpStream, mut to: TcpStream, by: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        while let Ok((due, chunk)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || tx.send((Instant::now() + by, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
}

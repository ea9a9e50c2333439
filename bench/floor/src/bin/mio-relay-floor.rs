//! The same relay as `tokio-relay-floor` on mio directly: one thread, edge-triggered readiness,
//! a callback-style loop like PgBouncer's (no task per client, no wakers). `bench/run --floor`
//! runs it; by hand: `target/floor/release/mio-relay-floor PORT 127.0.0.1:PGPORT` (start it
//! with `setsid`, see bench/README.md). A write that finds the socket full spins: fine for pgbench's small
//! messages, not for anything else.
//!
//! Usage: mio-relay-floor LISTEN_PORT SERVER_ADDR

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};

fn write_all(s: &mut TcpStream, mut b: &[u8]) -> bool {
    while !b.is_empty() {
        match s.write(b) {
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(_) => return false,
        }
    }
    true
}

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().unwrap().parse().unwrap();
    let server: std::net::SocketAddr = args.next().unwrap().parse().unwrap();
    let mut poll = Poll::new().unwrap();
    let mut listener = TcpListener::bind(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
    const L: Token = Token(usize::MAX);
    poll.registry()
        .register(&mut listener, L, Interest::READABLE)
        .unwrap();
    let mut conns: Vec<Option<(TcpStream, TcpStream)>> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 16384];
    loop {
        poll.poll(&mut events, None).unwrap();
        for ev in events.iter() {
            if ev.token() == L {
                while let Ok((mut c, _)) = listener.accept() {
                    let std_s = std::net::TcpStream::connect(server).unwrap();
                    std_s.set_nonblocking(true).unwrap();
                    let mut s = TcpStream::from_std(std_s);
                    c.set_nodelay(true).unwrap();
                    s.set_nodelay(true).unwrap();
                    let i = conns.len();
                    poll.registry()
                        .register(&mut c, Token(2 * i), Interest::READABLE)
                        .unwrap();
                    poll.registry()
                        .register(&mut s, Token(2 * i + 1), Interest::READABLE)
                        .unwrap();
                    conns.push(Some((c, s)));
                }
                continue;
            }
            let i = ev.token().0 / 2;
            let from_client = ev.token().0 % 2 == 0;
            let mut close = false;
            if let Some((c, s)) = conns[i].as_mut() {
                let (src, dst) = if from_client { (c, s) } else { (s, c) };
                loop {
                    match src.read(&mut buf) {
                        Ok(0) => {
                            close = true;
                            break;
                        }
                        Ok(n) => {
                            if !write_all(dst, &buf[..n]) {
                                close = true;
                                break;
                            }
                            if n < buf.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            close = true;
                            break;
                        }
                    }
                }
            }
            if close {
                conns[i] = None;
            }
        }
    }
}

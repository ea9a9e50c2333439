//! Online restart (`[proxy] handover_socket`): a new `switchyard serve` takes over from the
//! one running, over a unix socket. The new process says hello; the running one passes it its
//! listening sockets (the proxy's and the admin listener, SCM_RIGHTS) and goes on accepting
//! until the new one, fully started, says it serves (if it fails or dies first, the old one
//! simply goes on serving); then the old one stops accepting, so no connection is refused, and
//! each of its transaction-mode clients, at its next idle moment, follows with its own socket
//! and what its session knows (`switchyard_frontend::handover`). The old process drains what
//! cannot move and exits. Meanwhile the new process passes it the cancel requests for keys it
//! does not know: its clients' drivers send them to the listener the new one owns now. Only
//! a process of the same user may be on either end.
//!
//! Messages are length-prefixed JSON; each carries the descriptors it names. Descriptors
//! arrive in the order they were sent, so the receiver pairs them with messages in order (a
//! truncated set ends the channel). The socket calls are rustix's (safe wrappers of
//! sendmsg/recvmsg): neither std nor tokio passes descriptors.

use anyhow::{Context, bail};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use switchyard_frontend::handover::SessionImage;
use switchyard_frontend::{ForwardedCancel, Proxy};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// The protocol's version: a process only hands over to one that speaks the same.
const VERSION: u32 = 1;
/// Longest wait for the other side's next message during the exchange, or for one send.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the old process waits for the new one to start serving.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Cancel requests queued for the old process; more are dropped (see
/// `Proxy::forward_unknown_cancels`).
const CANCELS_QUEUED: usize = 256;
/// Largest message accepted (a session with many statements is the largest; a session that
/// would need more stays and drains: see `switchyard_frontend::handover`).
const MAX_MESSAGE: usize = 64 << 20;

#[derive(serde::Serialize, serde::Deserialize)]
enum Message {
    Hello {
        version: u32,
    },
    /// Carries the proxy's listener, then the admin listener if `admin`.
    Listeners {
        admin: bool,
    },
    /// The new process serves: the old one may stop accepting.
    Ready,
    /// Carries the client's socket.
    Session(Box<SessionImage>),
    /// From the new process to the old: a cancel request for a key the new one does not
    /// know, maybe of a client still draining in the old one.
    Cancel(ForwardedCancel),
}

impl Message {
    /// Its kind, for logs (an image holds a cancel secret and client bytes: never logged).
    fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Listeners { .. } => "listeners",
            Message::Ready => "ready",
            Message::Session(_) => "session",
            Message::Cancel(_) => "cancel",
        }
    }
}

/// Only a process of the user running this one may be on the other end.
fn check_peer(stream: &UnixStream) -> anyhow::Result<()> {
    let peer = stream.peer_cred()?.uid();
    let me = rustix::process::getuid().as_raw();
    if peer != me {
        bail!("the handover socket's other end runs as uid {peer}, not {me}");
    }
    Ok(())
}

/// One end of a handover socket.
struct Channel {
    stream: UnixStream,
    buf: Vec<u8>,
    /// One read's room, kept: a read is at most this much.
    chunk: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl Channel {
    fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            chunk: vec![0u8; 64 << 10],
            fds: VecDeque::new(),
        }
    }

    async fn send(&mut self, message: &Message, fds: &[&OwnedFd]) -> anyhow::Result<()> {
        let body = serde_json::to_vec(message)?;
        let mut frame = u32::try_from(body.len())?.to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        // The descriptors go with the first bytes; the rest follows as plain data.
        let sent = loop {
            self.stream.writable().await?;
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !borrowed.is_empty() {
                control.push(SendAncillaryMessage::ScmRights(&borrowed));
            }
            let tried = self.stream.try_io(Interest::WRITABLE, || {
                rustix::net::sendmsg(
                    &self.stream,
                    &[IoSlice::new(&frame)],
                    &mut control,
                    SendFlags::empty(),
                )
                .map_err(std::io::Error::from)
            });
            match tried {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        };
        self.stream.write_all(&frame[sent..]).await?;
        Ok(())
    }

    /// The next message; `None` at the end of the stream.
    async fn recv(&mut self) -> anyhow::Result<Option<Message>> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > MAX_MESSAGE {
                    bail!("a handover message of {len} bytes");
                }
                if self.buf.len() >= 4 + len {
                    let message = serde_json::from_slice(&self.buf[4..4 + len])?;
                    self.buf.drain(..4 + len);
                    return Ok(Some(message));
                }
            }
            self.stream.readable().await?;
            let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = self.stream.try_io(Interest::READABLE, || {
                rustix::net::recvmsg(
                    &self.stream,
                    &mut [IoSliceMut::new(&mut self.chunk)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)
            });
            let got = match got {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            };
            if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
                // Descriptors were dropped (none left here?): they could no longer be paired
                // with their messages, so the channel is done.
                bail!("descriptors lost in the handover (MSG_CTRUNC)");
            }
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = message {
                    self.fds.extend(fds);
                }
            }
            if got.bytes == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&self.chunk[..got.bytes]);
        }
    }

    fn take_fd(&mut self) -> anyhow::Result<OwnedFd> {
        self.fds
            .pop_front()
            .context("a handover message without its descriptor")
    }
}

/// What a new process takes over from the running one.
pub struct TakenOver {
    pub listener: std::net::TcpListener,
    pub admin: Option<std::net::TcpListener>,
    /// Where its sessions come from.
    pub sessions: Incoming,
}

/// The old process's end of the handover, for its sessions.
pub struct Incoming {
    channel: Channel,
}

/// Asks a Switchyard serving at `path` to hand over; `None` if none is there.
pub async fn take_over(path: &Path) -> anyhow::Result<Option<TakenOver>> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("handover socket {}", path.display())),
    };
    check_peer(&stream)?;
    let mut channel = Channel::new(stream);
    let hello = channel.send(&Message::Hello { version: VERSION }, &[]);
    tokio::time::timeout(EXCHANGE_TIMEOUT, hello)
        .await
        .context("the running Switchyard did not take the handover request")??;
    let answer = tokio::time::timeout(EXCHANGE_TIMEOUT, channel.recv())
        .await
        .context("the running Switchyard did not answer the handover")??;
    let Some(Message::Listeners { admin }) = answer else {
        bail!("the running Switchyard refused the handover (another version?)");
    };
    let listener = std::net::TcpListener::from(channel.take_fd()?);
    let admin = if admin {
        Some(std::net::TcpListener::from(channel.take_fd()?))
    } else {
        None
    };
    Ok(Some(TakenOver {
        listener,
        admin,
        sessions: Incoming { channel },
    }))
}

impl Incoming {
    /// Tells the old process this one serves (call once accepting), then takes in its
    /// sessions as they come, until it is done or `limit` has passed (its drain is bounded by
    /// its `shutdown_timeout`); `received` is cancelled then.
    pub async fn receive(
        mut self,
        proxy: Arc<Proxy>,
        received: CancellationToken,
        limit: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        let _done = received.drop_guard();
        let ready = self.channel.send(&Message::Ready, &[]);
        if !matches!(
            tokio::time::timeout(EXCHANGE_TIMEOUT, ready).await,
            Ok(Ok(()))
        ) {
            tracing::error!("could not tell the old process this one serves; it goes on");
            return;
        }
        let mut taken = 0u64;
        // Cancel requests for the old process's clients, while it drains.
        let (cancels, mut to_forward) = tokio::sync::mpsc::channel(CANCELS_QUEUED);
        proxy.forward_unknown_cancels(Some(cancels));
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, self.channel.recv()) => next,
                Some(cancel) = to_forward.recv() => {
                    let message = Message::Cancel(cancel);
                    let sent = self.channel.send(&message, &[]);
                    if !matches!(tokio::time::timeout(EXCHANGE_TIMEOUT, sent).await, Ok(Ok(()))) {
                        tracing::warn!("could not pass a cancel request to the old process");
                    }
                    continue;
                }
            };
            let Ok(next) = next else {
                tracing::warn!("the old process is still handing over; no longer waiting for it");
                break;
            };
            match next {
                Ok(Some(Message::Session(image))) => match self.channel.take_fd() {
                    Ok(fd) => {
                        switchyard_frontend::handover::adopt(&proxy, fd, *image);
                        taken += 1;
                    }
                    Err(e) => {
                        // Unpaired from here on: nothing more can be taken in safely.
                        tracing::error!(error = %e, "handover channel out of step; closing it");
                        break;
                    }
                },
                Ok(Some(other)) => {
                    tracing::warn!(kind = other.kind(), "unexpected handover message")
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "handover socket failed");
                    break;
                }
            }
        }
        // The old process is done (or no longer waited for): nowhere to pass cancels to.
        proxy.forward_unknown_cancels(None);
        tracing::info!(sessions = taken, "handover complete");
    }
}

/// Serves the handover socket at `path` (once `ready`: this process has taken in all the
/// sessions of the one it replaced) until a new process asks: then passes it `listener`
/// (and `admin`); once it says it serves, cancels `handed_over` (the caller drains this
/// process) and sends it every session that moves, until no client is left here.
pub async fn offer(
    path: PathBuf,
    listener: OwnedFd,
    admin: Option<OwnedFd>,
    proxy: Arc<Proxy>,
    handed_over: CancellationToken,
    ready: CancellationToken,
) {
    tokio::select! {
        () = ready.cancelled() => {}
        () = proxy.shutdown.cancelled() => return,
    }
    let Some(unix) = bind(&path) else {
        return;
    };
    tracing::info!(path = %path.display(), "handover socket ready");
    let mut channel = loop {
        let stream = tokio::select! {
            r = unix.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "handover accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = proxy.shutdown.cancelled() => return,
        };
        if let Err(e) = check_peer(&stream) {
            tracing::warn!(error = %e, "handover refused");
            continue;
        }
        let mut channel = Channel::new(stream);
        match tokio::time::timeout(EXCHANGE_TIMEOUT, channel.recv()).await {
            Ok(Ok(Some(Message::Hello { version }))) if version == VERSION => {}
            _ => {
                tracing::warn!("a handover request this process cannot serve (another version?)");
                continue;
            }
        }
        let mut fds = vec![&listener];
        fds.extend(admin.as_ref());
        let listeners = Message::Listeners {
            admin: admin.is_some(),
        };
        match tokio::time::timeout(EXCHANGE_TIMEOUT, channel.send(&listeners, &fds)).await {
            Ok(Ok(())) => {}
            _ => {
                tracing::warn!("handover failed before the listeners");
                continue;
            }
        }
        // This process goes on serving until the new one says it does too.
        match tokio::time::timeout(READY_TIMEOUT, channel.recv()).await {
            Ok(Ok(Some(Message::Ready))) => break channel,
            _ => tracing::warn!("the new process did not start; this one goes on serving"),
        }
    };
    // The new process accepts from now on; this one's idle sessions go to it. (The socket
    // file is the new process's now: left alone.)
    drop(unix);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    proxy.hand_over_to(tx);
    tracing::info!(
        "a new process took over the listeners; handing over idle sessions and draining"
    );
    handed_over.cancel();
    let (mut sent, mut failed) = (0u64, 0u64);
    // The new process passes on cancel requests for this one's clients until the channel ends.
    let mut hearing = true;
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(Duration::from_millis(50), rx.recv()) => next,
            heard = channel.recv(), if hearing => {
                match heard {
                    Ok(Some(Message::Cancel(request))) => {
                        tokio::spawn({
                            let proxy = proxy.clone();
                            async move { proxy.cancel_forwarded(request).await }
                        });
                    }
                    Ok(Some(other)) => {
                        tracing::warn!(kind = other.kind(), "unexpected handover message");
                    }
                    Ok(None) | Err(_) => hearing = false,
                }
                continue;
            }
        };
        let (fd, image) = match next {
            Ok(Some(x)) => x,
            Ok(None) => break,
            // A session sends its image before it stops counting as a client: once none is
            // left, what is queued is all there will be.
            Err(_) if proxy.client_count() == 0 => match rx.try_recv() {
                Ok(x) => x,
                Err(_) => break,
            },
            Err(_) => continue,
        };
        let message = Message::Session(Box::new(image));
        let fds = [&fd];
        match tokio::time::timeout(EXCHANGE_TIMEOUT, channel.send(&message, &fds)).await {
            Ok(Ok(())) => sent += 1,
            _ => {
                failed += 1;
                tracing::warn!("handing over a session failed; its client is disconnected");
            }
        }
    }
    tracing::info!(sessions = sent, failed, "sessions handed over");
}

/// Binds the handover socket at `path` (replacing a stale socket there, never anything
/// else), readable and writable by this user only.
fn bind(path: &Path) -> Option<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => drop(std::fs::remove_file(path)),
        Ok(_) => {
            tracing::error!(path = %path.display(), "handover_socket names something that is not a socket; online restart is off");
            return None;
        }
        Err(_) => {}
    }
    match UnixListener::bind(path) {
        Ok(l) => {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
            Some(l)
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot serve the handover socket; online restart is off");
            None
        }
    }
}

//! [`ClientConn`]: the client's socket with its read buffer and frame cap.

use crate::SessionError;
use bytes::BytesMut;
use switchyard_proto::backend::ErrorFields;
use switchyard_proto::{Frame, decode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct ClientConn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub max_message: usize,
    pub peer: String,
}

impl ClientConn {
    pub fn new(stream: TcpStream, max_message: usize) -> Self {
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let _ = stream.set_nodelay(true);
        Self {
            stream,
            buf: BytesMut::with_capacity(8192),
            max_message,
            peer,
        }
    }

    /// Reads more bytes into the buffer; `Ok(false)` on a clean EOF.
    ///
    /// Cancel safety: cancel-safe (tokio's `read_buf`).
    pub async fn fill(&mut self) -> Result<bool, SessionError> {
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) => Err(SessionError::ClientGone(e)),
        }
    }

    /// Reads one whole frame; EOF is an error (the client left mid-conversation).
    pub async fn read_frame(&mut self) -> Result<Frame, SessionError> {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, self.max_message)? {
                return Ok(f);
            }
            if !self.fill().await? {
                return Err(SessionError::ClientGone(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(SessionError::ClientGone)
    }

    pub async fn send(&mut self, frames: &[Frame]) -> Result<(), SessionError> {
        let mut out = BytesMut::new();
        for f in frames {
            f.encode(&mut out);
        }
        self.write(&out).await
    }

    /// Sends an error, best effort and bounded: the client may already be gone or stuck.
    pub async fn send_error(&mut self, e: &ErrorFields) {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            self.send(&[e.to_frame()]),
        )
        .await;
    }
}

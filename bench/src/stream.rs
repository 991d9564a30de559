//! The load generator's client stream: bytes read past the HTTP response head first, then
//! the socket, at most [`MAX_READ`] bytes per read.
//!
//! Why the cap: fastwebsockets reads into the spare capacity of one `BytesMut` per
//! connection, and before each frame it reserves `payload + 14` bytes *beyond* what it has
//! already buffered. A lagging connection's socket holds megabytes, so an unlimited read
//! fills the whole buffer; the next reserve does not fit, the consumed prefix is shorter
//! than what is still buffered, and `BytesMut` doubles the buffer instead of moving the
//! rest to the front. The next read fills the doubled buffer again, and so on. Uncapped, a
//! 1000-connection run (`--rate 1000`) grew the load generator to 3.4 GB in 12 s, and
//! faulting in and zeroing that memory (2 MiB huge pages) plus copying it on every realloc
//! took about a fifth of the machine's CPU away from the server under test. Capped, the
//! run stays at about 370 MB. Both servers are measured through the same client, so the
//! cap changes what each can deliver on a shared machine, not how they compare in kind.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes one read hands to the WebSocket reader (see the module docs).
pub const MAX_READ: usize = 64 * 1024;

/// A stream that first yields `prefix`, then reads `inner` at most [`MAX_READ`] bytes at a
/// time. Writes go straight to `inner`.
pub struct Prefixed<S> {
    /// Bytes already read from `inner` (past the HTTP head); `prefix[at..]` is unread.
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Yields `prefix` before anything read from `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() <= MAX_READ {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let mut capped = buf.take(MAX_READ);
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut capped))?;
        let n = capped.filled().len();
        // SAFETY: `capped` views the first `MAX_READ` bytes of `buf`'s unfilled part, and
        // the read filled (so initialized) its first `n` of them.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every byte arrives once and in order (prefix first), and no read returns more than
    /// `MAX_READ` bytes however large the buffer.
    #[tokio::test]
    async fn prefix_then_inner_in_order_and_capped() {
        let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let prefix: Vec<u8> = (0..3000u32).map(|i| (i % 13) as u8).collect();
        let (mut server, client) = tokio::io::duplex(4 * MAX_READ);
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            server.write_all(&sent).await.unwrap();
            server.shutdown().await.unwrap();
        });
        let mut stream = Prefixed::new(prefix.clone(), client);
        let (mut got, mut reads, mut largest) = (Vec::new(), 0usize, 0usize);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            reads += 1;
            largest = largest.max(n);
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got.len(), prefix.len() + body.len());
        assert_eq!(&got[..prefix.len()], &prefix[..]);
        assert_eq!(&got[prefix.len()..], &body[..]);
        assert!(largest <= MAX_READ, "a read returned {largest} bytes");
        assert!(reads >= body.len() / MAX_READ, "only {reads} reads");
    }

    /// fastwebsockets still reads frames larger than one capped read, and a burst of
    /// thousands of frames written before the client reads any (a lagging client).
    #[tokio::test]
    async fn websocket_reads_large_frames_and_bursts_through_the_cap() {
        let (server_io, client_io) = tokio::io::duplex(1 << 20);
        let sizes: Vec<usize> = [3 * MAX_READ + 17, 10, MAX_READ, 2400]
            .into_iter()
            .chain(std::iter::repeat_n(2400, 3000))
            .collect();
        let expected = sizes.clone();
        let writer = tokio::spawn(async move {
            let mut server = WebSocket::after_handshake(server_io, Role::Server);
            for (i, size) in sizes.into_iter().enumerate() {
                let payload = vec![b'a' + (i % 26) as u8; size];
                let frame = Frame::text(Payload::Owned(payload));
                server.write_frame(frame).await.unwrap();
            }
            server.write_frame(Frame::close(1000, b"")).await.unwrap();
        });
        let mut client =
            WebSocket::after_handshake(Prefixed::new(Vec::new(), client_io), Role::Client);
        // The writer has gone once it sent its close; do not answer it.
        client.set_auto_close(false);
        let mut got = 0usize;
        loop {
            let frame = client.read_frame().await.unwrap();
            if frame.opcode == OpCode::Close {
                break;
            }
            assert_eq!(frame.opcode, OpCode::Text);
            assert!(frame.fin);
            assert_eq!(frame.payload.len(), expected[got], "frame {got}");
            let byte = b'a' + (got % 26) as u8;
            assert!(frame.payload.iter().all(|&b| b == byte), "frame {got}");
            got += 1;
        }
        writer.await.unwrap();
        assert_eq!(got, expected.len());
    }
}

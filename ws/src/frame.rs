//! RFC 6455 framing for the server side of `/ws/events`, written for this server's two needs:
//!
//! * [`Outbox`], the write side: queued frames are written with vectored writes, each frame
//!   a 2 to 10 byte header plus the *shared* payload bytes (an event's encoding is never
//!   copied per connection), and everything queued goes out in as few `writev` calls as the
//!   kernel allows, then one flush. Its [`Outbox::poll_drain`] keeps its progress in the
//!   outbox, so the future that calls it can be dropped at any time (cancel-safe) and the
//!   connection loop can race it against reads, timers and shutdown.
//! * [`Parser`], the read side: client frames are parsed out of a buffer the connection
//!   fills with the cancel-safe `read_buf`. It checks what RFC 6455 requires of a client
//!   (masking, reserved bits, opcodes, control frame rules, fragmentation order, close codes,
//!   UTF-8 of text messages, and this server's message size limit) and says which close code
//!   answers each violation.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

/// Close codes this server sends (RFC 6455 section 7.4.1).
pub mod close_code {
    /// Server shutdown, or the node's event bus closed.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message was not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The client lagged and the server is configured to close laggards.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A client message was larger than the limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Longest control frame payload (RFC 6455 section 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Most buffers handed to one `writev` (Linux's `IOV_MAX` is 1024).
const MAX_IOV: usize = 512;

// ---------------------------------------------------------------------------------------------
// Write side
// ---------------------------------------------------------------------------------------------

/// One queued server frame: unmasked header and payload.
struct OutFrame {
    head: [u8; 10],
    head_len: u8,
    payload: Bytes,
}

impl OutFrame {
    fn new(opcode: u8, payload: Bytes) -> Self {
        let mut head = [0u8; 10];
        head[0] = 0x80 | opcode; // FIN, no reserved bits
        let len = payload.len();
        let head_len = if len < 126 {
            head[1] = len as u8;
            2
        } else if let Ok(len) = u16::try_from(len) {
            head[1] = 126;
            head[2..4].copy_from_slice(&len.to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Self {
            head,
            head_len,
            payload,
        }
    }

    fn len(&self) -> usize {
        usize::from(self.head_len) + self.payload.len()
    }

    /// The unwritten part of this frame, from `offset`, as one or two buffers.
    fn slices(&self, offset: usize) -> (&[u8], &[u8]) {
        let head = &self.head[..usize::from(self.head_len)];
        if offset < head.len() {
            (&head[offset..], &self.payload)
        } else {
            (&[], &self.payload[offset - head.len()..])
        }
    }
}

/// What one [`Outbox::poll_drain`] wrote, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    /// Event frames written.
    pub events: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Frames waiting to be written to one connection, and how far the current write got.
#[derive(Default)]
pub struct Outbox {
    frames: Vec<OutFrame>,
    /// Frames before `next` are fully written.
    next: usize,
    /// Bytes of `frames[next]` already written.
    offset: usize,
    /// Writers without vectored writes get a flat copy instead: `flat[flat_pos..]` is unsent.
    flat: Vec<u8>,
    flat_pos: usize,
    /// Queued frames not yet reported by `poll_drain`.
    pending: Drained,
    /// Bytes handed to the socket since the outbox was made, partial writes included: the
    /// client's reading progress, for the liveness check.
    written: u64,
    /// Control frames queued (pong, ping, close): the connection stops reading the client
    /// while too many of its answers wait.
    controls: usize,
    /// A close frame is queued: nothing may follow it.
    closed: bool,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.next == self.frames.len() && self.flat_pos == self.flat.len()
    }

    /// Bytes the socket has accepted so far (partial writes included). While this grows,
    /// the client is reading.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes queued and not yet accepted by the socket.
    pub fn unwritten(&self) -> u64 {
        let queued: usize = self.frames[self.next..].iter().map(OutFrame::len).sum();
        (queued - self.offset + (self.flat.len() - self.flat_pos)) as u64
    }

    /// Control frames queued since the outbox was last empty.
    pub fn controls(&self) -> usize {
        self.controls
    }

    fn push(&mut self, opcode: u8, payload: Bytes) {
        if self.closed {
            return; // RFC 6455 5.5.1: nothing after a close frame.
        }
        let frame = OutFrame::new(opcode, payload);
        self.pending.bytes += frame.len() as u64;
        self.frames.push(frame);
    }

    /// Queues an event: a text frame of shared, already-encoded bytes.
    pub fn push_event(&mut self, json: Bytes) {
        if !self.closed {
            self.pending.events += 1;
        }
        self.push(OP_TEXT, json);
    }

    /// Queues a server notice (`started`, `lagged`): a text frame, not counted as an event.
    pub fn push_notice(&mut self, json: Bytes) {
        self.push(OP_TEXT, json);
    }

    /// Queues a ping.
    pub fn push_ping(&mut self, payload: Bytes) {
        debug_assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        self.controls += 1;
        self.push(OP_PING, payload);
    }

    /// Queues a pong answering a ping with `payload`.
    pub fn push_pong(&mut self, payload: Bytes) {
        debug_assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        self.controls += 1;
        self.push(OP_PONG, payload);
    }

    /// Queues a close frame (`code` `None`: an empty one); nothing is queued after it.
    /// `reason` is cut to the 123 bytes a close frame has room for, at a `char` boundary.
    pub fn push_close(&mut self, code: Option<u16>, reason: &str) {
        let payload = match code {
            None => Bytes::new(),
            Some(code) => {
                let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                let mut p = Vec::with_capacity(2 + end);
                p.extend_from_slice(&code.to_be_bytes());
                p.extend_from_slice(&reason.as_bytes()[..end]);
                Bytes::from(p)
            }
        };
        self.controls += 1;
        self.push(OP_CLOSE, payload);
        self.closed = true;
    }

    /// Writes everything queued, then flushes. Ready once all is written, with what was
    /// written since the last time it was ready. Cancel-safe: progress lives in `self`.
    pub fn poll_drain<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<io::Result<Drained>> {
        if writer.is_write_vectored() {
            ready!(self.poll_write_vectored(cx, writer))?;
        } else {
            ready!(self.poll_write_flat(cx, writer))?;
        }
        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
        self.frames.clear();
        self.next = 0;
        self.offset = 0;
        self.flat.clear();
        self.flat_pos = 0;
        self.controls = 0;
        Poll::Ready(Ok(std::mem::take(&mut self.pending)))
    }

    fn poll_write_vectored<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<io::Result<()>> {
        while self.next < self.frames.len() {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut n_slices = 0;
            let mut offset = self.offset;
            for frame in &self.frames[self.next..] {
                if n_slices + 2 > MAX_IOV {
                    break;
                }
                let (head, payload) = frame.slices(offset);
                offset = 0;
                for part in [head, payload] {
                    if !part.is_empty() {
                        slices[n_slices] = IoSlice::new(part);
                        n_slices += 1;
                    }
                }
            }
            let written =
                ready!(Pin::new(&mut *writer).poll_write_vectored(cx, &slices[..n_slices]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
        }
        Poll::Ready(Ok(()))
    }

    /// Marks `n` more bytes as written.
    fn advance(&mut self, mut n: usize) {
        self.written += n as u64;
        while n > 0 {
            let rest = self.frames[self.next].len() - self.offset;
            if n >= rest {
                n -= rest;
                self.next += 1;
                self.offset = 0;
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }

    fn poll_write_flat<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<io::Result<()>> {
        // Frames queued since the last call go to the end of the flat buffer, in order.
        for frame in &self.frames[self.next..] {
            let (head, payload) = frame.slices(0);
            self.flat.extend_from_slice(head);
            self.flat.extend_from_slice(payload);
        }
        self.next = self.frames.len();
        while self.flat_pos < self.flat.len() {
            let written =
                ready!(Pin::new(&mut *writer).poll_write(cx, &self.flat[self.flat_pos..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.flat_pos += written;
            self.written += written as u64;
        }
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------------------------
// Read side
// ---------------------------------------------------------------------------------------------

/// A complete client frame, as far as this server cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A ping; the answer is a pong with this payload.
    Ping(Bytes),
    /// A pong, with its payload.
    Pong(Bytes),
    /// A close frame: its status code, if it had one (the reason is checked, not kept).
    Close(Option<u16>),
    /// A complete text or binary message. Clients send no commands: it is read and dropped.
    Message,
}

/// What the client did wrong, and the close code that answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// 1002, 1007 or 1009.
    pub code: u16,
    /// Close reason, for the client and the logs.
    pub reason: &'static str,
}

const fn protocol(reason: &'static str) -> Violation {
    Violation {
        code: close_code::PROTOCOL_ERROR,
        reason,
    }
}

/// Parses client frames out of a read buffer.
#[derive(Debug)]
pub struct Parser {
    max_message: usize,
    /// The message being received in fragments, if any.
    fragment: Option<Fragment>,
}

/// What [`Parser::step`] found.
enum Step {
    NeedMore,
    Frame(Inbound),
    Fragment,
}

#[derive(Debug)]
struct Fragment {
    text: bool,
    len: usize,
    /// The text so far, checked as UTF-8 once complete (at most `max_message` bytes).
    bytes: Vec<u8>,
}

impl Parser {
    /// A parser that refuses messages over `max_message` bytes (1009).
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            fragment: None,
        }
    }

    /// The next complete frame in `buf` (consumed from it), `Ok(None)` if `buf` does not
    /// hold a complete frame yet, or the violation that must close the connection.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Inbound>, Violation> {
        loop {
            match self.step(buf)? {
                Step::NeedMore => return Ok(None),
                Step::Frame(frame) => return Ok(Some(frame)),
                Step::Fragment => {} // a message fragment was consumed: look further
            }
        }
    }

    /// Consumes at most one frame from `buf`.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Violation> {
        if buf.len() < 2 {
            return Ok(Step::NeedMore);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        if b0 & 0x70 != 0 {
            return Err(protocol("reserved bits set"));
        }
        if !matches!(
            opcode,
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
        ) {
            return Err(protocol("unknown opcode"));
        }
        if b1 & 0x80 == 0 {
            return Err(protocol("client frames must be masked"));
        }
        let control = opcode >= OP_CLOSE;
        let len7 = usize::from(b1 & 0x7F);
        if control && !fin {
            return Err(protocol("fragmented control frame"));
        }
        if control && len7 > MAX_CONTROL_PAYLOAD {
            return Err(protocol("control frame payload over 125 bytes"));
        }
        let (len, len_bytes) = match len7 {
            126 => {
                let Some(b) = buf.get(2..4) else {
                    return Ok(Step::NeedMore);
                };
                (u64::from(u16::from_be_bytes([b[0], b[1]])), 2)
            }
            127 => {
                let Some(b) = buf.get(2..10) else {
                    return Ok(Step::NeedMore);
                };
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(protocol("payload length with the most significant bit set"));
                }
                (len, 8)
            }
            n => (n as u64, 0),
        };
        if !control {
            let so_far = self.fragment.as_ref().map_or(0, |f| f.len) as u64;
            if so_far + len > self.max_message as u64 {
                return Err(Violation {
                    code: close_code::MESSAGE_TOO_BIG,
                    reason: "message too big",
                });
            }
        }
        // `len` fits in usize now: control frames are <= 125 bytes, others <= max_message.
        let len = len as usize;
        let head_len = 2 + len_bytes + 4;
        if buf.len() < head_len + len {
            buf.reserve(head_len + len - buf.len());
            return Ok(Step::NeedMore);
        }
        buf.advance(2 + len_bytes);
        let mask = [buf[0], buf[1], buf[2], buf[3]];
        buf.advance(4);
        let mut payload = buf.split_to(len);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }

        match opcode {
            OP_PING => Ok(Step::Frame(Inbound::Ping(payload.freeze()))),
            OP_PONG => Ok(Step::Frame(Inbound::Pong(payload.freeze()))),
            OP_CLOSE => parse_close(&payload).map(|code| Step::Frame(Inbound::Close(code))),
            OP_CONTINUATION => {
                let Some(fragment) = self.fragment.as_mut() else {
                    return Err(protocol("continuation frame without a message to continue"));
                };
                fragment.len += len;
                if fragment.text {
                    fragment.bytes.extend_from_slice(&payload);
                }
                if !fin {
                    return Ok(Step::Fragment);
                }
                let done = self.fragment.take().expect("checked above");
                if done.text && std::str::from_utf8(&done.bytes).is_err() {
                    return Err(invalid_utf8());
                }
                Ok(Step::Frame(Inbound::Message))
            }
            _ => {
                // OP_TEXT | OP_BINARY
                if self.fragment.is_some() {
                    return Err(protocol("new message before the fragmented one ended"));
                }
                let text = opcode == OP_TEXT;
                if fin {
                    if text && std::str::from_utf8(&payload).is_err() {
                        return Err(invalid_utf8());
                    }
                    return Ok(Step::Frame(Inbound::Message));
                }
                self.fragment = Some(Fragment {
                    text,
                    len,
                    bytes: if text { payload.to_vec() } else { Vec::new() },
                });
                Ok(Step::Fragment)
            }
        }
    }
}

const fn invalid_utf8() -> Violation {
    Violation {
        code: close_code::INVALID_PAYLOAD,
        reason: "text message is not valid UTF-8",
    }
}

/// Checks a close frame's payload: empty, or a valid code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(protocol("close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // RFC 6455 7.4: 1004-1006 and 1015 are reserved, never sent; 1000-2999 beyond
            // the registered codes (1012-1014 registered later with IANA) are reserved;
            // 3000-4999 are for libraries and applications.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(invalid_utf8());
            }
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: FIN as given, masked with a fixed key.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    fn parse_all(parser: &mut Parser, bytes: &[u8]) -> Result<Vec<Inbound>, Violation> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(frame) = parser.next(&mut buf)? {
            out.push(frame);
        }
        assert!(buf.is_empty(), "{} bytes left unparsed", buf.len());
        Ok(out)
    }

    #[test]
    fn parses_control_frames_and_messages() {
        let mut bytes = client_frame(true, OP_PING, b"hi");
        bytes.extend(client_frame(true, OP_PONG, b"yo"));
        bytes.extend(client_frame(true, OP_TEXT, "héllo".as_bytes()));
        bytes.extend(client_frame(true, OP_BINARY, &[0xff; 300]));
        bytes.extend(client_frame(true, OP_CLOSE, &[0x03, 0xe8, b'o', b'k']));
        bytes.extend(client_frame(true, OP_CLOSE, &[]));
        let frames = parse_all(&mut Parser::new(4096), &bytes).unwrap();
        assert_eq!(
            frames,
            vec![
                Inbound::Ping(Bytes::from_static(b"hi")),
                Inbound::Pong(Bytes::from_static(b"yo")),
                Inbound::Message,
                Inbound::Message,
                Inbound::Close(Some(1000)),
                Inbound::Close(None),
            ]
        );
    }

    #[test]
    fn byte_by_byte_input_gives_the_same_frames() {
        let mut bytes = client_frame(false, OP_TEXT, b"ab");
        bytes.extend(client_frame(true, OP_PING, b"p"));
        bytes.extend(client_frame(true, OP_CONTINUATION, b"cd"));
        let mut parser = Parser::new(4096);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in bytes {
            buf.extend_from_slice(&[b]);
            while let Some(frame) = parser.next(&mut buf).unwrap() {
                frames.push(frame);
            }
        }
        // A control frame may come between fragments (RFC 6455 5.4).
        assert_eq!(
            frames,
            vec![Inbound::Ping(Bytes::from_static(b"p")), Inbound::Message]
        );
    }

    #[test]
    fn size_limit_counts_every_fragment() {
        let mut parser = Parser::new(10);
        assert_eq!(
            parse_all(&mut parser, &client_frame(true, OP_TEXT, &[b'a'; 10])),
            Ok(vec![Inbound::Message])
        );
        let err = parse_all(&mut parser, &client_frame(true, OP_TEXT, &[b'a'; 11])).unwrap_err();
        assert_eq!(err.code, close_code::MESSAGE_TOO_BIG);
        let mut parser = Parser::new(10);
        let mut bytes = client_frame(false, OP_BINARY, &[0; 6]);
        bytes.extend(client_frame(true, OP_CONTINUATION, &[0; 5]));
        assert_eq!(
            parse_all(&mut parser, &bytes).unwrap_err().code,
            close_code::MESSAGE_TOO_BIG
        );
        // Refused from the header alone, before the payload arrives.
        let mut parser = Parser::new(4096);
        let header = &client_frame(true, OP_TEXT, &[b'a'; 70_000])[..14];
        assert_eq!(
            parser.next(&mut BytesMut::from(header)).unwrap_err().code,
            close_code::MESSAGE_TOO_BIG
        );
    }

    #[test]
    fn invalid_utf8_is_1007_even_across_fragments() {
        let mut parser = Parser::new(4096);
        assert_eq!(
            parse_all(&mut parser, &client_frame(true, OP_TEXT, &[0xc3, 0x28])).unwrap_err(),
            invalid_utf8()
        );
        // "é" split across two fragments is valid...
        let mut bytes = client_frame(false, OP_TEXT, &[0xc3]);
        bytes.extend(client_frame(true, OP_CONTINUATION, &[0xa9]));
        assert_eq!(
            parse_all(&mut Parser::new(4096), &bytes),
            Ok(vec![Inbound::Message])
        );
        // ...a lone lead byte is not.
        let mut bytes = client_frame(false, OP_TEXT, b"a");
        bytes.extend(client_frame(true, OP_CONTINUATION, &[0xc3]));
        assert_eq!(
            parse_all(&mut Parser::new(4096), &bytes).unwrap_err(),
            invalid_utf8()
        );
        // Close reason too.
        assert_eq!(
            parse_all(
                &mut Parser::new(4096),
                &client_frame(true, OP_CLOSE, &[0x03, 0xe8, 0xff])
            )
            .unwrap_err(),
            invalid_utf8()
        );
    }

    #[test]
    fn protocol_errors_are_1002() {
        let unmasked = [0x81, 0x01, b'a'];
        let mut rsv = client_frame(true, OP_TEXT, b"a");
        rsv[0] |= 0x40;
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", unmasked.to_vec()),
            ("reserved bit", rsv),
            ("opcode 3", client_frame(true, 0x3, b"")),
            ("opcode 0xB", client_frame(true, 0xB, b"")),
            ("fragmented ping", client_frame(false, OP_PING, b"")),
            ("long ping", client_frame(true, OP_PING, &[0; 126])),
            (
                "orphan continuation",
                client_frame(true, OP_CONTINUATION, b"a"),
            ),
            ("close with 1 byte", client_frame(true, OP_CLOSE, &[3])),
            (
                "close code 1005",
                client_frame(true, OP_CLOSE, &1005u16.to_be_bytes()),
            ),
            (
                "close code 999",
                client_frame(true, OP_CLOSE, &999u16.to_be_bytes()),
            ),
            (
                "close code 5000",
                client_frame(true, OP_CLOSE, &5000u16.to_be_bytes()),
            ),
        ];
        let mut interleaved = client_frame(false, OP_TEXT, b"a");
        interleaved.extend(client_frame(true, OP_TEXT, b"b"));
        cases.push(("new message mid-fragment", interleaved));
        for (name, bytes) in cases {
            let err = parse_all(&mut Parser::new(4096), &bytes).unwrap_err();
            assert_eq!(err.code, close_code::PROTOCOL_ERROR, "{name}");
        }
    }

    /// A writer that takes at most `chunk` bytes per call and reports vectored support as
    /// configured.
    struct Trickle {
        out: Vec<u8>,
        chunk: usize,
        vectored: bool,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            let n = buf.len().min(self.chunk);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            let mut left = self.chunk;
            for b in bufs {
                let n = b.len().min(left);
                self.out.extend_from_slice(&b[..n]);
                left -= n;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(self.chunk - left))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn expected_bytes(payloads: &[Bytes]) -> Vec<u8> {
        let mut v = Vec::new();
        for p in payloads {
            v.push(0x81);
            match p.len() {
                n if n < 126 => v.push(n as u8),
                n if n <= 0xFFFF => {
                    v.push(126);
                    v.extend_from_slice(&(n as u16).to_be_bytes());
                }
                n => {
                    v.push(127);
                    v.extend_from_slice(&(n as u64).to_be_bytes());
                }
            }
            v.extend_from_slice(p);
        }
        v
    }

    #[test]
    fn outbox_writes_every_frame_whatever_the_write_sizes() {
        let payloads: Vec<Bytes> = [5usize, 125, 126, 300, 65_535, 65_536, 0]
            .iter()
            .map(|&n| Bytes::from(vec![b'x'; n]))
            .collect();
        let total = expected_bytes(&payloads);
        for vectored in [true, false] {
            for chunk in [1usize, 7, 4096, usize::MAX] {
                let mut outbox = Outbox::new();
                for p in &payloads {
                    outbox.push_event(p.clone());
                }
                let mut w = Trickle {
                    out: Vec::new(),
                    chunk,
                    vectored,
                    calls: 0,
                };
                let waker = std::task::Waker::noop();
                let mut cx = Context::from_waker(waker);
                let Poll::Ready(Ok(d)) = outbox.poll_drain(&mut cx, &mut w) else {
                    panic!("drain did not finish");
                };
                assert_eq!(d.events, payloads.len() as u64);
                assert_eq!(d.bytes, total.len() as u64);
                assert!(w.out == total, "vectored {vectored}, chunk {chunk}");
                assert!(outbox.is_empty());
                if chunk == usize::MAX {
                    assert_eq!(w.calls, 1, "one write for the whole batch");
                }
            }
        }
    }

    #[test]
    fn nothing_follows_a_close_frame() {
        let mut outbox = Outbox::new();
        outbox.push_notice(Bytes::from_static(b"{}"));
        outbox.push_close(Some(1001), "bye");
        outbox.push_event(Bytes::from_static(b"late"));
        outbox.push_pong(Bytes::new());
        let mut w = Trickle {
            out: Vec::new(),
            chunk: usize::MAX,
            vectored: true,
            calls: 0,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Ok(d)) = outbox.poll_drain(&mut cx, &mut w) else {
            panic!("drain did not finish");
        };
        assert_eq!(d.events, 0);
        assert_eq!(
            w.out,
            [
                &[0x81, 2, b'{', b'}'][..],
                &[0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']
            ]
            .concat()
        );
    }

    #[test]
    fn close_reason_is_cut_at_a_char_boundary() {
        let mut outbox = Outbox::new();
        outbox.push_close(Some(1008), &"é".repeat(100));
        let payload = &outbox.frames[0].payload;
        assert_eq!(payload.len(), 2 + 122);
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }

    mod properties {
        //! The parser is a streaming one: however the bytes are cut into reads, it must
        //! find the same frames and the same violation, and never panic; and what a client
        //! sends (messages in fragments, control frames between them) is what it finds.

        use proptest::prelude::*;

        use super::*;

        /// Frames found, and the violation that stopped the parser, feeding `bytes` in
        /// reads of the given sizes (the rest at once when they run out).
        fn outcome(max: usize, bytes: &[u8], reads: &[usize]) -> (Vec<Inbound>, Option<Violation>) {
            let mut parser = Parser::new(max);
            let mut buf = BytesMut::new();
            let (mut frames, mut rest, mut reads) = (Vec::new(), bytes, reads.iter());
            loop {
                loop {
                    match parser.next(&mut buf) {
                        Ok(Some(frame)) => frames.push(frame),
                        Ok(None) => break,
                        Err(violation) => return (frames, Some(violation)),
                    }
                }
                if rest.is_empty() {
                    return (frames, None);
                }
                let n = reads.next().map_or(rest.len(), |&n| n.clamp(1, rest.len()));
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
        }

        /// A client frame with random header bits, most of them valid.
        fn any_frame() -> impl Strategy<Value = Vec<u8>> {
            (
                0u8..=255,
                prop::sample::select(vec![0u8, 1, 2, 8, 9, 10, 3, 11]),
                prop::bool::weighted(0.95),
                proptest::collection::vec(any::<u8>(), 0..300),
            )
                .prop_map(|(bits, opcode, masked, payload)| {
                    let mut f = client_frame(bits & 0x80 != 0, opcode, &payload);
                    if bits & 0x07 == 0 {
                        f[0] |= bits & 0x70; // reserved bits, now and then
                    }
                    if !masked {
                        f[1] &= 0x7F;
                    }
                    f
                })
        }

        /// One message: its fragments' payloads, and control frames (ping or pong, with
        /// their payloads) sent after each fragment but the last.
        #[derive(Debug, Clone)]
        struct Message {
            text: bool,
            fragments: Vec<Vec<u8>>,
            controls: Vec<Vec<(bool, Vec<u8>)>>,
        }

        fn message() -> impl Strategy<Value = Message> {
            let payload = prop_oneof![
                "[ -~é€😀]{0,60}".prop_map(|s| (true, s.into_bytes())),
                proptest::collection::vec(any::<u8>(), 0..200).prop_map(|b| (false, b)),
            ];
            (
                payload,
                proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
            )
                .prop_flat_map(|((text, bytes), cuts)| {
                    // Cut anywhere, even inside a UTF-8 sequence: only the whole message
                    // must be UTF-8.
                    let mut at: Vec<usize> =
                        cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
                    at.sort_unstable();
                    let mut fragments = Vec::new();
                    let mut from = 0;
                    for cut in at.into_iter().chain([bytes.len()]) {
                        fragments.push(bytes[from..cut].to_vec());
                        from = cut;
                    }
                    let n = fragments.len();
                    let control = (
                        any::<bool>(),
                        proptest::collection::vec(any::<u8>(), 0..=125),
                    );
                    (
                        Just(text),
                        Just(fragments),
                        proptest::collection::vec(proptest::collection::vec(control, 0..3), n - 1),
                    )
                })
                .prop_map(|(text, fragments, mut controls)| {
                    controls.push(Vec::new());
                    Message {
                        text,
                        fragments,
                        controls,
                    }
                })
        }

        proptest! {
            #[test]
            fn any_bytes_however_read_give_the_same_outcome(
                bytes in prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..1024),
                    proptest::collection::vec(any_frame(), 0..8).prop_map(|f| f.concat()),
                ],
                reads in proptest::collection::vec(1usize..64, 0..64),
                max in prop::sample::select(vec![0usize, 16, 4096]),
            ) {
                prop_assert_eq!(outcome(max, &bytes, &reads), outcome(max, &bytes, &[]));
            }

            #[test]
            fn what_a_client_sends_is_what_is_parsed(
                messages in proptest::collection::vec(message(), 0..6),
                close in proptest::option::of((
                    prop::sample::select(vec![1000u16, 1001, 1003, 1011, 3000, 4999]),
                    "[ -~é]{0,40}",
                )),
                reads in proptest::collection::vec(1usize..40, 0..200),
            ) {
                let (mut bytes, mut expected) = (Vec::new(), Vec::new());
                for m in &messages {
                    let n = m.fragments.len();
                    for (i, (fragment, controls)) in m.fragments.iter().zip(&m.controls).enumerate() {
                        let opcode = match (i, m.text) {
                            (0, true) => OP_TEXT,
                            (0, false) => OP_BINARY,
                            _ => OP_CONTINUATION,
                        };
                        bytes.extend(client_frame(i + 1 == n, opcode, fragment));
                        for (ping, payload) in controls {
                            let payload = Bytes::from(payload.clone());
                            if *ping {
                                bytes.extend(client_frame(true, OP_PING, &payload));
                                expected.push(Inbound::Ping(payload));
                            } else {
                                bytes.extend(client_frame(true, OP_PONG, &payload));
                                expected.push(Inbound::Pong(payload));
                            }
                        }
                    }
                    expected.push(Inbound::Message);
                }
                if let Some((code, reason)) = close {
                    let mut payload = code.to_be_bytes().to_vec();
                    payload.extend(reason.as_bytes().iter().take(123));
                    if std::str::from_utf8(&payload[2..]).is_ok() {
                        bytes.extend(client_frame(true, OP_CLOSE, &payload));
                        expected.push(Inbound::Close(Some(code)));
                    }
                }
                prop_assert_eq!(outcome(1 << 20, &bytes, &reads), (expected, None));
            }
        }
    }
}

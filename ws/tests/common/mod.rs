//! Helpers shared by the server tests: a server on 127.0.0.1, a node's events, a raw HTTP
//! client, and a small WebSocket client written against RFC 6455 directly so that tests can
//! send exactly the frames they mean (masked or not, valid or not) and see exactly what the
//! server sends.
#![allow(dead_code)] // each test binary uses a different part

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use herald_core::bus::{Bus, BusConfig};
use herald_core::event::{BlockInfo, Event, ServerMessage, decode};
use herald_ws::{ServerConfig, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The RFC 6455 section 1.3 example key and the accept value it must produce.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Longest any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Fails the test if `fut` takes longer than [`DEADLINE`].
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {DEADLINE:?}: {what}"),
    }
}

/// Polls `cond` every few milliseconds until it holds; fails the test after [`DEADLINE`].
pub async fn wait_until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

pub fn hash(n: u64) -> String {
    format!("{n:064x}")
}

pub fn block(n: u64) -> BlockInfo {
    BlockInfo {
        block_hash: hash(n),
        block_number: n,
        timestamp: 1_700_000_000_000 + n,
        parent_hashes: vec![hash(n.wrapping_sub(1))],
        justification_hashes: vec![(hash(1000), hash(n))],
        deploys: vec![],
        creator: hash(1000),
        seq_num: n,
    }
}

/// A validator's startup: node-started, approved-block-received, entered-running-state.
pub fn startup_events() -> Vec<Event> {
    vec![
        Event::NodeStarted {
            address: "rnode://ab@127.0.0.1?protocol=40400&discovery=40404".into(),
        },
        Event::ApprovedBlockReceived {
            block_hash: hash(0),
        },
        Event::EnteredRunningState {
            block_hash: hash(0),
        },
    ]
}

/// The `i`-th live event: created, added, finalised of block `i / 3`, in turn.
pub fn live_event(i: u64) -> Event {
    let b = block(i / 3 + 1);
    match i % 3 {
        0 => Event::BlockCreated(b),
        1 => Event::BlockAdded(b),
        _ => Event::BlockFinalised(b),
    }
}

/// A bus that has published [`startup_events`] and sealed the startup segment.
pub fn node(capacity: usize) -> Bus {
    let bus = Bus::new(BusConfig {
        capacity,
        startup_capacity: 64,
    });
    for e in startup_events() {
        bus.publish(e);
    }
    assert_eq!(bus.seal_startup(), 3);
    bus
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// `serve` on 127.0.0.1, port 0, in its own task.
pub struct TestServer {
    pub addr: SocketAddr,
    pub bus: Bus,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(bus: Bus, config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(listener, bus.tap(), config, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            bus,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Publishes `events` in order on this thread.
    pub fn publish_all(&self, events: &[Event]) {
        for e in events {
            self.bus.publish(e.clone());
        }
    }

    /// Signals shutdown; returns the time `serve` took to return (it must return `Ok`).
    pub async fn stop(&mut self) -> Duration {
        let started = Instant::now();
        let _ = self.shutdown.take().expect("stopped twice").send(());
        let handle = self.handle.take().unwrap();
        within("serve returning after shutdown", handle)
            .await
            .unwrap()
            .unwrap();
        started.elapsed()
    }

    /// One sample of `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let answer = http(self.addr, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert_eq!(answer.status, 200);
        sample(&answer.body, name)
    }

    pub async fn wait_metric(&self, name: &str, value: u64) {
        let mut last = 0;
        let what = format!("{name} == {value}");
        wait_until(&what, async || {
            last = self.metric(name).await;
            last == value
        })
        .await;
    }

    pub async fn wait_subscribers(&self, n: usize) {
        wait_until(&format!("{n} bus subscribers"), async || {
            self.bus.stats().subscribers == n
        })
        .await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

/// The value of the unlabelled sample `name` in a Prometheus text exposition.
pub fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The status line and headers of an HTTP answer head (through its blank line); the body
/// is left empty. Panics on anything else.
fn parse_head(head: &str) -> HttpAnswer {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(
        status_line.starts_with("HTTP/1."),
        "bad status line {status_line:?}"
    );
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    HttpAnswer {
        status,
        headers,
        body: String::new(),
    }
}

impl HttpAnswer {
    /// Body length by `Content-Length` (0 without one, or for an answer to `HEAD`).
    fn body_len(&self, with_body: bool) -> usize {
        match with_body {
            true => self
                .header("content-length")
                .map_or(0, |v| v.parse().unwrap()),
            false => 0,
        }
    }
}

/// Reads one HTTP answer head and body (by `Content-Length`) from `stream`; bytes after it
/// stay in `buf`.
pub async fn read_answer(stream: &mut TcpStream, buf: &mut BytesMut) -> HttpAnswer {
    read_answer_to(stream, buf, true).await
}

/// As `read_answer`; `with_body: false` for answers to HEAD, which have none.
pub async fn read_answer_to(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    with_body: bool,
) -> HttpAnswer {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = within("HTTP answer", stream.read_buf(buf)).await.unwrap();
        assert!(n > 0, "connection closed before a complete HTTP answer");
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    buf.advance(head_end);
    let mut answer = parse_head(&head);
    let len = answer.body_len(with_body);
    while buf.len() < len {
        let n = within("HTTP body", stream.read_buf(buf)).await.unwrap();
        assert!(n > 0, "connection closed inside an HTTP body");
    }
    answer.body = String::from_utf8(buf.split_to(len).to_vec()).unwrap();
    answer
}

/// Sends `request` (raw bytes, head included) on a new connection and reads the answer.
pub async fn http(addr: SocketAddr, request: &str) -> HttpAnswer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let with_body = !request.starts_with("HEAD ");
    read_answer_to(&mut stream, &mut BytesMut::new(), with_body).await
}

/// A WebSocket upgrade request for `target` with the RFC example key.
pub fn upgrade_request(target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
    )
}

// ---------------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------------

/// One server frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn text(&self) -> &str {
        assert_eq!(self.opcode, OP_TEXT, "expected a text frame, got {self:?}");
        std::str::from_utf8(&self.payload).unwrap()
    }

    /// `(code, reason)` of a close frame.
    pub fn close(&self) -> (u16, String) {
        assert_eq!(
            self.opcode, OP_CLOSE,
            "expected a close frame, got {self:?}"
        );
        assert!(self.payload.len() >= 2, "close frame without a code");
        (
            u16::from_be_bytes([self.payload[0], self.payload[1]]),
            String::from_utf8(self.payload[2..].to_vec()).unwrap(),
        )
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    /// Connects to `target` (path and query) and completes the upgrade; panics unless 101.
    pub async fn connect(addr: SocketAddr, target: &str) -> Client {
        match Self::try_connect(addr, target, None).await {
            Ok(client) => client,
            Err(answer) => panic!("upgrade to {target} refused: {answer:?}"),
        }
    }

    /// As `connect`, with a small socket receive buffer (a client that reads slowly fills
    /// the pipe sooner).
    pub async fn connect_small_buffer(addr: SocketAddr, target: &str) -> Client {
        match Self::try_connect(addr, target, Some(4096)).await {
            Ok(client) => client,
            Err(answer) => panic!("upgrade to {target} refused: {answer:?}"),
        }
    }

    /// The upgrade, or the refusal.
    pub async fn try_connect(
        addr: SocketAddr,
        target: &str,
        recv_buffer: Option<u32>,
    ) -> Result<Client, HttpAnswer> {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let mut stream = socket.connect(addr).await.unwrap();
        stream
            .write_all(upgrade_request(target).as_bytes())
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let answer = read_answer(&mut stream, &mut buf).await;
        if answer.status != 101 {
            return Err(answer);
        }
        assert_eq!(answer.header("sec-websocket-accept"), Some(ACCEPT));
        assert!(
            answer
                .header("upgrade")
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        );
        assert!(
            answer
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("upgrade"))
        );
        Ok(Client { stream, buf })
    }

    /// A client on a stream whose upgrade was already read; `buf` holds what followed it.
    pub fn from_parts(stream: TcpStream, buf: BytesMut) -> Client {
        Client { stream, buf }
    }

    /// Reads whatever is still in flight until the server ends the connection (EOF or a
    /// reset); returns how many bytes that was. Fails the test if it never ends.
    pub async fn read_until_dropped(&mut self) -> usize {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        loop {
            match within("the connection ending", self.stream.read(&mut buf)).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
            assert!(total < 64 << 20, "the connection never ended");
        }
    }

    /// The next frame; fails the test after [`DEADLINE`] or if the connection ends.
    pub async fn frame(&mut self) -> Frame {
        match within("a frame", self.try_frame()).await {
            Some(frame) => frame,
            None => panic!("connection closed while a frame was expected"),
        }
    }

    /// The next frame, or `None` at a clean EOF (or a reset) between frames.
    pub async fn try_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.parse() {
                return Some(frame);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => {
                    assert!(self.buf.is_empty(), "connection ended inside a frame");
                    return None;
                }
                Ok(_) => {}
            }
        }
    }

    fn parse(&mut self) -> Option<Frame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[0] & 0x80, 0x80, "the server never fragments");
        assert_eq!(b[0] & 0x70, 0, "no reserved bits");
        assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
        let (len, head) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < head + len {
            return None;
        }
        let opcode = b[0] & 0x0F;
        self.buf.advance(head);
        let payload = self.buf.split_to(len).to_vec();
        Some(Frame { opcode, payload })
    }

    /// The next frame, which must be a text frame holding a valid server message.
    pub async fn message(&mut self) -> (ServerMessage, String) {
        let frame = self.frame().await;
        let text = frame.text().to_owned();
        let message = decode(&mut text.clone().into_bytes())
            .unwrap_or_else(|e| panic!("undecodable message {text}: {e}"));
        (message, text)
    }

    /// The next frame must be exactly `{"event":"started","schema-version":1}`.
    pub async fn expect_started(&mut self) {
        let frame = self.frame().await;
        assert_eq!(frame.text(), r#"{"event":"started","schema-version":1}"#);
    }

    /// The next frames must be exactly these events' encodings, in order.
    pub async fn expect_events(&mut self, events: &[Event]) {
        for (i, event) in events.iter().enumerate() {
            let frame = self.frame().await;
            assert_eq!(
                frame.text().as_bytes(),
                &event.encode()[..],
                "message {i} of {}",
                events.len()
            );
        }
    }

    /// Sends one masked frame.
    pub async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let bytes = masked_frame(fin, opcode, payload);
        self.stream.write_all(&bytes).await.unwrap();
    }

    /// Sends a close frame with `code` and `reason`.
    pub async fn send_close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.send(true, OP_CLOSE, &payload).await;
    }

    /// Skips text frames until a frame with `opcode` arrives (at most `limit` frames).
    pub async fn skip_to(&mut self, opcode: u8, limit: usize) -> Frame {
        for _ in 0..limit {
            let frame = self.frame().await;
            if frame.opcode == opcode {
                return frame;
            }
            assert_eq!(frame.opcode, OP_TEXT, "unexpected frame {frame:?}");
        }
        panic!("no frame with opcode {opcode:#x} in {limit} frames");
    }

    /// Reads text frames until the server ends the connection (at most 10,000).
    pub async fn drain_to_end(&mut self) {
        for _ in 0..10_000 {
            match within("the server closing the connection", self.try_frame()).await {
                None => return,
                Some(frame) => assert_eq!(frame.opcode, OP_TEXT, "unexpected {frame:?}"),
            }
        }
        panic!("the connection did not end");
    }

    /// The server must end the connection (EOF or reset) with no further frame.
    pub async fn expect_end(&mut self) {
        let next = within("the server closing the connection", self.try_frame()).await;
        assert_eq!(next, None, "expected the connection to end");
    }
}

/// A masked client frame.
pub fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
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

// ---------------------------------------------------------------------------------------------
// Abuse and fuzz helpers
// ---------------------------------------------------------------------------------------------

static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// From now on, counts the panics on tokio's worker threads, where the server's tasks run:
/// tokio catches a task's panic, so without this a panicking connection would only look
/// like a closed one. (Tasks a test spawns run there too; the test threads themselves,
/// whose panics are test failures anyway, are not counted.)
pub fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("tokio-"))
            {
                // Relaxed: a counter read by `panics`; nothing is published through it.
                PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            previous(info);
        }));
    });
}

/// Panics on tokio worker threads since [`count_panics`] was first called.
pub fn panics() -> usize {
    // Relaxed: pairs with the Relaxed increment in the hook; the test reads it after the
    // server's tasks it cares about have ended (joined through the server's teardown).
    PANICS.load(std::sync::atomic::Ordering::Relaxed)
}

/// `HERALD_SOAK=N` multiplies the counts and durations of the abuse tests by `N` (default 1,
/// the CI run). Panics with a clear message on a value that is not a positive integer.
pub fn soak() -> u64 {
    match std::env::var("HERALD_SOAK") {
        Err(_) => 1,
        Ok(v) => match v.parse::<u64>() {
            Ok(n) if n >= 1 => n,
            _ => panic!("HERALD_SOAK must be a positive integer, got {v:?}"),
        },
    }
}

/// Resident set size of this process, in KiB (`VmRSS` of `/proc/self/status`).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// The soft limit on open files of this process (`/proc/self/limits`).
pub fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files in /proc/self/limits");
    let soft = line["Max open files".len()..]
        .split_whitespace()
        .next()
        .unwrap();
    soft.parse().unwrap_or(u64::MAX) // "unlimited"
}

/// Fails the test unless this process may open `needed` more files.
pub fn need_open_files(needed: u64) {
    let limit = open_files_limit();
    assert!(
        limit >= needed + 64,
        "this test needs about {needed} open files; the limit is {limit}: raise it (ulimit -n)"
    );
}

/// Live tasks of the current tokio runtime.
pub fn tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits until the current runtime has exactly `n` live tasks.
pub async fn wait_tasks(n: usize) {
    let mut last = 0;
    wait_until(&format!("{n} live tasks"), async || {
        last = tasks();
        last == n
    })
    .await;
}

/// Sends `request`, then (with `half_close`) shuts down the write side, and returns every
/// byte the server sent until it ended the connection (EOF or reset). Write errors are
/// ignored: a server may stop reading and reset a connection that sent too much.
pub async fn exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    if stream.write_all(request).await.is_ok() && half_close {
        let _ = stream.shutdown().await;
    }
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match within("the server ending the exchange", stream.read(&mut chunk)).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Parses one HTTP answer (head, and a body by `Content-Length`) at the start of `bytes`;
/// returns it and the number of bytes it took. Panics on anything else.
pub fn parse_answer(bytes: &[u8]) -> (HttpAnswer, usize) {
    parse_answer_to(bytes, true)
}

/// As [`parse_answer`]; `with_body: false` for an answer to `HEAD`, which has none.
pub fn parse_answer_to(bytes: &[u8], with_body: bool) -> (HttpAnswer, usize) {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(bytes)))
        + 4;
    let head = std::str::from_utf8(&bytes[..head_end]).unwrap();
    let mut answer = parse_head(head);
    let len = answer.body_len(with_body);
    let end = head_end + len;
    assert!(bytes.len() >= end, "HTTP body cut short");
    answer.body = String::from_utf8(bytes[head_end..end].to_vec()).unwrap();
    (answer, end)
}

/// Parses what a server sent as WebSocket frames; panics unless every frame is a
/// well-formed server frame (FIN set, no reserved bits, unmasked) and the bytes end on a
/// frame boundary.
pub fn parse_server_frames(bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut b = bytes;
    while !b.is_empty() {
        assert!(b.len() >= 2, "a cut frame header");
        assert_eq!(b[0] & 0x80, 0x80, "the server never fragments");
        assert_eq!(b[0] & 0x70, 0, "no reserved bits");
        assert_eq!(b[1] & 0x80, 0, "server frames are not masked");
        let (len, head) = match b[1] & 0x7F {
            126 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert!(b.len() >= head + len, "a cut frame");
        frames.push(Frame {
            opcode: b[0] & 0x0F,
            payload: b[head..head + len].to_vec(),
        });
        b = &b[head + len..];
    }
    frames
}

//! `herald tail`: a command-line client of `/ws/events`.
//!
//! [`run`] connects (HTTP/1.1 upgrade over TCP, RFC 6455 client: the server's
//! `Sec-WebSocket-Accept` must answer our key), asks for the extensions of SPEC section 4
//! that [`TailOptions`] names (`events=`, `seq=true`, `from=`), checks that the stream
//! starts with `started`, and then decodes every message with
//! [`herald_core::event::decode`], writing one readable line per event ([`event_line`],
//! [`lagged_line`]), the raw JSON with [`TailOptions::json`], or one statistics line a second
//! with [`TailOptions::stats`]. It returns after [`TailOptions::count`] events, or with a
//! [`TailError`] whose [`TailError::exit_code`] the binary exits with:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | `--count` events received |
//! | 1 | cannot write the output |
//! | 2 | usage: bad flag or URL |
//! | 3 | cannot connect (refused, unreachable, timed out) |
//! | 4 | the server refused the WebSocket upgrade (HTTP status and body printed), or answered it wrongly |
//! | 5 | protocol: the first message is not `started`, a message does not decode, a WebSocket error |
//! | 6 | the server closed the stream (close code printed) or the connection dropped |

use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Role, WebSocket, WebSocketError};
use herald_core::event::{DecodeError, Event, EventKind, ServerMessage, decode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// Where `herald tail` connects when given no URL.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:40403/ws/events";

/// How long connecting, the HTTP upgrade and the `started` message may each take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes of a refused upgrade's body that are read and shown.
const MAX_BODY: usize = 4096;

/// What [`run`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailOptions {
    /// `ws://host:port/path[?query]`.
    pub url: String,
    /// Only these event types (`?events=`); empty for all.
    pub events: Vec<EventKind>,
    /// Ask for each event's sequence number (`?seq=true`); readable lines then end with
    /// `seq=N`, the number to resume from with [`from`](Self::from) after `N`.
    pub seq: bool,
    /// Resume (`?from=N`): every still-retained event with sequence number `>= N` first,
    /// then live events; what is no longer retained is reported as one `lagged` notice.
    pub from: Option<u64>,
    /// Return after this many events (`started` and `lagged` not counted).
    pub count: Option<u64>,
    /// Write each message's JSON as received instead of a readable line.
    pub json: bool,
    /// Write one statistics line a second instead of a line per event.
    pub stats: bool,
}

impl Default for TailOptions {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.to_owned(),
            events: Vec::new(),
            seq: false,
            from: None,
            count: None,
            json: false,
            stats: false,
        }
    }
}

/// What a successful [`run`] received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TailSummary {
    /// Events received (not counting `started` and `lagged`).
    pub events: u64,
    /// `lagged` notices received.
    pub lagged_notices: u64,
    /// Sum of their `missed` counts.
    pub missed: u64,
}

/// Why [`run`] failed. Its `Display` is the one line the binary prints after
/// `herald tail: error: `.
#[derive(Debug)]
pub enum TailError {
    /// The URL cannot be used.
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TCP connection failed.
    Connect {
        /// `host:port`.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
    /// A step (connecting, the upgrade, the `started` message) took longer than
    /// [`STEP_TIMEOUT`].
    Timeout {
        /// Which step.
        step: &'static str,
        /// `host:port`.
        addr: String,
    },
    /// The HTTP exchange failed before a response arrived, or the response was not a valid
    /// upgrade.
    Handshake(String),
    /// The server answered the upgrade with another status.
    Refused {
        /// HTTP status code.
        status: u16,
        /// Its canonical reason phrase.
        reason: String,
        /// The response body (at most 4 KiB, lossily decoded).
        body: String,
    },
    /// The first message was not `started`.
    NotStarted(String),
    /// A message did not decode.
    Decode {
        /// The decoder's verdict.
        error: DecodeError,
        /// The start of the message.
        message: String,
    },
    /// A WebSocket-level error: bad frame, binary frame, second `started`.
    Protocol(String),
    /// The server closed the stream, or the connection dropped, before `count` events.
    Closed {
        /// The close code, if a close frame arrived.
        code: Option<u16>,
        /// The close reason, or what happened to the connection.
        reason: String,
        /// Events received before.
        events: u64,
    },
    /// Writing the output failed.
    Output(io::Error),
}

impl TailError {
    /// The process exit code for this error (see the module docs).
    #[must_use]
    pub fn exit_code(&self) -> i32 {
        match self {
            TailError::Output(_) => 1,
            TailError::InvalidUrl { .. } => 2,
            TailError::Connect { .. }
            | TailError::Timeout {
                step: "connect", ..
            } => 3,
            TailError::Timeout {
                step: "upgrade", ..
            }
            | TailError::Handshake(_)
            | TailError::Refused { .. } => 4,
            TailError::Timeout { .. }
            | TailError::NotStarted(_)
            | TailError::Decode { .. }
            | TailError::Protocol(_) => 5,
            TailError::Closed { .. } => 6,
        }
    }
}

impl fmt::Display for TailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TailError::InvalidUrl { url, reason } => write!(f, "invalid URL `{url}`: {reason}"),
            TailError::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            TailError::Timeout { step, addr } => write!(
                f,
                "{step} with {addr} timed out after {} s",
                STEP_TIMEOUT.as_secs()
            ),
            TailError::Handshake(reason) => write!(f, "WebSocket upgrade failed: {reason}"),
            TailError::Refused {
                status,
                reason,
                body,
            } => {
                write!(
                    f,
                    "server refused the WebSocket upgrade: HTTP {status} {reason}"
                )?;
                let body = body.trim();
                if !body.is_empty() {
                    write!(f, ": {}", one_line(body))?;
                }
                Ok(())
            }
            TailError::NotStarted(got) => {
                write!(f, "the stream did not start with `started`: {got}")
            }
            TailError::Decode { error, message } => {
                write!(f, "cannot decode a message ({error}): {message}")
            }
            TailError::Protocol(reason) => write!(f, "WebSocket protocol error: {reason}"),
            TailError::Closed {
                code,
                reason,
                events,
            } => {
                match code {
                    Some(code) => write!(
                        f,
                        "server closed the stream with code {code} ({})",
                        close_code_name(*code)
                    )?,
                    None => f.write_str("connection closed")?,
                }
                if !reason.is_empty() {
                    write!(f, ": {}", one_line(reason))?;
                }
                write!(f, " after {events} events")
            }
            TailError::Output(e) => write!(f, "cannot write output: {e}"),
        }
    }
}

impl std::error::Error for TailError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TailError::Connect { source, .. } | TailError::Output(source) => Some(source),
            TailError::Decode { error, .. } => Some(error),
            _ => None,
        }
    }
}

fn close_code_name(code: u16) -> &'static str {
    match code {
        1000 => "normal closure",
        1001 => "going away",
        1002 => "protocol error",
        1003 => "unsupported data",
        1007 => "invalid data",
        1008 => "policy violation",
        1009 => "message too big",
        1011 => "server error",
        _ => "unknown code",
    }
}

/// `s` on one line, at most 200 characters.
fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// A hash or key shortened for display: `9f2c01…ab34`.
#[must_use]
pub fn short(hash: &str) -> String {
    let chars: Vec<char> = hash.chars().collect();
    if chars.len() <= 12 {
        return hash.to_owned();
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// The readable line for the `n`th event received (1-based), without a newline:
/// `#12 block-added      number=5 hash=9f2c01…ab34 deploys=4 errored=1`.
#[must_use]
pub fn event_line(n: u64, event: &Event, seq: Option<u64>) -> String {
    let mut line = format!("#{n} {:<23}", event.kind().as_str());
    match event {
        Event::NodeStarted { address } => line.push_str(&format!(" address={address}")),
        Event::SentUnapprovedBlock { block_hash }
        | Event::SentApprovedBlock { block_hash }
        | Event::ApprovedBlockReceived { block_hash }
        | Event::EnteredRunningState { block_hash } => {
            line.push_str(&format!(" hash={}", short(block_hash)));
        }
        Event::BlockApprovalReceived { block_hash, sender } => line.push_str(&format!(
            " hash={} sender={}",
            short(block_hash),
            short(sender)
        )),
        Event::BlockCreated(b) | Event::BlockAdded(b) | Event::BlockFinalised(b) => {
            line.push_str(&format!(
                " number={} hash={} deploys={}",
                b.block_number,
                short(&b.block_hash),
                b.deploys.len()
            ));
            let errored = b.deploys.iter().filter(|d| d.errored).count();
            if errored > 0 {
                line.push_str(&format!(" errored={errored}"));
            }
            line.push_str(&format!(" creator={}", short(&b.creator)));
        }
        Event::TransfersAvailable(t) => {
            let transfers: usize = t.deploys.iter().map(|d| d.transfers.len()).sum();
            line.push_str(&format!(
                " number={} hash={} deploys={} transfers={transfers}",
                t.block_number,
                short(&t.block_hash),
                t.deploys.len()
            ));
        }
    }
    if let Some(seq) = seq {
        line.push_str(&format!(" seq={seq}"));
    }
    line
}

/// The readable line for a `lagged` notice: `lagged missed=3 resume=40`.
#[must_use]
pub fn lagged_line(missed: u64, resume_seq: u64) -> String {
    format!("lagged missed={missed} resume={resume_seq}")
}

/// The statistics line: `stats: 1234 events/s, 5678 events, 2 lagged notices, 120 missed`.
#[must_use]
pub fn stats_line(per_second: f64, summary: &TailSummary) -> String {
    format!(
        "stats: {per_second:.0} events/s, {} events, {} lagged notices, {} missed",
        summary.events, summary.lagged_notices, summary.missed
    )
}

/// Where to connect, from a `ws://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, for the TCP connection and the `Host` header.
    pub addr: String,
    /// Path and query of the request, `events=` included.
    pub path_and_query: String,
}

/// Parses `opts.url` (scheme `ws`, port 80 when absent) and appends the query parameters
/// `opts` asks for: `events=` when it names any type, `seq=true`, `from=N`.
///
/// # Errors
///
/// [`TailError::InvalidUrl`] for another scheme, no host, a URL that does not parse, or a
/// URL whose query already has a parameter that an option would add (the server refuses a
/// parameter given twice).
pub fn target(opts: &TailOptions) -> Result<Target, TailError> {
    let url = opts.url.as_str();
    let invalid = |reason: &str| TailError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: hyper::Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| {
        invalid(&format!("{e}; expected ws://HOST:PORT/ws/events"))
    })?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => return Err(invalid("wss:// (TLS) is not supported; use ws://")),
        Some(other) => return Err(invalid(&format!("scheme `{other}` is not ws://"))),
        None => return Err(invalid("no scheme; expected ws://HOST:PORT/ws/events")),
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid("no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let addr = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut path_and_query = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    let in_url: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name))
        .collect();
    let mut add = |name: &str, flag: &str, value: &str| {
        if in_url.contains(&name) {
            return Err(invalid(&format!(
                "its query already has `{name}=`; give it there or with {flag}, not both"
            )));
        }
        path_and_query.push(if path_and_query.contains('?') {
            '&'
        } else {
            '?'
        });
        path_and_query.push_str(name);
        path_and_query.push('=');
        path_and_query.push_str(value);
        Ok(())
    };
    if !opts.events.is_empty() {
        let names: Vec<&str> = opts.events.iter().map(|k| k.as_str()).collect();
        add("events", "--events", &names.join(","))?;
    }
    if opts.seq {
        add("seq", "--seq", "true")?;
    }
    if let Some(from) = opts.from {
        add("from", "--from", &from.to_string())?;
    }
    Ok(Target {
        addr,
        path_and_query,
    })
}

/// Runs hyper's background tasks (the client connection) on tokio.
struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut);
    }
}

type Ws = FragmentCollector<TokioIo<Upgraded>>;

/// The `Sec-WebSocket-Accept` a server must answer the request key `key` with (RFC 6455
/// section 4.2.2): base64 of the SHA-1 of the key followed by the protocol's GUID.
///
/// ```
/// // The example of RFC 6455 section 1.3.
/// assert_eq!(
///     herald_ws::tail::accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
///     "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
/// );
/// ```
#[must_use]
pub fn accept_key(key: &str) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// Connects and upgrades; returns the WebSocket.
async fn connect(target: &Target) -> Result<Ws, TailError> {
    let addr = &target.addr;
    let tcp = match tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr.as_str())).await {
        Err(_) => {
            return Err(TailError::Timeout {
                step: "connect",
                addr: addr.clone(),
            });
        }
        Ok(Err(source)) => {
            return Err(TailError::Connect {
                addr: addr.clone(),
                source,
            });
        }
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    match tokio::time::timeout(STEP_TIMEOUT, upgrade(tcp, target)).await {
        Ok(result) => result,
        Err(_) => Err(TailError::Timeout {
            step: "upgrade",
            addr: addr.clone(),
        }),
    }
}

async fn upgrade(tcp: TcpStream, target: &Target) -> Result<Ws, TailError> {
    let handshake = |e: &dyn fmt::Display| TailError::Handshake(e.to_string());
    let key = fastwebsockets::handshake::generate_key();
    let request = Request::builder()
        .method("GET")
        .uri(target.path_and_query.as_str())
        .header(HOST, target.addr.as_str())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", key.as_str())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .map_err(|e| handshake(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| handshake(&e))?;
    hyper::rt::Executor::execute(&SpawnExecutor, async move {
        // Ends when the connection is upgraded or closed; errors surface on the request.
        let _ = connection.with_upgrades().await;
    });
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| handshake(&e))?;
    let status = response.status();
    if status != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let body = match Limited::new(response.into_body(), MAX_BODY).collect().await {
            Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
            Err(_) => String::new(),
        };
        return Err(TailError::Refused {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("").to_owned(),
            body,
        });
    }
    let is_websocket = response
        .headers()
        .get(UPGRADE)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.eq_ignore_ascii_case("websocket"));
    if !is_websocket {
        return Err(TailError::Handshake(
            "101 response without `Upgrade: websocket`".to_owned(),
        ));
    }
    // RFC 6455 4.1: a client must fail the connection unless the server proves that it
    // read our key (so a cache or a non-WebSocket server that answers 101 is caught).
    let accept = response
        .headers()
        .get("Sec-WebSocket-Accept")
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
    let expected = accept_key(&key);
    match accept {
        Some(accept) if accept == expected => {}
        Some(accept) => {
            return Err(TailError::Handshake(format!(
                "101 response with a wrong Sec-WebSocket-Accept `{}` (expected `{expected}`)",
                one_line(&accept)
            )));
        }
        None => {
            return Err(TailError::Handshake(
                "101 response without Sec-WebSocket-Accept".to_owned(),
            ));
        }
    }
    let upgraded = hyper::upgrade::on(&mut response)
        .await
        .map_err(|e| handshake(&e))?;
    Ok(FragmentCollector::new(WebSocket::after_handshake(
        TokioIo::new(upgraded),
        Role::Client,
    )))
}

/// What the reader task hands to [`run`].
enum Incoming {
    Text(Vec<u8>),
    Closed { code: Option<u16>, reason: String },
    Error(TailError),
}

/// Reads frames until the stream ends, `stop` fires or `tx` is dropped; on `stop` (or a
/// dropped `tx`) it sends a close frame with 1000. Pings are answered by the collector.
async fn read_frames(mut ws: Ws, tx: mpsc::Sender<Incoming>, mut stop: oneshot::Receiver<()>) {
    loop {
        let frame = tokio::select! {
            biased;
            _ = &mut stop => break,
            frame = ws.read_frame() => frame,
        };
        let (incoming, last) = match frame {
            Ok(frame) => match frame.opcode {
                OpCode::Text => (Incoming::Text(frame.payload.to_vec()), false),
                OpCode::Close => {
                    let payload = &frame.payload[..];
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    let reason =
                        String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
                    (Incoming::Closed { code, reason }, true)
                }
                OpCode::Binary => (
                    Incoming::Error(TailError::Protocol(
                        "unexpected binary message (the stream sends text frames)".to_owned(),
                    )),
                    true,
                ),
                // Pongs (and pings, already answered) carry nothing for us.
                _ => continue,
            },
            Err(WebSocketError::UnexpectedEOF) => (
                Incoming::Closed {
                    code: None,
                    reason: "the server dropped the connection without a close frame".to_owned(),
                },
                true,
            ),
            Err(WebSocketError::IoError(e)) => (
                Incoming::Closed {
                    code: None,
                    reason: format!("connection lost: {e}"),
                },
                true,
            ),
            Err(e) => (Incoming::Error(TailError::Protocol(e.to_string())), true),
        };
        if tx.send(incoming).await.is_err() {
            break;
        }
        if last {
            return;
        }
    }
    // The client is done: say so. The server's reply is not awaited.
    let _ = ws.write_frame(Frame::close(1000, b"")).await;
}

/// Connects to `opts.url` and writes what arrives to `out` (see the module docs).
///
/// # Errors
///
/// A [`TailError`]; its [`exit_code`](TailError::exit_code) is what the binary exits with.
pub async fn run(opts: &TailOptions, out: impl Write) -> Result<TailSummary, TailError> {
    let target = target(opts)?;
    let ws = connect(&target).await?;
    let (tx, mut rx) = mpsc::channel(256);
    let (stop_tx, stop_rx) = oneshot::channel();
    let reader = tokio::spawn(read_frames(ws, tx, stop_rx));
    let mut out = io::BufWriter::new(out);
    let result = receive(opts, &target, &mut rx, &mut out).await;
    let flushed = out.flush().map_err(TailError::Output);
    // Stop the reader: it sends a close frame, unless the stream already ended.
    drop(rx);
    let _ = stop_tx.send(());
    let mut reader = reader;
    if tokio::time::timeout(Duration::from_secs(1), &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
    let summary = result?;
    flushed?;
    Ok(summary)
}

async fn receive(
    opts: &TailOptions,
    target: &Target,
    rx: &mut mpsc::Receiver<Incoming>,
    out: &mut impl Write,
) -> Result<TailSummary, TailError> {
    let output = TailError::Output;
    let mut summary = TailSummary::default();
    let closed = |code, reason, summary: &TailSummary| TailError::Closed {
        code,
        reason,
        events: summary.events,
    };

    // The handshake message comes first.
    let first = match tokio::time::timeout(STEP_TIMEOUT, rx.recv()).await {
        Err(_) => {
            return Err(TailError::Timeout {
                step: "waiting for `started`",
                addr: target.addr.clone(),
            });
        }
        Ok(None) => return Err(closed(None, String::new(), &summary)),
        Ok(Some(Incoming::Error(e))) => return Err(e),
        Ok(Some(Incoming::Closed { code, reason })) => return Err(closed(code, reason, &summary)),
        Ok(Some(Incoming::Text(text))) => text,
    };
    let mut scratch = first.clone();
    match decode(&mut scratch) {
        Ok(ServerMessage::Started) => {}
        Ok(_) => {
            return Err(TailError::NotStarted(format!(
                "got {}",
                one_line(&String::from_utf8_lossy(&first))
            )));
        }
        Err(e) => {
            return Err(TailError::NotStarted(format!(
                "{e}: {}",
                one_line(&String::from_utf8_lossy(&first))
            )));
        }
    }
    if opts.json && !opts.stats {
        out.write_all(&first).map_err(output)?;
        out.write_all(b"\n").map_err(output)?;
    } else if !opts.stats {
        writeln!(
            out,
            "started schema-version=1 url=ws://{}{}",
            target.addr, target.path_and_query
        )
        .map_err(output)?;
    }
    out.flush().map_err(output)?;
    if opts.count == Some(0) {
        return Ok(summary);
    }

    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = (Instant::now(), 0u64);
    loop {
        let incoming = tokio::select! {
            incoming = rx.recv() => incoming,
            _ = ticker.tick(), if opts.stats => {
                let now = Instant::now();
                let elapsed = now.duration_since(last_tick.0).as_secs_f64();
                let per_second = (summary.events - last_tick.1) as f64 / elapsed.max(1e-9);
                writeln!(out, "{}", stats_line(per_second, &summary)).map_err(output)?;
                out.flush().map_err(output)?;
                last_tick = (now, summary.events);
                continue;
            }
        };
        let text = match incoming {
            None => return Err(closed(None, String::new(), &summary)),
            Some(Incoming::Error(e)) => return Err(e),
            Some(Incoming::Closed { code, reason }) => return Err(closed(code, reason, &summary)),
            Some(Incoming::Text(text)) => text,
        };
        scratch.clear();
        scratch.extend_from_slice(&text);
        let message = decode(&mut scratch).map_err(|error| TailError::Decode {
            error,
            message: one_line(&String::from_utf8_lossy(&text)),
        })?;
        match message {
            ServerMessage::Started => {
                return Err(TailError::Protocol("a second `started` message".to_owned()));
            }
            ServerMessage::Lagged { missed, resume_seq } => {
                summary.lagged_notices += 1;
                summary.missed += missed;
                if opts.stats {
                } else if opts.json {
                    out.write_all(&text).map_err(output)?;
                    out.write_all(b"\n").map_err(output)?;
                } else {
                    writeln!(out, "{}", lagged_line(missed, resume_seq)).map_err(output)?;
                }
            }
            ServerMessage::Event { event, seq } => {
                summary.events += 1;
                if opts.stats {
                } else if opts.json {
                    out.write_all(&text).map_err(output)?;
                    out.write_all(b"\n").map_err(output)?;
                } else {
                    writeln!(out, "{}", event_line(summary.events, &event, seq)).map_err(output)?;
                }
            }
        }
        if opts.count.is_some_and(|count| summary.events >= count) {
            if opts.stats {
                writeln!(
                    out,
                    "total: {} events, {} lagged notices, {} missed",
                    summary.events, summary.lagged_notices, summary.missed
                )
                .map_err(output)?;
            }
            return Ok(summary);
        }
        // Flush when caught up, so a person watching sees each line as it arrives while a
        // fast stream is written in large chunks.
        if rx.is_empty() {
            out.flush().map_err(output)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::event::{BlockInfo, DeployInfo, DeployTransfers, Transfer, TransfersInfo};

    fn block() -> BlockInfo {
        BlockInfo {
            block_hash: "9f2c01".to_owned() + &"0".repeat(54) + "ab34",
            block_number: 5,
            timestamp: 1,
            parent_hashes: vec![],
            justification_hashes: vec![],
            deploys: (0..4)
                .map(|i| DeployInfo {
                    id: format!("{i}"),
                    cost: 1,
                    deployer: "d".to_owned(),
                    errored: i == 2,
                    transfers: None,
                })
                .collect(),
            creator: "04abcdef".to_owned() + &"1".repeat(118) + "cdef",
            seq_num: 2,
        }
    }

    #[test]
    fn short_keeps_small_strings_and_abbreviates_hashes() {
        assert_eq!(short(""), "");
        assert_eq!(short("abcdef012345"), "abcdef012345");
        assert_eq!(
            short(&("9f2c01".to_owned() + &"0".repeat(54) + "ab34")),
            "9f2c01…ab34"
        );
        // Never splits a character.
        assert_eq!(short("ééééééééééééé"), "éééééé…éééé");
    }

    #[test]
    fn block_lines() {
        assert_eq!(
            event_line(12, &Event::BlockAdded(block()), None),
            "#12 block-added             number=5 hash=9f2c01…ab34 deploys=4 errored=1 creator=04abcd…cdef"
        );
        let mut quiet = block();
        quiet.deploys.truncate(1);
        assert_eq!(
            event_line(3, &Event::BlockFinalised(quiet), Some(40)),
            "#3 block-finalised         number=5 hash=9f2c01…ab34 deploys=1 creator=04abcd…cdef seq=40"
        );
        assert!(
            event_line(1, &Event::BlockCreated(block()), None).starts_with("#1 block-created ")
        );
    }

    #[test]
    fn ceremony_and_lifecycle_lines() {
        let hash = "a".repeat(64);
        assert_eq!(
            event_line(
                1,
                &Event::NodeStarted {
                    address: "rnode://ab@127.0.0.1?protocol=40400&discovery=40404".to_owned()
                },
                None
            ),
            "#1 node-started            address=rnode://ab@127.0.0.1?protocol=40400&discovery=40404"
        );
        assert_eq!(
            event_line(
                2,
                &Event::SentUnapprovedBlock {
                    block_hash: hash.clone()
                },
                None
            ),
            "#2 sent-unapproved-block   hash=aaaaaa…aaaa"
        );
        assert_eq!(
            event_line(
                3,
                &Event::BlockApprovalReceived {
                    block_hash: hash.clone(),
                    sender: "04".to_owned() + &"b".repeat(128)
                },
                None
            ),
            "#3 block-approval-received hash=aaaaaa…aaaa sender=04bbbb…bbbb"
        );
        assert_eq!(
            event_line(4, &Event::EnteredRunningState { block_hash: hash }, None),
            "#4 entered-running-state   hash=aaaaaa…aaaa"
        );
    }

    #[test]
    fn transfers_and_notice_lines() {
        let transfer = Transfer {
            from_addr: "1".to_owned(),
            to_addr: "2".to_owned(),
            amount: 3,
            success: true,
        };
        let info = TransfersInfo {
            block_hash: "h".to_owned(),
            block_number: 42,
            deploys: vec![
                DeployTransfers {
                    deploy_id: "a".to_owned(),
                    transfers: vec![transfer.clone(), transfer.clone()],
                },
                DeployTransfers {
                    deploy_id: "b".to_owned(),
                    transfers: vec![transfer],
                },
            ],
        };
        assert_eq!(
            event_line(7, &Event::TransfersAvailable(info), None),
            "#7 transfers-available     number=42 hash=h deploys=2 transfers=3"
        );
        assert_eq!(lagged_line(3, 40), "lagged missed=3 resume=40");
        assert_eq!(
            stats_line(
                1234.4,
                &TailSummary {
                    events: 5678,
                    lagged_notices: 2,
                    missed: 120
                }
            ),
            "stats: 1234 events/s, 5678 events, 2 lagged notices, 120 missed"
        );
    }

    fn options(url: &str, events: &[EventKind]) -> TailOptions {
        TailOptions {
            url: url.to_owned(),
            events: events.to_vec(),
            ..TailOptions::default()
        }
    }

    #[test]
    fn target_parses_ws_urls() {
        assert_eq!(
            target(&options(DEFAULT_URL, &[])).unwrap(),
            Target {
                addr: "127.0.0.1:40403".to_owned(),
                path_and_query: "/ws/events".to_owned()
            }
        );
        assert_eq!(
            target(&options(
                "ws://localhost/ws/events?seq=true",
                &[EventKind::BlockAdded, EventKind::BlockFinalised]
            ))
            .unwrap(),
            Target {
                addr: "localhost:80".to_owned(),
                path_and_query: "/ws/events?seq=true&events=block-added,block-finalised".to_owned()
            }
        );
        assert_eq!(
            target(&options("ws://[::1]:9/x", &[EventKind::NodeStarted])).unwrap(),
            Target {
                addr: "[::1]:9".to_owned(),
                path_and_query: "/x?events=node-started".to_owned()
            }
        );
    }

    #[test]
    fn target_adds_seq_and_from() {
        let resume = TailOptions {
            seq: true,
            from: Some(1234),
            ..options("ws://127.0.0.1:1/ws/events", &[EventKind::BlockAdded])
        };
        assert_eq!(
            target(&resume).unwrap().path_and_query,
            "/ws/events?events=block-added&seq=true&from=1234"
        );
        let from_only = TailOptions {
            from: Some(0),
            ..options("ws://127.0.0.1:1/ws/events?events=node-started", &[])
        };
        assert_eq!(
            target(&from_only).unwrap().path_and_query,
            "/ws/events?events=node-started&from=0"
        );
    }

    #[test]
    fn target_refuses_a_parameter_in_both_url_and_flag() {
        for (url, opts, flag) in [
            (
                "ws://h:1/ws/events?events=block-added",
                options("", &[EventKind::BlockAdded]),
                "--events",
            ),
            (
                "ws://h:1/ws/events?seq=true",
                TailOptions {
                    seq: true,
                    ..TailOptions::default()
                },
                "--seq",
            ),
            (
                "ws://h:1/ws/events?seq=true&from=7",
                TailOptions {
                    from: Some(7),
                    ..TailOptions::default()
                },
                "--from",
            ),
        ] {
            let opts = TailOptions {
                url: url.to_owned(),
                ..opts
            };
            let err = target(&opts).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{url}");
            let message = err.to_string();
            assert!(
                message.ends_with(&format!("give it there or with {flag}, not both")),
                "{message}"
            );
        }
    }

    #[test]
    fn target_rejects_other_urls() {
        for (url, needle) in [
            ("http://127.0.0.1:1/ws/events", "scheme `http` is not ws://"),
            ("wss://127.0.0.1:1/ws/events", "TLS"),
            ("127.0.0.1:40403", "expected ws://"),
            ("/ws/events", "no scheme"),
            ("ws://exa mple/", "expected ws://"),
        ] {
            let err = target(&options(url, &[])).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{url}");
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("invalid URL `{url}`: ")),
                "{message}"
            );
            assert!(message.contains(needle), "{url}: {message}");
        }
    }

    #[test]
    fn error_messages_and_exit_codes() {
        let refused = TailError::Refused {
            status: 404,
            reason: "Not Found".to_owned(),
            body: "no such path\n".to_owned(),
        };
        assert_eq!(
            refused.to_string(),
            "server refused the WebSocket upgrade: HTTP 404 Not Found: no such path"
        );
        assert_eq!(refused.exit_code(), 4);
        let closed = TailError::Closed {
            code: Some(1001),
            reason: "shutting down".to_owned(),
            events: 7,
        };
        assert_eq!(
            closed.to_string(),
            "server closed the stream with code 1001 (going away): shutting down after 7 events"
        );
        assert_eq!(closed.exit_code(), 6);
        let connect = TailError::Connect {
            addr: "127.0.0.1:1".to_owned(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert!(
            connect
                .to_string()
                .starts_with("cannot connect to 127.0.0.1:1: ")
        );
        assert_eq!(connect.exit_code(), 3);
        let timeout = |step| TailError::Timeout {
            step,
            addr: "h:1".to_owned(),
        };
        assert_eq!(timeout("connect").exit_code(), 3);
        assert_eq!(timeout("upgrade").exit_code(), 4);
        assert_eq!(timeout("waiting for `started`").exit_code(), 5);
        assert_eq!(
            timeout("connect").to_string(),
            "connect with h:1 timed out after 10 s"
        );
        assert_eq!(TailError::NotStarted("x".to_owned()).exit_code(), 5);
        assert_eq!(TailError::Protocol("x".to_owned()).exit_code(), 5);
        assert_eq!(TailError::Output(io::Error::other("x")).exit_code(), 1);
        let decode_error = TailError::Decode {
            error: DecodeError::NotAnObject,
            message: "[]".to_owned(),
        };
        assert_eq!(
            decode_error.to_string(),
            "cannot decode a message (message is not a JSON object): []"
        );
        assert_eq!(decode_error.exit_code(), 5);
    }

    #[test]
    fn one_line_flattens_and_bounds() {
        assert_eq!(one_line("a\nb\tc"), "a b c");
        let long = "x".repeat(500);
        assert_eq!(one_line(&long).chars().count(), 201);
    }

    // ----- against a scripted server ------------------------------------------------------

    use herald_core::event::{Event as Ev, lagged_message, started_message};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// One server frame: FIN, `opcode`, unmasked.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(n as u8),
            n @ 126..=0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    fn text(payload: &[u8]) -> Vec<u8> {
        frame(0x1, payload)
    }

    /// Where [`scripted`] puts the accept value for the client's key.
    const ACCEPT: &str = "{accept}";

    const UPGRADED: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n";

    /// The request head's `Sec-WebSocket-Key`.
    fn request_key(head: &[u8]) -> String {
        let head = String::from_utf8_lossy(head);
        head.lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_owned())
            })
            .expect("a Sec-WebSocket-Key header")
    }

    /// Serves one connection: reads the request head, writes `script` (with the first
    /// [`ACCEPT`] replaced by the right answer to the request's key), then (unless
    /// `hang_up`) reads until the client closes. Returns the URL to connect to.
    async fn scripted(script: Vec<u8>, hang_up: bool) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tcp.read(&mut buf).await.expect("read request");
                assert!(n > 0, "client hung up before its request");
                head.extend_from_slice(&buf[..n]);
            }
            let mut script = script;
            if let Some(at) = script
                .windows(ACCEPT.len())
                .position(|w| w == ACCEPT.as_bytes())
            {
                let accept = accept_key(&request_key(&head));
                script.splice(at..at + ACCEPT.len(), accept.into_bytes());
            }
            tcp.write_all(&script).await.expect("write script");
            if !hang_up {
                while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            }
        });
        format!("ws://{addr}/ws/events")
    }

    async fn tail_scripted(
        script: Vec<u8>,
        hang_up: bool,
        count: Option<u64>,
    ) -> (Result<TailSummary, TailError>, String) {
        let url = scripted(script, hang_up).await;
        let options = TailOptions {
            url,
            count,
            ..TailOptions::default()
        };
        let mut out = Vec::new();
        let result = tokio::time::timeout(Duration::from_secs(30), run(&options, &mut out))
            .await
            .expect("tail finished");
        (result, String::from_utf8(out).expect("utf-8 output"))
    }

    fn script(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = UPGRADED.to_vec();
        for part in parts {
            out.extend_from_slice(part);
        }
        out
    }

    fn approved(hash: &str) -> Vec<u8> {
        Ev::ApprovedBlockReceived {
            block_hash: hash.to_owned(),
        }
        .encode()
        .to_vec()
    }

    #[tokio::test]
    async fn counts_events_not_notices_and_prints_each() {
        let (result, out) = tail_scripted(
            script(&[
                &text(&started_message()),
                &text(&approved("aa")),
                &text(&lagged_message(5, 9)),
                &text(&approved("bb")),
                &text(&Ev::BlockAdded(block()).encode()),
                &text(&approved("never read")),
            ]),
            false,
            Some(3),
        )
        .await;
        let summary = result.expect("count reached");
        assert_eq!(
            summary,
            TailSummary {
                events: 3,
                lagged_notices: 1,
                missed: 5
            }
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert!(lines[0].starts_with("started schema-version=1 url=ws://127.0.0.1:"));
        assert_eq!(lines[1], "#1 approved-block-received hash=aa");
        assert_eq!(lines[2], "lagged missed=5 resume=9");
        assert_eq!(lines[3], "#2 approved-block-received hash=bb");
        assert_eq!(lines[4], event_line(3, &Ev::BlockAdded(block()), None));
    }

    #[tokio::test]
    async fn json_prints_messages_as_received() {
        // Whitespace and key order as a server may send them: printed untouched.
        let odd = br#"{ "schema-version": 1, "payload": {"block-hash": "cc"}, "event": "sent-approved-block" }"#;
        let url = scripted(script(&[&text(&started_message()), &text(odd)]), false).await;
        let options = TailOptions {
            url,
            count: Some(1),
            json: true,
            ..TailOptions::default()
        };
        let mut out = Vec::new();
        let summary = run(&options, &mut out).await.expect("count reached");
        assert_eq!(summary.events, 1);
        let expected = format!(
            "{}\n{}\n",
            String::from_utf8_lossy(&started_message()),
            String::from_utf8_lossy(odd)
        );
        assert_eq!(String::from_utf8(out).expect("utf-8"), expected);
    }

    #[tokio::test]
    async fn first_message_must_be_started() {
        let (result, out) = tail_scripted(script(&[&text(&approved("aa"))]), false, None).await;
        let err = result.expect_err("not started");
        assert_eq!(err.exit_code(), 5);
        assert_eq!(
            err.to_string(),
            r#"the stream did not start with `started`: got {"event":"approved-block-received","schema-version":1,"payload":{"block-hash":"aa"}}"#
        );
        assert_eq!(out, "");

        let (result, _) = tail_scripted(script(&[&text(b"hello")]), false, None).await;
        let err = result.expect_err("not JSON");
        assert_eq!(err.exit_code(), 5);
        let message = err.to_string();
        assert!(
            message.starts_with("the stream did not start with `started`: invalid JSON: "),
            "{message}"
        );
        assert!(message.ends_with(": hello"), "{message}");
    }

    #[tokio::test]
    async fn an_undecodable_message_is_an_error() {
        let bad = br#"{"event":"block-added","schema-version":1,"payload":{}}"#;
        let (result, out) = tail_scripted(
            script(&[
                &text(&started_message()),
                &text(&approved("aa")),
                &text(bad),
            ]),
            false,
            None,
        )
        .await;
        let err = result.expect_err("bad payload");
        assert_eq!(err.exit_code(), 5);
        let message = err.to_string();
        assert!(
            message.starts_with("cannot decode a message (invalid `block-added` payload: "),
            "{message}"
        );
        assert!(message.ends_with(&format!("): {}", String::from_utf8_lossy(bad))));
        // What arrived before the bad message was printed.
        assert_eq!(
            out.lines().nth(1),
            Some("#1 approved-block-received hash=aa")
        );

        let (result, _) = tail_scripted(
            script(&[&text(&started_message()), &frame(0x2, b"\x00\x01")]),
            false,
            None,
        )
        .await;
        let err = result.expect_err("binary frame");
        assert_eq!(err.exit_code(), 5);
        assert_eq!(
            err.to_string(),
            "WebSocket protocol error: unexpected binary message (the stream sends text frames)"
        );

        let (result, _) = tail_scripted(
            script(&[&text(&started_message()), &text(&started_message())]),
            false,
            None,
        )
        .await;
        assert_eq!(
            result.expect_err("second started").to_string(),
            "WebSocket protocol error: a second `started` message"
        );
    }

    #[tokio::test]
    async fn a_close_from_the_server_ends_the_tail() {
        let mut close = 1008u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"client too slow");
        let (result, _) = tail_scripted(
            script(&[
                &text(&started_message()),
                &text(&approved("aa")),
                &frame(0x8, &close),
            ]),
            false,
            Some(10),
        )
        .await;
        let err = result.expect_err("closed early");
        assert_eq!(err.exit_code(), 6);
        assert_eq!(
            err.to_string(),
            "server closed the stream with code 1008 (policy violation): client too slow after 1 events"
        );

        // No close frame at all: the connection just ends.
        let (result, _) = tail_scripted(script(&[&text(&started_message())]), true, Some(10)).await;
        let err = result.expect_err("dropped");
        assert_eq!(err.exit_code(), 6);
        assert_eq!(
            err.to_string(),
            "connection closed: the server dropped the connection without a close frame after 0 events"
        );
    }

    #[tokio::test]
    async fn a_refused_upgrade_reports_status_and_body() {
        let body = "unknown event type `x`; valid types: node-started\n";
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (result, out) = tail_scripted(response.into_bytes(), false, None).await;
        let err = result.expect_err("refused");
        assert_eq!(err.exit_code(), 4);
        assert_eq!(
            err.to_string(),
            "server refused the WebSocket upgrade: HTTP 400 Bad Request: unknown event type `x`; valid types: node-started"
        );
        assert_eq!(out, "");

        // A 101 that is not a WebSocket upgrade.
        let (result, _) = tail_scripted(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
                .to_vec(),
            false,
            None,
        )
        .await;
        let err = result.expect_err("not websocket");
        assert_eq!(err.exit_code(), 4);
        assert_eq!(
            err.to_string(),
            "WebSocket upgrade failed: 101 response without `Upgrade: websocket`"
        );
    }

    #[tokio::test]
    async fn an_upgrade_with_a_wrong_or_no_accept_is_refused() {
        let wrong = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        let mut script = wrong.to_vec();
        script.extend_from_slice(&text(&started_message()));
        let (result, out) = tail_scripted(script, false, None).await;
        let err = result.expect_err("wrong accept");
        assert_eq!(err.exit_code(), 4);
        let message = err.to_string();
        assert!(
            message.starts_with(
                "WebSocket upgrade failed: 101 response with a wrong Sec-WebSocket-Accept \
                 `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=` (expected `"
            ),
            "{message}"
        );
        assert_eq!(out, "", "nothing is printed before the upgrade is proven");

        let missing = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\n\r\n";
        let (result, _) = tail_scripted(missing.to_vec(), false, None).await;
        let err = result.expect_err("no accept");
        assert_eq!(err.exit_code(), 4);
        assert_eq!(
            err.to_string(),
            "WebSocket upgrade failed: 101 response without Sec-WebSocket-Accept"
        );
    }

    #[test]
    fn accept_key_answers_the_key() {
        // RFC 6455 section 1.3's example, and a key of our own generator.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let key = fastwebsockets::handshake::generate_key();
        let accept = accept_key(&key);
        assert_eq!(accept.len(), 28, "base64 of 20 bytes");
        assert_ne!(
            accept,
            accept_key(&fastwebsockets::handshake::generate_key())
        );
    }

    #[tokio::test]
    async fn the_request_is_a_websocket_upgrade_with_the_filter() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tcp.read(&mut buf).await.expect("read");
                assert!(n > 0);
                head.extend_from_slice(&buf[..n]);
            }
            tcp.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await
                .expect("write");
            String::from_utf8(head).expect("ascii head")
        });
        let options = TailOptions {
            url: format!("ws://{addr}/ws/events"),
            events: vec![EventKind::BlockAdded, EventKind::TransfersAvailable],
            seq: true,
            from: Some(42),
            ..TailOptions::default()
        };
        let err = run(&options, Vec::new()).await.expect_err("404");
        assert_eq!(
            err.to_string(),
            "server refused the WebSocket upgrade: HTTP 404 Not Found"
        );
        let head = server.await.expect("server").to_ascii_lowercase();
        assert!(
            head.starts_with(
                "get /ws/events?events=block-added,transfers-available&seq=true&from=42 http/1.1\r\n"
            ),
            "{head}"
        );
        for header in [
            format!("host: {addr}\r\n"),
            "upgrade: websocket\r\n".to_owned(),
            "connection: upgrade\r\n".to_owned(),
            "sec-websocket-version: 13\r\n".to_owned(),
            "sec-websocket-key: ".to_owned(),
        ] {
            assert!(head.contains(&header), "{header:?} in {head}");
        }
    }
}

//! One `/ws/events` connection, from the `101` to the closed socket.
//!
//! # The per-connection protocol
//!
//! [`stream_events`] is the whole of it, one loop in one task; read it top to bottom.
//!
//! 1. **started**: the first frame is always `{"event":"started","schema-version":1}`.
//! 2. **replay, then live**: the bus subscriber was created before the `101` was sent. It
//!    yields the startup replay (or, with `from=`, everything retained from that sequence
//!    number), then live events, each exactly once and in publish order; replay and live
//!    meet at a sequence number inside the bus, never compared by content.
//! 3. **batching**: when the socket is free, the loop waits until the subscriber is ready,
//!    then borrows every ready event from the bus (up to `write_batch`, no reference count
//!    taken on the entry) and queues its *shared* encoding (`entry.json()`, or
//!    `entry.json_with_seq()` with `seq=true`) in the [`Outbox`]; the outbox writes the
//!    batch with vectored writes and one flush. Events filtered out by `events=` are skipped.
//!    While a batch is being written no new events are taken: the bus keeps them, and a
//!    client that stays behind by more than the bus capacity is lapped. A client that keeps
//!    up with a busy bus never makes the loop wait, so after every [`WRITE_STINT`] bytes
//!    written the loop yields to the runtime's other tasks (the accept loop, handshakes,
//!    other connections).
//! 4. **lag**: when the bus lapped this client it reports how many events it skipped; the
//!    client gets `{"event":"lagged",...,"payload":{"missed":N,"resume-seq":S}}` and delivery
//!    continues at `S`. With [`OnLag::Close`] the connection is closed with 1008 instead,
//!    except for lags that are not the client's doing: with `from=`, any lag before the
//!    client reaches the events published after it connected (a `from=` point no longer
//!    retained, or a lap while it catches up on history), or a startup segment that
//!    overflowed. A client that joined live and was lapped before it read its first live
//!    event is closed. Lags the bus reports back to back, with no event between them, are
//!    told as one notice ([`take_events`]). With `max_behind` set, a live client more than
//!    that many events behind is moved ahead before its next batch in the same way (the
//!    newest `max_behind / 2` are left to read), so the events it gets stay fresh even
//!    when the bus retains many more for `from=`; a `from=` client is live once it reaches
//!    the events published after it connected, so its catching up is never cut short.
//!    Publishers never wait for any client.
//! 5. **reading**: the client's frames are read all along (reads are cancel-safe and raced
//!    against writes, so a long write never stops the reading and vice versa): pings are
//!    answered with pongs, a close frame is answered and ends the connection, text and binary
//!    messages are read and dropped. Messages over `max_message_size` close with 1009,
//!    protocol errors with 1002, text that is not UTF-8 with 1007 ([`Parser`]).
//! 6. **liveness**: a client the server has heard nothing from for `ping_interval` is pinged.
//!    It is dropped when `ping_timeout` passes (counted from when the ping reached the
//!    socket) with neither its pong nor any reading progress: a client that is still
//!    reading (the socket keeps accepting our bytes) is alive even while its pong waits
//!    behind the events it has to read first, and gets another `ping_timeout`. So an idle
//!    client that does not answer is dropped one `ping_timeout` after the ping, and so is one
//!    that stopped reading altogether (it cannot even receive the ping); a client that keeps
//!    reading a busy stream is kept, and told about what it misses by `lagged` notices.
//! 7. **closing**: on server shutdown (or when the bus closes) the connection sends close
//!    1001 after what is already queued, waits up to [`CLOSE_TIMEOUT`] for the client's
//!    close frame, and drops the socket. After the client's close frame, the server answers
//!    and drops the socket at once (RFC 6455: the server closes TCP first).
//!
//! When the function returns, everything the connection owned is dropped with it: the
//! subscriber (so the bus's subscriber count goes down), both socket halves, the buffers.
//! It spawns no task. ([`run`], before it, spawns one when the handshake was answered on
//! [`serve`](crate::serve)'s handshake thread: the connection moves to the streaming
//! runtime.)

use std::future::poll_fn;

use bytes::{Bytes, BytesMut};
use herald_core::bus::{BusEntry, BusSubscriber};
use herald_core::event::{lagged_message, started_message};
use herald_core::ring::TryRecvError;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use std::sync::Arc;

use crate::frame::{Inbound, Outbox, Parser, close_code};
use crate::metrics::{self, Metrics};
use crate::query::Extensions;
use crate::server::{CLOSE_TIMEOUT, OnLag, ServerConfig, Shared, StreamSlot};

/// The connection stops reading the client while this many of its control frames (pongs,
/// close) wait to be written: a client that pings without reading cannot grow the queue.
const MAX_QUEUED_CONTROLS: usize = 32;

/// Bytes a connection writes before it lets the runtime's other tasks run. A client that
/// keeps up with a busy bus never makes the loop wait, and tokio's budget (128 operations a
/// poll) then lets one poll write 128 batches, megabytes; with 1000 such connections the
/// accept loop and new clients' handshakes waited over 10 s for their turn. Measured at 1000
/// connections (bench/RESULTS.md): 64 KiB cost about 15 % of deliveries at 1000 events/s;
/// 256 KiB keeps them and still brings upgrades at `--rate max` to about 1 s at p99.
const WRITE_STINT: u64 = 256 * 1024;

/// Free buffer space offered to each socket read. Clients send little (pongs, a close), and
/// a server may hold 10,000 connections; a larger frame grows the buffer as it arrives.
const READ_CHUNK: usize = 1024;

/// Runs a connection on the upgraded socket, holding its stream `slot` until it ends.
/// Takes the TCP stream apart when the server is hyper over a plain `TcpStream` (the usual
/// case: owned halves, no lock between reader and writer); any other transport is split
/// generically. When the server streams on another runtime than the one that answered the
/// handshake ([`serve`](crate::serve)'s handshake thread), a TCP stream moves to that
/// runtime's reactor first and runs there.
pub(crate) async fn run(
    io: TokioIo<Upgraded>,
    subscriber: BusSubscriber,
    extensions: Extensions,
    shutdown: watch::Receiver<bool>,
    slot: StreamSlot,
    shared: Arc<Shared>,
) {
    let streams = shared.streams.clone();
    let conn = Accepted {
        subscriber,
        extensions,
        shutdown,
        slot,
        shared,
    };
    match io.into_inner().downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let tcp = parts.io.into_inner();
            // Bytes the client sent right after its request, read by hyper already.
            let input = BytesMut::from(&parts.read_buf[..]);
            let Some(runtime) = streams else {
                let (reader, writer) = tcp.into_split();
                return conn.stream(reader, writer, input).await;
            };
            // Off this runtime's reactor, onto the streaming one's (`from_std` registers it
            // with the reactor of the runtime it is called on).
            let tcp = match tcp.into_std() {
                Ok(tcp) => tcp,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot hand the connection over");
                    return;
                }
            };
            runtime.spawn(async move {
                match TcpStream::from_std(tcp) {
                    Ok(tcp) => {
                        let (reader, writer) = tcp.into_split();
                        conn.stream(reader, writer, input).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot take the connection over"),
                }
            });
        }
        Err(upgraded) => {
            let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
            conn.stream(reader, writer, BytesMut::new()).await;
        }
    }
}

/// An upgraded connection's state until it streams; dropping it (an error on the way, or
/// the end of [`Accepted::stream`]) gives its stream slot back.
struct Accepted {
    subscriber: BusSubscriber,
    extensions: Extensions,
    shutdown: watch::Receiver<bool>,
    slot: StreamSlot,
    shared: Arc<Shared>,
}

impl Accepted {
    /// [`stream_events`] on the socket's two halves; the slot is held until it returns.
    async fn stream<R, W>(self, reader: R, writer: W, input: BytesMut)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let Self {
            subscriber,
            extensions,
            shutdown,
            slot,
            shared,
        } = self;
        let (config, metrics) = (&shared.config, &*shared.metrics);
        stream_events(
            reader, writer, input, subscriber, extensions, config, metrics, shutdown,
        )
        .await;
        drop(slot);
    }
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Sending events.
    Streaming,
    /// Our close frame is queued: write what is queued, then wait for the client's close
    /// frame (if `wait_for_peer`) until `deadline`, then drop the socket.
    Closing {
        deadline: Instant,
        wait_for_peer: bool,
    },
}

/// Our unanswered ping, and what the liveness check (module docs, 6) needs to know about it.
struct Ping {
    payload: Bytes,
    /// `outbox.written()` once the ping itself is handed to the socket.
    end: u64,
    /// Whether it has been handed to the socket.
    handed: bool,
    /// The pong is due `ping_timeout` after this: when the ping was handed to the socket,
    /// or when the client last showed that it reads.
    armed_at: Instant,
    /// `outbox.written()` at `armed_at`.
    armed_written: u64,
}

impl Ping {
    fn queued(payload: Bytes, outbox: &Outbox, now: Instant) -> Self {
        Self {
            end: outbox.written() + outbox.unwritten(),
            payload,
            handed: false,
            armed_at: now,
            armed_written: outbox.written(),
        }
    }

    /// After a drain: once the ping is out, the pong is due a timeout from now.
    fn drained(&mut self, outbox: &Outbox, now: Instant) {
        if !self.handed && outbox.written() >= self.end {
            self.handed = true;
            (self.armed_at, self.armed_written) = (now, outbox.written());
        }
    }

    /// The timeout passed without a pong. True (and re-armed) if the socket accepted more
    /// of our bytes since the last check: the client is reading, and its pong may wait
    /// behind the events it still has to read. False: it neither answered nor read; drop
    /// it.
    fn still_reading(&mut self, outbox: &Outbox, now: Instant) -> bool {
        if outbox.written() == self.armed_written {
            return false;
        }
        (self.armed_at, self.armed_written) = (now, outbox.written());
        true
    }
}

/// Streams events to one client until the connection ends (module docs).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn stream_events<R, W>(
    mut reader: R,
    mut writer: W,
    mut input: BytesMut,
    subscriber: BusSubscriber,
    extensions: Extensions,
    config: &ServerConfig,
    metrics: &Metrics,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Events with a sequence number at or past this were published after the client
    // joined: before it, the startup replay, or with `from=` the history it catches up on.
    let live_from = subscriber.join_point();
    let mut live = false;
    let mut subscriber = Some(subscriber);
    let mut outbox = Outbox::new();
    let mut parser = Parser::new(config.max_message_size);
    let mut phase = Phase::Streaming;
    let mut peer_closed = false; // the client's close frame arrived
    let mut read_open = true; // the client has not closed its side of the TCP connection
    let mut last_heard = Instant::now();
    let mut ping_sent: Option<Ping> = None; // our unanswered ping
    let mut pings = 0u64;
    let mut stint = 0u64; // bytes written since the loop last yielded
    let timer = tokio::time::sleep_until(last_heard + config.ping_interval);
    tokio::pin!(timer);

    // 1. The handshake message, always first.
    outbox.push_notice(started_message());

    // Closing is "queue a close frame, stop taking events" (dropping the subscriber right
    // away, so the bus stops counting this client).
    macro_rules! begin_close {
        ($code:expr, $reason:expr, $wait_for_peer:expr) => {{
            outbox.push_close($code, $reason);
            subscriber = None;
            phase = Phase::Closing {
                deadline: Instant::now() + CLOSE_TIMEOUT,
                wait_for_peer: $wait_for_peer,
            };
        }};
    }

    loop {
        // 5. Handle every complete client frame read so far.
        while read_open {
            match parser.next(&mut input) {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    last_heard = Instant::now();
                    match frame {
                        Inbound::Ping(payload) => {
                            if phase == Phase::Streaming {
                                outbox.push_pong(payload);
                            }
                        }
                        Inbound::Pong(payload) => {
                            if ping_sent.as_ref().is_some_and(|p| p.payload == payload) {
                                ping_sent = None;
                            }
                        }
                        Inbound::Message => {} // clients send no commands
                        Inbound::Close(code) => {
                            peer_closed = true;
                            if phase == Phase::Streaming {
                                // Echo the client's code (RFC 6455 5.5.1), then close TCP.
                                begin_close!(code, "", false);
                            }
                            read_open = false; // nothing may follow a close frame
                        }
                    }
                }
                Err(violation) => {
                    if phase == Phase::Streaming {
                        metrics::add(&metrics.protocol_errors, 1);
                        tracing::debug!(
                            code = violation.code,
                            reason = violation.reason,
                            "closing: client broke the protocol"
                        );
                        begin_close!(Some(violation.code), violation.reason, false);
                    }
                    read_open = false; // fail the connection: read no further
                }
            }
        }

        // 7. Done: our close frame is out, and the client answered it or is not expected to.
        if let Phase::Closing { wait_for_peer, .. } = phase
            && outbox.is_empty()
            && (!wait_for_peer || peer_closed || !read_open)
        {
            return;
        }

        // 6. The next timer deadline: closing, the ping's answer, or the next ping.
        let deadline = match (phase, &ping_sent) {
            (Phase::Closing { deadline, .. }, _) => deadline,
            (Phase::Streaming, Some(ping)) => ping.armed_at + config.ping_timeout,
            (Phase::Streaming, None) => last_heard + config.ping_interval,
        };
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }

        tokio::select! {
            biased;

            // 7. Server shutdown.
            changed = shutdown.changed(), if phase == Phase::Streaming => {
                if changed.is_err() || *shutdown.borrow() {
                    begin_close!(Some(close_code::GOING_AWAY), "server shutting down", true);
                }
            }

            // 6. Timers.
            () = &mut timer => {
                let now = Instant::now();
                match phase {
                    Phase::Closing { .. } => return, // the client never finished closing
                    Phase::Streaming
                        if ping_sent.as_mut().is_some_and(|p| p.still_reading(&outbox, now)) => {}
                    Phase::Streaming if ping_sent.is_some() => {
                        metrics::add(&metrics.ping_timeouts, 1);
                        tracing::debug!("dropping a client that did not answer a ping");
                        return;
                    }
                    Phase::Streaming if now >= last_heard + config.ping_interval => {
                        pings += 1;
                        let payload = Bytes::copy_from_slice(&pings.to_be_bytes());
                        outbox.push_ping(payload.clone());
                        ping_sent = Some(Ping::queued(payload, &outbox, now));
                    }
                    Phase::Streaming => {} // heard from the client since: the deadline moves
                }
            }

            // 3. Write what is queued (cancel-safe: progress is kept in the outbox).
            drained = poll_fn(|cx| outbox.poll_drain(cx, &mut writer)), if !outbox.is_empty() => {
                match drained {
                    Ok(d) => {
                        if let Some(ping) = ping_sent.as_mut() {
                            ping.drained(&outbox, Instant::now());
                        }
                        metrics::add(&metrics.events_delivered, d.events);
                        metrics::add(&metrics.bytes_sent, d.bytes);
                        stint += d.bytes;
                        if stint >= WRITE_STINT {
                            stint = 0;
                            tokio::task::yield_now().await;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "write failed");
                        return;
                    }
                }
            }

            // 5. Read from the client (cancel-safe).
            read = read_more(&mut reader, &mut input),
                if read_open && outbox.controls() < MAX_QUEUED_CONTROLS =>
            {
                match read {
                    Ok(0) => {
                        // The client closed TCP without a close frame (or after ours).
                        if phase == Phase::Streaming {
                            tracing::debug!("client went away without a close frame");
                            return;
                        }
                        read_open = false;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "read failed");
                        return;
                    }
                }
            }

            // 2-4. The next events, once the previous batch is written.
            () = events_ready(&mut subscriber), if outbox.is_empty() => {
                let Some(ready) = subscriber.as_mut() else { continue };
                // `max_behind`: a live client too far behind skips ahead (told as a lag).
                if let Some(max) = config.max_behind
                    && (live || extensions.from.is_none())
                {
                    metrics::add(&metrics.skipped_events, ready.skip_behind(max));
                }
                let taken = take_events(
                    |lend| ready.try_recv_each(config.write_batch, lend),
                    &mut outbox,
                    &extensions,
                    config.on_lag,
                    (&mut live, live_from),
                    metrics,
                );
                match taken {
                    Taken::Queued => {}
                    Taken::TooSlow { missed } => {
                        metrics::add(&metrics.lag_closes, 1);
                        let reason = format!("client too slow: missed {missed} events");
                        begin_close!(Some(close_code::POLICY_VIOLATION), &reason, true);
                    }
                    Taken::Closed => {
                        begin_close!(Some(close_code::GOING_AWAY), "event bus closed", true);
                    }
                }
            }
        }
    }
}

/// How [`take_events`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Taken {
    /// Events, a `lagged` notice, or both are queued (or, rarely, nothing was there after
    /// all).
    Queued,
    /// The client lagged while live and [`OnLag::Close`] is set: close with 1008.
    TooSlow { missed: u64 },
    /// The bus is closed and drained (a notice still to tell is queued first).
    Closed,
}

/// What [`take_events`] hands its `recv`: the function each ready event is lent to.
type Lend<'a> = &'a mut dyn FnMut(&BusEntry);

/// Most times [`take_events`] looks again after a lag, before it queues the lags merged
/// so far. The bus laps a client again right away only while it publishes `capacity`
/// events in the time of one look, so this bound is reached only on a tiny bus.
const MAX_LAG_LOOKS: usize = 64;

/// Queues the next batch of events: `recv` lends each ready event to its argument (as
/// `try_recv_each` does); those `extensions` lets through go into `outbox` as shared
/// encodings. `live` is set once an event at or past `live_from` (the first live sequence
/// number) comes by.
///
/// **Lags are told once.** A lag the bus reports is not queued at once: the bus is asked
/// again, and lags it reports back to back (it lapped the client again before the client
/// read the event it was moved to: on a busy bus the oldest retained event is the next one
/// overwritten; the ring moves a client lapped again that soon half a ring further) are
/// merged into one `lagged` notice, with the sum of `missed` and the last
/// `resume-seq`, queued just before the first event that follows. So a `from=` point no
/// longer retained gets the one notice SPEC section 4 promises.
fn take_events(
    mut recv: impl FnMut(Lend<'_>) -> Result<usize, TryRecvError>,
    outbox: &mut Outbox,
    extensions: &Extensions,
    on_lag: OnLag,
    (live, live_from): (&mut bool, u64),
    metrics: &Metrics,
) -> Taken {
    /// Queues the merged lag, if any.
    fn tell(lag: &mut Option<(u64, u64)>, outbox: &mut Outbox, metrics: &Metrics) {
        if let Some((missed, resume_seq)) = lag.take() {
            metrics::add(&metrics.lagged_notices, 1);
            outbox.push_notice(lagged_message(missed, resume_seq));
        }
    }
    let mut lag: Option<(u64, u64)> = None;
    let mut taken = Taken::Queued;
    for _ in 0..MAX_LAG_LOOKS {
        let received = recv(&mut |entry| {
            tell(&mut lag, outbox, metrics);
            *live |= entry.seq() >= live_from;
            if extensions.events.contains(entry.kind()) {
                let json = if extensions.seq {
                    entry.json_with_seq()
                } else {
                    entry.json()
                };
                // Borrowed from the bus: the only reference count taken per event is the
                // outbox's on the shared encoding.
                outbox.push_event(json.clone());
            }
        });
        match received {
            // `ready()` promised more than `Empty`; nothing is lost by looking again.
            Ok(_) | Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Lagged { missed, resume_seq }) => {
                metrics::add(&metrics.lagged_events, missed);
                // Not the client's doing, so told even under `OnLag::Close`: with `from=`,
                // anything before its first event published after it joined (the gap to
                // the oldest retained event, a lap while it catches up on history, and one
                // straight after); joined live, a startup segment that overflowed (the
                // skipped range starts before `live_from`). Any other lag skipped live
                // events the client did not read in time, even if it has not read a live
                // event yet.
                let not_its_doing = match extensions.from {
                    Some(_) => !*live,
                    None => resume_seq - missed < live_from,
                };
                if on_lag == OnLag::Close && !not_its_doing {
                    taken = Taken::TooSlow { missed };
                    break;
                }
                let before = lag.map_or(0, |(missed, _)| missed);
                lag = Some((before + missed, resume_seq));
            }
            Err(TryRecvError::Closed) => {
                taken = Taken::Closed;
                break;
            }
        }
    }
    tell(&mut lag, outbox, metrics);
    taken
}

/// Reads more client bytes into `input`. Cancel-safe (`read_buf` is).
async fn read_more<R: AsyncRead + Unpin>(
    reader: &mut R,
    input: &mut BytesMut,
) -> std::io::Result<usize> {
    input.reserve(READ_CHUNK);
    reader.read_buf(input).await
}

/// Waits until the subscriber has events (or a lag, or the close) to hand over; never ready
/// once the subscriber is gone. Consumes nothing, so it is cancel-safe.
async fn events_ready(subscriber: &mut Option<BusSubscriber>) {
    match subscriber {
        Some(subscriber) => subscriber.ready().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    //! The loop over an in-memory pipe: the generic transport path (no `TcpStream`, no
    //! vectored writes), which the socket tests do not take.

    use std::time::Duration;

    use herald_core::bus::{Bus, BusConfig, BusEntryRef};
    use herald_core::event::Event;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::query;

    async fn read_frame(client: &mut DuplexStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        let len = match head[1] {
            126 => usize::from(client.read_u16().await.unwrap()),
            127 => client.read_u64().await.unwrap() as usize,
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        client.read_exact(&mut payload).await.unwrap();
        (head[0], payload)
    }

    #[tokio::test]
    async fn streams_over_any_transport_and_ends_on_close() {
        let bus = Bus::new(BusConfig::default());
        bus.publish(Event::SentApprovedBlock {
            block_hash: "ab".into(),
        });
        bus.seal_startup();
        let (server_side, mut client) = tokio::io::duplex(64 * 1024);
        let (reader, writer) = tokio::io::split(server_side);
        let config = ServerConfig::default();
        let metrics = Metrics::default();
        let (_shutdown_tx, shutdown) = watch::channel(false);
        let extensions = query::parse(Some("seq=true")).unwrap();
        let subscriber = bus.subscribe();
        let live = Event::EnteredRunningState {
            block_hash: "cd".into(),
        };
        bus.publish(live.clone());

        let client_side = async {
            assert_eq!(
                read_frame(&mut client).await,
                (0x81, started_message().to_vec())
            );
            let (op, replay) = read_frame(&mut client).await;
            assert_eq!((op, &replay[..]), (0x81, &br#"{"event":"sent-approved-block","schema-version":1,"seq":0,"payload":{"block-hash":"ab"}}"#[..]));
            let (op, event) = read_frame(&mut client).await;
            assert_eq!((op, event), (0x81, live.encode_with_seq(1).to_vec()));
            // Close 1000, masked with a zero key.
            client
                .write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
                .await
                .unwrap();
            assert_eq!(read_frame(&mut client).await, (0x88, vec![0x03, 0xe8]));
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        };
        let server_side = stream_events(
            reader,
            writer,
            BytesMut::new(),
            subscriber,
            extensions,
            &config,
            &metrics,
            shutdown,
        );
        tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(server_side, client_side)
        })
        .await
        .expect("the connection did not end");
        assert_eq!(bus.stats().subscribers, 0);
        assert_eq!(metrics.snapshot().events_delivered, 2);
    }

    /// The text frames `outbox` holds, in order (server frames: unmasked).
    async fn texts(outbox: &mut Outbox) -> Vec<String> {
        let mut wire = Vec::new();
        poll_fn(|cx| outbox.poll_drain(cx, &mut wire))
            .await
            .expect("writing to a Vec");
        let mut texts = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            assert_eq!(wire[at], 0x81, "a final text frame");
            let (len, head) = match wire[at + 1] {
                126 => (
                    usize::from(u16::from_be_bytes([wire[at + 2], wire[at + 3]])),
                    4,
                ),
                n => (usize::from(n), 2),
            };
            texts.push(text(&wire[at + head..at + head + len]));
            at += head + len;
        }
        texts
    }

    fn text(json: &[u8]) -> String {
        String::from_utf8(json.to_vec()).expect("utf-8")
    }

    /// Entries of a real bus, for scripted `recv`s: `n` events with seqs `0..n`.
    fn entries(n: u64) -> Vec<BusEntryRef> {
        let bus = Bus::new(BusConfig::default());
        bus.seal_startup();
        let mut sub = bus.subscribe();
        for i in 0..n {
            bus.publish(Event::SentApprovedBlock {
                block_hash: format!("{i:02x}"),
            });
        }
        (0..n).map(|_| sub.try_recv().expect("published")).collect()
    }

    fn lagged(missed: u64, resume_seq: u64) -> TryRecvError {
        TryRecvError::Lagged { missed, resume_seq }
    }

    /// One step of a scripted `recv`: `Ok(range)` lends those entries.
    type Step = Result<std::ops::Range<usize>, TryRecvError>;

    /// One connection's side of `take_events` over several turns, each playing a script
    /// of bus answers over `entries`.
    struct Turns {
        entries: Vec<BusEntryRef>,
        extensions: Extensions,
        on_lag: OnLag,
        live: bool,
        live_from: u64,
        outbox: Outbox,
        metrics: Metrics,
    }

    impl Turns {
        fn new(query_string: Option<&str>, on_lag: OnLag, live_from: u64) -> Self {
            Self {
                entries: entries(40),
                extensions: query::parse(query_string).unwrap(),
                on_lag,
                live: false,
                live_from,
                outbox: Outbox::new(),
                metrics: Metrics::default(),
            }
        }

        /// One turn whose `recv` plays `script`, then reports `Empty`.
        fn take(&mut self, script: Vec<Step>) -> Taken {
            let entries = self.entries.clone();
            let mut script = script.into_iter();
            let recv = move |lend: Lend<'_>| match script.next().unwrap_or(Err(TryRecvError::Empty))
            {
                Ok(range) => {
                    let n = range.len();
                    for entry in &entries[range] {
                        lend(entry);
                    }
                    Ok(n)
                }
                Err(e) => Err(e),
            };
            self.take_with(recv)
        }

        fn take_with(
            &mut self,
            recv: impl FnMut(Lend<'_>) -> Result<usize, TryRecvError>,
        ) -> Taken {
            take_events(
                recv,
                &mut self.outbox,
                &self.extensions,
                self.on_lag,
                (&mut self.live, self.live_from),
                &self.metrics,
            )
        }

        /// What the turns queued since the last call, as text.
        async fn texts(&mut self) -> Vec<String> {
            texts(&mut self.outbox).await
        }

        /// The encoding of entry `i` this connection sends.
        fn event(&self, i: usize) -> String {
            let entry = &self.entries[i];
            text(if self.extensions.seq {
                entry.json_with_seq()
            } else {
                entry.json()
            })
        }
    }

    fn notice(missed: u64, resume_seq: u64) -> String {
        text(&lagged_message(missed, resume_seq))
    }

    #[tokio::test]
    async fn on_lag_close_tells_a_from_client_lapped_while_it_catches_up() {
        // `from=3`, joined when the bus was at 20: reads 3..6 of its history, is lapped
        // (to 12), still short of 20: told, not closed. Then it reads 20 and 21, events
        // published after it joined, and the next lap is its doing: closed.
        let mut c = Turns::new(Some("seq=true&from=3"), OnLag::Close, 20);
        assert_eq!(c.take(vec![Ok(3..6)]), Taken::Queued);
        assert_eq!(c.take(vec![Err(lagged(6, 12)), Ok(12..14)]), Taken::Queued);
        let told = [
            c.event(3),
            c.event(4),
            c.event(5),
            notice(6, 12),
            c.event(12),
            c.event(13),
        ];
        assert_eq!(c.texts().await, told);
        assert_eq!(c.take(vec![Ok(20..22)]), Taken::Queued);
        assert_eq!(
            c.take(vec![Err(lagged(5, 27))]),
            Taken::TooSlow { missed: 5 }
        );
    }

    #[tokio::test]
    async fn lags_back_to_back_are_told_as_one_notice() {
        // `from=3`, no longer retained: lapped at 3 (moved to 20), lapped again at 20
        // (moved to 21) and at 21 (to 30), then events 30 and 31. Not the client's doing:
        // told, not closed, under `OnLag::Close`.
        let mut c = Turns::new(Some("seq=true&from=3"), OnLag::Close, 3);
        let script = vec![
            Err(lagged(17, 20)),
            Err(lagged(1, 21)),
            Err(lagged(9, 30)),
            Ok(30..32),
        ];
        assert_eq!(c.take(script), Taken::Queued);
        assert_eq!(c.texts().await, [notice(27, 30), c.event(30), c.event(31)]);
        assert!(c.live, "30 is past the first live sequence number");
        let snapshot = c.metrics.snapshot();
        assert_eq!((snapshot.lagged_events, snapshot.lagged_notices), (27, 1));

        // Live now: the next lag closes (OnLag::Close), with nothing queued.
        assert_eq!(
            c.take(vec![Err(lagged(5, 37)), Ok(37..38)]),
            Taken::TooSlow { missed: 5 }
        );
        assert!(c.outbox.is_empty());
    }

    #[tokio::test]
    async fn on_lag_close_closes_a_live_client_lapped_before_its_first_event() {
        // Joined live at 10 (no `from=`): the startup segment's overflow (skipped range
        // before 10) is told; the lap of live events 10..14, though the client has read no
        // live event yet, closes.
        let mut c = Turns::new(None, OnLag::Close, 10);
        assert_eq!(c.take(vec![Err(lagged(5, 10)), Ok(10..11)]), Taken::Queued);
        assert_eq!(c.texts().await, [notice(5, 10), c.event(10)]);
        let mut c = Turns::new(None, OnLag::Close, 10);
        assert_eq!(
            c.take(vec![Err(lagged(4, 14)), Ok(14..15)]),
            Taken::TooSlow { missed: 4 }
        );
        assert!(c.outbox.is_empty());
        // The same lap under `from=10` is the resume point no longer retained: told.
        let mut c = Turns::new(Some("from=10"), OnLag::Close, 10);
        assert_eq!(c.take(vec![Err(lagged(4, 14)), Ok(14..15)]), Taken::Queued);
        assert_eq!(c.texts().await, [notice(4, 14), c.event(14)]);
    }

    #[tokio::test]
    async fn a_lag_is_told_before_the_close_and_when_the_bus_goes_quiet() {
        let mut c = Turns::new(None, OnLag::Notify, 0);
        // Lagged twice, then nothing to read yet: one notice now, not with the next event.
        assert_eq!(
            c.take(vec![Err(lagged(2, 4)), Err(lagged(1, 5))]),
            Taken::Queued
        );
        assert_eq!(c.texts().await, [notice(3, 5)]);
        // Lagged, then the bus closed: the notice comes before the close.
        let script = vec![Err(lagged(4, 9)), Err(TryRecvError::Closed)];
        assert_eq!(c.take(script), Taken::Closed);
        assert_eq!(c.texts().await, [notice(4, 9)]);
        // A bus that laps the client at every look: after MAX_LAG_LOOKS looks the merged
        // lag is told and the loop returns (the next turn goes on).
        assert_eq!(c.take_with(|_| Err(lagged(1, 100))), Taken::Queued);
        assert_eq!(c.texts().await, [notice(MAX_LAG_LOOKS as u64, 100)]);
        let snapshot = c.metrics.snapshot();
        assert_eq!(snapshot.lagged_notices, 3);
        assert_eq!(snapshot.lagged_events, 3 + 4 + MAX_LAG_LOOKS as u64);
    }

    /// A stream whose client keeps up and whose bus always has events never runs out of
    /// work on its own; it must still hand the worker back often enough that the accept
    /// loop and other clients' handshakes get their turn (bench/RESULTS.md: at `--rate max`
    /// with 1000 busy streams, upgrades waited over 10 s). `sink()` always accepts, so only
    /// the loop's own yielding ends its first stint; the probe behind it in `select!` reads
    /// what was written by then.
    #[tokio::test]
    async fn a_busy_stream_yields_after_a_bounded_amount_of_writing() {
        let bus = Bus::new(BusConfig {
            capacity: 1 << 14,
            ..BusConfig::default()
        });
        bus.seal_startup();
        let subscriber = bus.subscribe();
        // ~1 KiB per event, far more events than one yield allows.
        let block_hash = "ab".repeat(500);
        for _ in 0..10_000 {
            bus.publish(Event::SentApprovedBlock {
                block_hash: block_hash.clone(),
            });
        }
        let config = ServerConfig::default();
        let metrics = Metrics::default();
        let (_shutdown_tx, shutdown) = watch::channel(false);
        // The client sends nothing and never closes: reading stays pending.
        let (reader, _client) = tokio::io::duplex(64);
        let stream = stream_events(
            reader,
            tokio::io::sink(),
            BytesMut::new(),
            subscriber,
            query::parse(None).unwrap(),
            &config,
            &metrics,
            shutdown,
        );
        let written = tokio::select! {
            biased;
            () = stream => panic!("the stream ended"),
            () = std::future::ready(()) => metrics.snapshot().bytes_sent,
        };
        // One batch past the stint at most (128 events of ~1 KiB), not thousands.
        assert!(written > 0, "the stream wrote nothing before yielding");
        assert!(
            written <= WRITE_STINT + 128 * 1100,
            "a busy stream wrote {written} bytes before letting other tasks run"
        );
    }
}

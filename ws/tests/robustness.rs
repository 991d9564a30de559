//! SPEC section 5 over real sockets: pings, the close handshake, bad client frames (1009,
//! 1007, 1002), idle clients, graceful shutdown (1001 within 2 s), and teardown (the bus's
//! subscriber count returns to 0).

mod common;

use std::time::Duration;

use common::*;
use herald_core::bus::{Bus, BusConfig};
use herald_core::event::Event;
use herald_ws::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_answered_with_the_same_payload() {
    let server = TestServer::start(node(64), ServerConfig::default()).await;
    let mut client = Client::connect(server.addr, "/ws/events").await;
    client.expect_started().await;
    client.expect_events(&startup_events()).await;
    client.send(true, OP_PING, b"are you there?").await;
    let pong = client.frame().await;
    assert_eq!(pong.opcode, OP_PONG);
    assert_eq!(pong.payload, b"are you there?");
    // An empty ping too, and the stream goes on.
    client.send(true, OP_PING, b"").await;
    let pong = client.frame().await;
    assert_eq!((pong.opcode, pong.payload.len()), (OP_PONG, 0));
    server.bus.publish(live_event(0));
    client.expect_events(&[live_event(0)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_is_answered_and_the_subscriber_dropped() {
    let server = TestServer::start(node(64), ServerConfig::default()).await;
    let mut client = Client::connect(server.addr, "/ws/events").await;
    client.expect_started().await;
    client.expect_events(&startup_events()).await;
    server.wait_subscribers(1).await;
    client.send_close(1000, "bye").await;
    let close = client.frame().await;
    assert_eq!(close.close(), (1000, String::new()), "the code is echoed");
    client.expect_end().await;
    server.wait_subscribers(0).await;
    server.wait_metric("herald_ws_connections", 0).await;

    // An empty close frame is answered with an empty one.
    let mut client = Client::connect(server.addr, "/ws/events").await;
    client.send(true, OP_CLOSE, b"").await;
    let close = client.skip_to(OP_CLOSE, 10).await;
    assert!(close.payload.is_empty());
    client.expect_end().await;
    server.wait_subscribers(0).await;
}

/// Sends `bytes` after the handshake; the server must close with `code`, then drop TCP.
async fn expect_closed_with(server: &TestServer, bytes: &[u8], code: u16, reason: &str) {
    let mut client = Client::connect(server.addr, "/ws/events").await;
    client.expect_started().await;
    client.expect_events(&startup_events()).await;
    client.stream.write_all(bytes).await.unwrap();
    let close = client.frame().await;
    assert_eq!(close.close(), (code, reason.to_owned()));
    client.expect_end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_frames_close_with_the_right_code() {
    let server = TestServer::start(node(64), ServerConfig::default()).await;

    // At the limit is fine: the connection answers a ping afterwards.
    let mut client = Client::connect(server.addr, "/ws/events").await;
    client.expect_started().await;
    client.expect_events(&startup_events()).await;
    client.send(true, OP_TEXT, &[b'a'; 4096]).await;
    client.send(true, OP_BINARY, &[0xff; 4096]).await;
    client.send(true, OP_PING, b"alive").await;
    assert_eq!(client.frame().await.payload, b"alive");
    drop(client);

    // Over 4 KiB, in one frame or across fragments: 1009.
    expect_closed_with(
        &server,
        &masked_frame(true, OP_TEXT, &[b'a'; 4097]),
        1009,
        "message too big",
    )
    .await;
    let fragments = [
        masked_frame(false, OP_BINARY, &[0; 3000]),
        masked_frame(true, OP_CONTINUATION, &[0; 1097]),
    ]
    .concat();
    expect_closed_with(&server, &fragments, 1009, "message too big").await;

    // Invalid UTF-8 in a text message: 1007.
    expect_closed_with(
        &server,
        &masked_frame(true, OP_TEXT, &[b'o', b'k', 0xc3, 0x28]),
        1007,
        "text message is not valid UTF-8",
    )
    .await;

    // Protocol errors: 1002.
    expect_closed_with(
        &server,
        &[0x81, 0x02, b'h', b'i'],
        1002,
        "client frames must be masked",
    )
    .await;
    expect_closed_with(
        &server,
        &masked_frame(true, 0x3, b""),
        1002,
        "unknown opcode",
    )
    .await;
    expect_closed_with(
        &server,
        &masked_frame(true, OP_CONTINUATION, b"x"),
        1002,
        "continuation frame without a message to continue",
    )
    .await;

    server
        .wait_metric("herald_ws_protocol_errors_total", 6)
        .await;
    server.wait_subscribers(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_pinged_and_dropped_when_silent() {
    let config = ServerConfig {
        ping_interval: Duration::from_millis(150),
        ping_timeout: Duration::from_millis(150),
        ..ServerConfig::default()
    };
    let server = TestServer::start(node(64), config).await;

    // A client that answers every ping stays connected through several rounds...
    let mut polite = Client::connect(server.addr, "/ws/events").await;
    polite.expect_started().await;
    polite.expect_events(&startup_events()).await;
    let polite = tokio::spawn(async move {
        for _ in 0..4 {
            let ping = polite.frame().await;
            assert_eq!(ping.opcode, OP_PING);
            polite.send(true, OP_PONG, &ping.payload).await;
        }
        polite
    });

    // ...while one that never answers is dropped.
    let mut silent = Client::connect(server.addr, "/ws/events").await;
    silent.expect_started().await;
    silent.expect_events(&startup_events()).await;
    let ping = silent.frame().await;
    assert_eq!(ping.opcode, OP_PING);
    silent.expect_end().await;
    server.wait_metric("herald_ws_ping_timeouts_total", 1).await;

    let mut polite = within("four pings answered", polite).await.unwrap();
    server.bus.publish(live_event(0));
    let next = polite.skip_to(OP_TEXT, 2).await;
    assert_eq!(next.text().as_bytes(), &live_event(0).encode()[..]);
    assert_eq!(server.metric("herald_ws_ping_timeouts_total").await, 1);
    server.wait_subscribers(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_connection_with_1001_within_2_seconds() {
    let bus = Bus::new(BusConfig {
        capacity: 16,
        startup_capacity: 16,
    });
    bus.seal_startup();
    let mut server = TestServer::start(bus, ServerConfig::default()).await;
    // Three clients that read all along, each in its own task, until the close frame.
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(server.addr, "/ws/events").await;
        client.expect_started().await;
        readers.push(tokio::spawn(async move {
            let close = client.skip_to(OP_CLOSE, 5000).await;
            client.send_close(1001, "").await;
            client.expect_end().await;
            close.close()
        }));
    }
    // A client that stopped reading with its pipe full cannot even receive the close frame.
    let mut stalled = Client::connect_small_buffer(server.addr, "/ws/events").await;
    server.wait_subscribers(4).await;
    for i in 0..1000 {
        server.bus.publish(Event::NodeStarted {
            address: format!("{i}{}", "h".repeat(16 * 1024)),
        });
    }

    let took = server.stop().await;
    assert!(
        took < Duration::from_secs(2),
        "serve took {took:?} to return"
    );
    for reader in readers {
        let close = within("a reader's close frame", reader).await.unwrap();
        assert_eq!(close, (1001, "server shutting down".to_owned()));
    }
    // The stalled connection was dropped: what was in flight, then EOF (or a reset).
    stalled.read_until_dropped().await;
    assert_eq!(server.bus.stats().subscribers, 0);
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

/// The upgrade of `/ws/events`, or `None` if it was refused, unanswered or cut (no panic:
/// around a shutdown all of these are fine).
async fn upgrade_or_none(addr: std::net::SocketAddr) -> Option<Client> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(upgrade_request("/ws/events").as_bytes())
        .await
        .ok()?;
    let mut buf = bytes::BytesMut::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101 ") {
        return None;
    }
    bytes::Buf::advance(&mut buf, head_end);
    Some(Client::from_parts(stream, buf))
}

/// Shutdown landing while handshakes are in flight: every client that got its `101` also
/// gets a close frame with 1001, never a bare EOF (a connection between its `101` and its
/// move to the streaming runtime must not be dropped with the handshake thread). 300
/// rounds of 20 clients connecting at once, the shutdown signalled 0 to 735 µs after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_handshakes_closes_every_upgraded_stream_with_1001() {
    let (mut upgraded, mut refused) = (0u64, 0u64);
    for round in 0..300u64 {
        let mut server = TestServer::start(node(64), ServerConfig::default()).await;
        let addr = server.addr;
        let clients: Vec<_> = (0..20)
            .map(|_| {
                tokio::spawn(async move {
                    let mut client = upgrade_or_none(addr).await?;
                    loop {
                        match client.try_frame().await {
                            Some(frame) if frame.opcode == OP_CLOSE => return Some(frame.close()),
                            Some(_) => {}
                            None => panic!("upgraded, then EOF without a close frame"),
                        }
                    }
                })
            })
            .collect();
        // Varies where the shutdown lands among the handshakes; nothing waits on it.
        tokio::time::sleep(Duration::from_micros((round % 50) * 15)).await;
        server.stop().await;
        for client in clients {
            match client.await.unwrap() {
                Some(close) => {
                    assert_eq!(close, (1001, "server shutting down".to_owned()));
                    upgraded += 1;
                }
                None => refused += 1,
            }
        }
    }
    // Both sides of the race were reached: streams shut down, and clients too late.
    assert!(
        upgraded > 0 && refused > 0,
        "upgraded {upgraded}, refused {refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_count_returns_to_zero_however_clients_leave() {
    let server = TestServer::start(node(64), ServerConfig::default()).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut client = Client::connect(server.addr, "/ws/events").await;
        client.expect_started().await;
        clients.push(client);
    }
    server.wait_subscribers(6).await;
    assert_eq!(server.metric("herald_ws_connections").await, 6);
    // Two close properly, two vanish, two half-close their side and stay.
    let mut half_closed = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        match i % 3 {
            0 => {
                client.send_close(1000, "").await;
                client.skip_to(OP_CLOSE, 10).await;
            }
            1 => drop(client),
            _ => {
                client.stream.shutdown().await.unwrap();
                half_closed.push(client);
            }
        }
    }
    server.wait_subscribers(0).await;
    for client in &mut half_closed {
        client.drain_to_end().await;
    }
    server.wait_metric("herald_ws_connections", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_with_the_upgrade_request_are_read() {
    let server = TestServer::start(node(64), ServerConfig::default()).await;
    // The request and a ping in one write: the ping arrives in hyper's buffer, not ours.
    let mut bytes = upgrade_request("/ws/events").into_bytes();
    bytes.extend(masked_frame(true, OP_PING, b"early"));
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let answer = read_answer(&mut stream, &mut buf).await;
    assert_eq!(answer.status, 101);
    let mut client = Client::from_parts(stream, buf);
    let pong = client.skip_to(OP_PONG, 10).await;
    assert_eq!(pong.payload, b"early");
}

/// A client that keeps reading, only slowly, is alive even while its pong waits behind the
/// events it still has to read: liveness counts its reading progress, and it is not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_whose_pong_waits_behind_events_is_not_dropped() {
    let config = ServerConfig {
        ping_interval: Duration::from_millis(200),
        ping_timeout: Duration::from_millis(1000),
        ..ServerConfig::default()
    };
    let server = TestServer::start(node(1 << 13), config).await;
    let mut client = Client::connect_small_buffer(server.addr, "/ws/events").await;
    client.expect_started().await;
    client.expect_events(&startup_events()).await;

    // About 9 MB of backlog. The client reads the first 7.5 MB at about 2 MB/s, so a pong
    // waits behind several MB of events (in the server's queue and the socket buffers),
    // longer than `ping_timeout`; the kernel lets the server write in chunks, a few hundred
    // ms apart at this pace. Then, once the server has handed everything to the socket and
    // sees no more progress, the client reads the rest at full speed.
    const N: usize = 6000;
    const SLOW: usize = 5000;
    let big = |i: usize| Event::NodeStarted {
        address: format!("rnode://{i:040x}@{}", "h".repeat(1500)),
    };
    for i in 0..N {
        server.bus.publish(big(i));
    }

    let (mut events, mut pings) = (0, 0);
    while events < N {
        let frame = client.frame().await;
        match frame.opcode {
            OP_PING => {
                pings += 1;
                client.send(true, OP_PONG, &frame.payload).await;
            }
            OP_TEXT => {
                assert_eq!(frame.text().as_bytes(), &big(events).encode()[..]);
                events += 1;
                if events < SLOW && events % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(3)).await; // a slow reader
                }
            }
            other => panic!("unexpected frame with opcode {other}"),
        }
    }
    assert!(pings >= 1, "the server pinged while the client read");
    assert_eq!(server.metric("herald_ws_ping_timeouts_total").await, 0);
    server.wait_subscribers(1).await;
}

/// `serve` answers HTTP on its own thread: a client gets its `101` while every worker of
/// the runtime the streams run on is busy, and its stream (`started`, the replay, live
/// events) starts once a worker is free. Before, the handshake queued behind the busy
/// streams (bench/RESULTS.md: up to 0.8 s at p99 with 1000 of them on two cores); here the
/// only worker is blocked outright, so the `101` can only come from another thread.
#[test]
fn handshakes_are_answered_while_every_streaming_worker_is_busy() {
    let streams = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client_side = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut server = streams.block_on(TestServer::start(node(64), ServerConfig::default()));
    // The server is up (its handshake thread answers) before the worker is taken.
    let health = client_side.block_on(http(
        server.addr,
        "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    ));
    assert_eq!(health.status, 200);

    let (blocked_tx, blocked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    streams.spawn(async move {
        blocked_tx.send(()).unwrap();
        // Holds the runtime's only worker until the test lets go.
        release_rx.recv().unwrap();
    });
    blocked_rx.recv().unwrap();

    // Three handshakes in a row, all answered while the worker stays blocked.
    let mut clients = Vec::new();
    for _ in 0..3 {
        // `connect` asserts the 101 and its headers; `within` fails the test, not hang it.
        clients.push(client_side.block_on(within(
            "a 101 while the streaming worker is blocked",
            Client::connect(server.addr, "/ws/events"),
        )));
    }
    // Each handshake subscribed before its 101 left.
    assert_eq!(server.bus.stats().subscribers, 3);
    release_tx.send(()).unwrap();
    client_side.block_on(async {
        for client in &mut clients {
            client.expect_started().await;
            client.expect_events(&startup_events()).await;
        }
        server.bus.publish(live_event(0));
        for client in &mut clients {
            client.expect_events(&[live_event(0)]).await;
        }
    });
    streams.block_on(server.stop());
}

/// `serve` polled outside any tokio runtime (another executor) returns a clear error
/// instead of panicking: it needs a runtime to hand its streams to.
#[test]
fn serve_outside_a_tokio_runtime_is_an_error_not_a_panic() {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let bus = node(64);
    let mut serving = Box::pin(herald_ws::serve(
        listener,
        bus.tap(),
        ServerConfig::default(),
        std::future::pending(),
    ));
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut serving).poll(&mut cx) {
        Poll::Ready(Err(e)) => assert!(
            e.to_string().contains("serve needs a tokio runtime"),
            "unexpected error: {e}"
        ),
        Poll::Ready(Ok(())) => panic!("serve returned Ok outside a runtime"),
        Poll::Pending => panic!("serve waited outside a runtime"),
    }
}

/// A config that cannot work is refused by `serve` with `InvalidInput` naming the field,
/// before anything listens; one at a bound is accepted by `validate`.
#[tokio::test]
async fn serve_refuses_a_config_that_cannot_work() {
    let bad = [
        (
            ServerConfig {
                write_batch: 0,
                ..ServerConfig::default()
            },
            "write_batch must be greater than zero",
        ),
        (
            ServerConfig {
                max_behind: Some(0),
                ..ServerConfig::default()
            },
            "max_behind must be greater than zero",
        ),
        (
            ServerConfig {
                send_buffer: Some(herald_ws::MIN_SEND_BUFFER - 1),
                ..ServerConfig::default()
            },
            "send_buffer must be between 4096 and 1073741824 bytes, not 4095",
        ),
        (
            ServerConfig {
                send_buffer: Some(herald_ws::MAX_SEND_BUFFER + 1),
                ..ServerConfig::default()
            },
            "send_buffer must be between 4096 and 1073741824 bytes, not 1073741825",
        ),
    ];
    for (config, message) in bad {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bus = node(64);
        let err = herald_ws::serve(listener, bus.tap(), config, std::future::pending())
            .await
            .expect_err("a bad config is refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert_eq!(err.to_string(), message);
    }
    for bytes in [herald_ws::MIN_SEND_BUFFER, herald_ws::MAX_SEND_BUFFER] {
        let config = ServerConfig {
            send_buffer: Some(bytes),
            ..ServerConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }
}

//! SPEC section 1 (every row of the endpoint table), `/metrics`, `/healthz`, the connection
//! limit and the handshake timeout, over real sockets.

mod common;

use std::time::Duration;

use common::*;
use herald_ws::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const EVENTS_LIST: &str = "node-started, sent-unapproved-block, block-approval-received, sent-approved-block, approved-block-received, entered-running-state, block-created, block-added, block-finalised, transfers-available";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_endpoint_table() {
    let server = TestServer::start(node(64), ServerConfig::default()).await;
    let addr = server.addr;

    // A valid upgrade: 101 with the RFC accept value (checked by `connect`), then the stream.
    let mut client = Client::connect(addr, "/ws/events").await;
    client.expect_started().await;
    client.expect_events(&startup_events()).await;

    // Without upgrade headers: 426, short text body, and the Upgrade header it requires.
    let answer = http(addr, "GET /ws/events HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(answer.status, 426);
    assert_eq!(answer.header("upgrade"), Some("websocket"));
    assert_eq!(
        answer.body,
        "upgrade required: /ws/events is a WebSocket endpoint (HTTP/1.1, Connection: Upgrade, Upgrade: websocket)\n"
    );
    // Upgrade to something else is no WebSocket upgrade either.
    let answer = http(
        addr,
        "GET /ws/events HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 426);

    // Version other than 13 (or none): 426 with Sec-WebSocket-Version: 13.
    for version in ["Sec-WebSocket-Version: 8\r\n", ""] {
        let request = format!(
            "GET /ws/events HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             {version}Sec-WebSocket-Key: {KEY}\r\n\r\n"
        );
        let answer = http(addr, &request).await;
        assert_eq!(answer.status, 426, "{version:?}");
        assert_eq!(answer.header("sec-websocket-version"), Some("13"));
        assert_eq!(
            answer.body,
            "unsupported WebSocket version: this server speaks Sec-WebSocket-Version 13\n"
        );
    }

    // Missing (or malformed) Sec-WebSocket-Key: 400.
    let answer = http(
        addr,
        "GET /ws/events HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body, "missing Sec-WebSocket-Key header\n");
    let answer = http(
        addr,
        "GET /ws/events HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.body,
        "bad Sec-WebSocket-Key header: must be 16 bytes encoded in base64\n"
    );

    // Other methods: 405 with Allow: GET, even with valid upgrade headers.
    for method in ["POST", "PUT", "DELETE", "HEAD"] {
        let request = upgrade_request("/ws/events").replacen("GET", method, 1);
        let answer = http(addr, &request).await;
        assert_eq!(answer.status, 405, "{method}");
        assert_eq!(answer.header("allow"), Some("GET"), "{method}");
    }

    // Any other path: 404, upgrade or not.
    for target in ["/", "/ws", "/ws/events/", "/ws/eventsx", "/favicon.ico"] {
        let answer = http(addr, &upgrade_request(target)).await;
        assert_eq!(answer.status, 404, "{target}");
        assert_eq!(
            answer.body,
            "not found: the event stream is at /ws/events\n"
        );
    }

    // Bad query parameters: 400 naming the parameter and the valid values.
    let cases = [
        (
            "events=block-added,block-eaten",
            format!(
                "bad query parameter `events`: unknown event type `block-eaten`; valid types: {EVENTS_LIST}\n"
            ),
        ),
        (
            "seq=yes",
            "bad query parameter `seq`: `yes`; valid values: true, false\n".to_owned(),
        ),
        (
            "from=ten",
            "bad query parameter `from`: `ten`; valid values: a sequence number, an integer from 0 to 18446744073709551615\n"
                .to_owned(),
        ),
        (
            "since=3",
            "bad query parameter `since`: unknown parameter; valid parameters: events, seq, from\n"
                .to_owned(),
        ),
        (
            // Three events published so far: 3 is the next, 4 is not published yet.
            "from=4",
            "bad query parameter `from`: 4 is past the newest event; valid values: 0 to 3 (the \
             next sequence number; a node that restarted numbers its events from 0 again)\n"
                .to_owned(),
        ),
    ];
    for (query, body) in cases {
        let target = format!("/ws/events?{query}");
        let answer = Client::try_connect(addr, &target, None)
            .await
            .err()
            .unwrap_or_else(|| panic!("{query} was accepted"));
        assert_eq!(answer.status, 400, "{query}");
        assert_eq!(answer.body, body, "{query}");
    }

    // The one stream above is still open and is the only one counted.
    assert_eq!(server.metric("herald_ws_connections").await, 1);
    assert_eq!(server.metric("herald_ws_connections_total").await, 1);
    // 2 x 426 + 2 x 426 + 2 x 400 + 4 x 405 + 5 x 400 on /ws/events; 404s are not counted.
    assert_eq!(server.metric("herald_ws_bad_requests_total").await, 15);
    assert_eq!(server.metric("herald_ws_rejected_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_limit_is_503() {
    let config = ServerConfig {
        max_connections: 2,
        ..ServerConfig::default()
    };
    let server = TestServer::start(node(64), config).await;
    let mut first = Client::connect(server.addr, "/ws/events").await;
    let mut second = Client::connect(server.addr, "/ws/events").await;
    first.expect_started().await;
    second.expect_started().await;

    let refused = Client::try_connect(server.addr, "/ws/events", None)
        .await
        .err()
        .expect("a third stream was accepted over a limit of 2");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.body, "connection limit reached: 2 streams open\n");
    assert_eq!(server.metric("herald_ws_rejected_total").await, 1);

    // Once one leaves (close handshake), its slot is free again.
    first.send_close(1000, "").await;
    assert_eq!(first.skip_to(OP_CLOSE, 10).await.close().0, 1000);
    server.wait_metric("herald_ws_connections", 1).await;
    let mut third = Client::connect(server.addr, "/ws/events").await;
    third.expect_started().await;
    assert_eq!(server.metric("herald_ws_connections").await, 2);
    assert_eq!(server.metric("herald_ws_connections_total").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics() {
    let server = TestServer::start(node(64), ServerConfig::default()).await;
    let answer = http(server.addr, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
    let answer = http(server.addr, "POST /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(answer.status, 405);
    let answer = http(server.addr, "DELETE /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(answer.status, 405);

    let mut client = Client::connect(server.addr, "/ws/events").await;
    client.expect_started().await;
    client.expect_events(&startup_events()).await;
    let live: Vec<_> = (0..5).map(live_event).collect();
    server.publish_all(&live);
    client.expect_events(&live).await;

    // Counters are updated once a batch is fully written, just after the client has it.
    server
        .wait_metric("herald_ws_events_delivered_total", 8)
        .await;
    let answer = http(server.addr, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = &answer.body;
    assert!(text.contains("# TYPE herald_events_published_total counter\n"));
    assert_eq!(sample(text, "herald_events_published_total"), 8);
    assert_eq!(sample(text, "herald_ws_connections"), 1);
    assert_eq!(sample(text, "herald_ws_connections_total"), 1);
    assert_eq!(sample(text, "herald_ws_rejected_total"), 0);
    assert_eq!(sample(text, "herald_ws_lagged_events_total"), 0);
    assert_eq!(sample(text, "herald_ws_lagged_notices_total"), 0);
    assert_eq!(sample(text, "herald_ws_skipped_events_total"), 0);
    assert_eq!(sample(text, "herald_bus_subscribers"), 1);
    assert_eq!(sample(text, "herald_bus_startup_events"), 3);
    assert_eq!(sample(text, "herald_bus_startup_sealed"), 1);
    // The exact frame bytes: started and each event, each with a 2 or 4 byte header.
    let started = herald_core::event::started_message().len();
    let expected_bytes: usize = std::iter::once(started)
        .chain(
            startup_events()
                .iter()
                .chain(&live)
                .map(|e| e.encode().len()),
        )
        .map(|n| n + if n < 126 { 2 } else { 4 })
        .sum();
    assert_eq!(
        sample(text, "herald_ws_bytes_sent_total"),
        expected_bytes as u64
    );
}

/// Reads from a connection the client never speaks on: must end (EOF or reset), and not
/// before the handshake timeout.
async fn expect_dropped(stream: &mut TcpStream, opened: Instant, timeout: Duration) {
    let mut buf = [0u8; 256];
    let read = within(
        "the server dropping a silent connection",
        stream.read(&mut buf),
    )
    .await;
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!(
            "expected the connection to be dropped, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
    assert!(
        opened.elapsed() >= timeout,
        "dropped after {:?}, before the {timeout:?} handshake timeout",
        opened.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_drops_half_open_connections() {
    let timeout = Duration::from_millis(300);
    let config = ServerConfig {
        handshake_timeout: timeout,
        ..ServerConfig::default()
    };
    let server = TestServer::start(node(64), config).await;

    // Silent from the start.
    let opened = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // Half a request head, then silence.
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial
        .write_all(b"GET /ws/events HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    expect_dropped(&mut silent, opened, timeout).await;
    expect_dropped(&mut partial, opened, timeout).await;

    // Idle after a complete request on a kept-alive connection. The server's timer starts
    // once it has answered, which is after the request left here but maybe before the
    // answer is read here: the sound lower bound counts from the request.
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    let requested = Instant::now();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut kept, &mut bytes::BytesMut::new()).await;
    assert_eq!(answer.status, 200);
    expect_dropped(&mut kept, requested, timeout).await;

    // None of them became a stream, and the server still serves.
    assert_eq!(server.metric("herald_ws_connections_total").await, 0);
    let mut client = Client::connect(server.addr, "/ws/events").await;
    client.expect_started().await;
}

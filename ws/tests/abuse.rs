//! Issue 7, robustness under abuse, over real sockets on 127.0.0.1: bad HTTP, bad frames,
//! resets, handshake floods, stalled clients, silent clients, connection churn and
//! reconnecting clients. Every case asserts exactly what the server answers and that it
//! then still serves a normal client; none may panic the server (a panic hook counts them).
//!
//! The tests in this file run one at a time (they take [`SERIAL`]): several measure the
//! resident memory of the whole process, which concurrent tests would disturb.
//!
//! Soak mode: `HERALD_SOAK=N cargo test --release -p herald-ws --test abuse` multiplies the
//! counts (connections, cycles, events) and measuring windows by `N`; CI runs `N = 1`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use herald_ws::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// One test at a time in this binary (module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes [`SERIAL`] and starts counting panics.
async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().await;
    count_panics();
    guard
}

/// The server still serves: a new client gets `started`, the startup replay, and a pong.
async fn serves_a_normal_client(addr: SocketAddr) {
    let mut client = Client::connect(addr, "/ws/events").await;
    client.expect_started().await;
    client.expect_events(&startup_events()).await;
    client.send(true, OP_PING, b"still there").await;
    assert_eq!(client.frame().await.payload, b"still there");
    client.send_close(1000, "").await;
    assert_eq!(client.skip_to(OP_CLOSE, 10).await.close().0, 1000);
    client.expect_end().await;
}

// ---------------------------------------------------------------------------------------------
// Bad HTTP and handshakes
// ---------------------------------------------------------------------------------------------

/// What a bad request must get.
enum Expect {
    /// This status, a body equal to this, and (if given) this header with this value.
    Answer(u16, String, Option<(&'static str, &'static str)>),
    /// No answer at all: the server ends the connection.
    Closed,
}

const EVENTS_LIST: &str = "node-started, sent-unapproved-block, block-approval-received, sent-approved-block, approved-block-received, entered-running-state, block-created, block-added, block-finalised, transfers-available";

fn upgrade_with(target: &str, extra: &str, version: Option<&str>, key: Option<&str>) -> Vec<u8> {
    let mut r = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{extra}"
    );
    if let Some(v) = version {
        r.push_str(&format!("Sec-WebSocket-Version: {v}\r\n"));
    }
    if let Some(k) = key {
        r.push_str(&format!("Sec-WebSocket-Key: {k}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_gets_its_answer_or_a_clean_close_and_the_server_serves_on() {
    let _serial = exclusive().await;
    let server = TestServer::start(node(64), ServerConfig::default()).await;
    let addr = server.addr;
    let big_header = format!(
        "GET /ws/events HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024 + 1)
    );
    let many_headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET /ws/events HTTP/1.1\r\nHost: t\r\n{many_headers}\r\n");
    let long_target = format!(
        "GET /ws/events?{} HTTP/1.1\r\nHost: t\r\n\r\n",
        "a".repeat(20_000)
    );
    let bad_from = "bad query parameter `from`: `{}`; valid values: a sequence number, an integer from 0 to 18446744073709551615\n";
    let too_large = || Expect::Answer(431, String::new(), Some(("connection", "close")));
    let bad_request = || Expect::Answer(400, String::new(), Some(("connection", "close")));
    let upgrade_required = "upgrade required: /ws/events is a WebSocket endpoint (HTTP/1.1, Connection: Upgrade, Upgrade: websocket)\n";
    // (what, request, half-close after it, expected)
    let cases: Vec<(&str, Vec<u8>, bool, Expect)> = vec![
        (
            "a TLS client hello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x8a\x11\r\n\r\n".to_vec(),
            false,
            bad_request(),
        ),
        (
            "binary garbage",
            (0..=255u8).rev().collect(),
            true,
            bad_request(),
        ),
        (
            "a truncated request line",
            b"GET /ws/ev".to_vec(),
            true,
            Expect::Closed,
        ),
        (
            "a request head cut before its blank line",
            b"GET /ws/events HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n".to_vec(),
            true,
            Expect::Closed,
        ),
        (
            "headers over 64 KiB",
            big_header.into_bytes(),
            false,
            too_large(),
        ),
        ("150 headers", many_headers.into_bytes(), false, too_large()),
        (
            "a 20 KB request target",
            long_target.into_bytes(),
            false,
            too_large(),
        ),
        (
            "a control character in a header",
            b"GET /ws/events HTTP/1.1\r\nHost: \x01t\r\n\r\n".to_vec(),
            false,
            bad_request(),
        ),
        (
            "HTTP/3.7",
            b"GET /ws/events HTTP/3.7\r\nHost: t\r\n\r\n".to_vec(),
            false,
            bad_request(),
        ),
        (
            "an HTTP/2 preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            false,
            Expect::Closed,
        ),
        (
            "a bad Content-Length",
            b"POST /ws/events HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n".to_vec(),
            false,
            bad_request(),
        ),
        (
            "GET /ws/events without upgrade",
            b"GET /ws/events HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            true,
            Expect::Answer(426, upgrade_required.into(), Some(("upgrade", "websocket"))),
        ),
        (
            "an HTTP/1.0 upgrade",
            b"GET /ws/events HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                .to_vec(),
            true,
            Expect::Answer(426, upgrade_required.into(), Some(("upgrade", "websocket"))),
        ),
        (
            "POST",
            b"POST /ws/events HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            true,
            Expect::Answer(
                405,
                "method not allowed: use GET\n".into(),
                Some(("allow", "GET")),
            ),
        ),
        (
            "an unknown path",
            upgrade_with("/ws/event", "", Some("13"), Some(KEY)),
            true,
            Expect::Answer(
                404,
                "not found: the event stream is at /ws/events\n".into(),
                None,
            ),
        ),
        (
            "Sec-WebSocket-Version: 8",
            upgrade_with("/ws/events", "", Some("8"), Some(KEY)),
            true,
            Expect::Answer(
                426,
                "unsupported WebSocket version: this server speaks Sec-WebSocket-Version 13\n"
                    .into(),
                Some(("sec-websocket-version", "13")),
            ),
        ),
        (
            "no Sec-WebSocket-Key",
            upgrade_with("/ws/events", "", Some("13"), None),
            true,
            Expect::Answer(400, "missing Sec-WebSocket-Key header\n".into(), None),
        ),
        (
            "a 17-byte key",
            upgrade_with(
                "/ws/events",
                "",
                Some("13"),
                Some("AAAAAAAAAAAAAAAAAAAAAAA="),
            ),
            true,
            Expect::Answer(
                400,
                "bad Sec-WebSocket-Key header: must be 16 bytes encoded in base64\n".into(),
                None,
            ),
        ),
    ];
    // Bad query values: 400 naming the parameter and its valid values.
    let query_cases: Vec<(&str, String)> = vec![
        (
            "events=block-eaten",
            (format!(
                "bad query parameter `events`: unknown event type `block-eaten`; valid types: {EVENTS_LIST}\n"
            )),
        ),
        (
            "events=",
            (format!(
                "bad query parameter `events`: empty event type name; valid types: {EVENTS_LIST}\n"
            )),
        ),
        (
            "events=block-added,,block-finalised",
            (format!(
                "bad query parameter `events`: empty event type name; valid types: {EVENTS_LIST}\n"
            )),
        ),
        (
            "seq=1",
            "bad query parameter `seq`: `1`; valid values: true, false\n".into(),
        ),
        ("from=-1", (bad_from.replace("{}", "-1"))),
        ("from=", (bad_from.replace("{}", ""))),
        (
            "from=18446744073709551616",
            (bad_from.replace("{}", "18446744073709551616")),
        ),
        ("from=0x10", (bad_from.replace("{}", "0x10"))),
        (
            "seq=true&seq=true",
            "bad query parameter `seq`: given more than once\n".into(),
        ),
        (
            "events=%zz",
            "bad query parameter `events`: malformed percent-encoding\n".into(),
        ),
        (
            "token=abc",
            "bad query parameter `token`: unknown parameter; valid parameters: events, seq, from\n"
                .into(),
        ),
    ];
    let mut cases = cases;
    for (query, body) in &query_cases {
        cases.push((
            query,
            upgrade_with(&format!("/ws/events?{query}"), "", Some("13"), Some(KEY)),
            true,
            Expect::Answer(400, body.clone(), None),
        ));
    }

    for (what, request, half_close, expect) in &cases {
        let got = exchange(addr, request, *half_close).await;
        match expect {
            Expect::Closed => assert!(
                got.is_empty(),
                "{what}: expected a close with no answer, got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Expect::Answer(status, body, header) => {
                assert!(
                    !got.is_empty(),
                    "{what}: the connection ended with no answer"
                );
                let (answer, used) = parse_answer(&got);
                assert_eq!(answer.status, *status, "{what}");
                assert_eq!(answer.body, *body, "{what}");
                if let Some((name, value)) = header {
                    assert_eq!(answer.header(name), Some(*value), "{what}: {name}");
                }
                assert_eq!(used, got.len(), "{what}: nothing after the answer");
            }
        }
        serves_a_normal_client(addr).await;
    }

    // Every refusal of /ws/events by the service is counted; the parse errors never reached
    // it. 426 x 2, 405, 426, 400 x 2, and the query cases.
    assert_eq!(
        server.metric("herald_ws_bad_requests_total").await,
        6 + query_cases.len() as u64
    );
    assert_eq!(
        server.metric("herald_ws_connections_total").await,
        cases.len() as u64
    );
    server.wait_subscribers(0).await;
    assert_eq!(panics(), 0, "the server panicked");
}

// ---------------------------------------------------------------------------------------------
// Bad WebSocket frames
// ---------------------------------------------------------------------------------------------

/// A frame header claiming a payload of `len` bytes, masked, with no payload.
fn header_only(opcode: u8, len: u64) -> Vec<u8> {
    let mut f = vec![0x80 | opcode, 0x80 | 127];
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[1, 2, 3, 4]);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_with_their_code_and_release_the_connection() {
    let _serial = exclusive().await;
    let server = TestServer::start(node(64), ServerConfig::default()).await;
    let proto = 1002;
    let mut cases: Vec<(String, Vec<u8>, u16, &str)> = vec![
        (
            "unmasked text".into(),
            vec![0x81, 0x02, b'h', b'i'],
            proto,
            "client frames must be masked",
        ),
        (
            "unmasked close".into(),
            vec![0x88, 0x02, 0x03, 0xe8],
            proto,
            "client frames must be masked",
        ),
        (
            "fragmented ping".into(),
            masked_frame(false, OP_PING, b"p"),
            proto,
            "fragmented control frame",
        ),
        (
            "fragmented close".into(),
            masked_frame(false, OP_CLOSE, &1000u16.to_be_bytes()),
            proto,
            "fragmented control frame",
        ),
        (
            "126-byte ping".into(),
            masked_frame(true, OP_PING, &[7; 126]),
            proto,
            "control frame payload over 125 bytes",
        ),
        (
            "126-byte pong".into(),
            masked_frame(true, OP_PONG, &[7; 126]),
            proto,
            "control frame payload over 125 bytes",
        ),
        (
            "close with a 1-byte payload".into(),
            masked_frame(true, OP_CLOSE, &[3]),
            proto,
            "close frame with a 1-byte payload",
        ),
        (
            "orphan continuation".into(),
            masked_frame(true, OP_CONTINUATION, b"x"),
            proto,
            "continuation frame without a message to continue",
        ),
        (
            "new message inside a fragmented one".into(),
            [
                masked_frame(false, OP_TEXT, b"a"),
                masked_frame(true, OP_BINARY, b"b"),
            ]
            .concat(),
            proto,
            "new message before the fragmented one ended",
        ),
        (
            "64-bit length with the top bit set".into(),
            header_only(OP_BINARY, 1 << 63),
            proto,
            "payload length with the most significant bit set",
        ),
        // Over the 4096-byte limit: 1009, decided from the header alone.
        (
            "a 4097-byte text message".into(),
            masked_frame(true, OP_TEXT, &[b'a'; 4097]),
            1009,
            "message too big",
        ),
        (
            "a header claiming 1 TiB".into(),
            header_only(OP_BINARY, 1 << 40),
            1009,
            "message too big",
        ),
        (
            "fragments adding up to 4097 bytes".into(),
            [
                masked_frame(false, OP_TEXT, &[b'a'; 2048]),
                masked_frame(false, OP_CONTINUATION, &[b'a'; 2048]),
                masked_frame(true, OP_CONTINUATION, b"a"),
            ]
            .concat(),
            1009,
            "message too big",
        ),
        // Invalid UTF-8: 1007.
        (
            "a lone continuation byte".into(),
            masked_frame(true, OP_TEXT, &[b'o', b'k', 0x80]),
            1007,
            "text message is not valid UTF-8",
        ),
        (
            "an overlong encoding".into(),
            masked_frame(true, OP_TEXT, &[0xc0, 0x80]),
            1007,
            "text message is not valid UTF-8",
        ),
        (
            "a UTF-16 surrogate".into(),
            masked_frame(true, OP_TEXT, &[0xed, 0xa0, 0x80]),
            1007,
            "text message is not valid UTF-8",
        ),
        (
            "a code point cut at the end of a fragmented message".into(),
            [
                masked_frame(false, OP_TEXT, "é".as_bytes()),
                masked_frame(true, OP_CONTINUATION, &[0xe2, 0x82]),
            ]
            .concat(),
            1007,
            "text message is not valid UTF-8",
        ),
        (
            "a close reason that is not UTF-8".into(),
            masked_frame(true, OP_CLOSE, &[0x03, 0xe8, 0xff]),
            1007,
            "text message is not valid UTF-8",
        ),
    ];
    for bit in [0x40u8, 0x20, 0x10] {
        let mut frame = masked_frame(true, OP_TEXT, b"a");
        frame[0] |= bit;
        cases.push((
            format!("RSV bit {bit:#x}"),
            frame,
            proto,
            "reserved bits set",
        ));
    }
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        cases.push((
            format!("reserved opcode {opcode:#x}"),
            masked_frame(true, opcode, b""),
            proto,
            "unknown opcode",
        ));
    }
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        cases.push((
            format!("close code {code}"),
            masked_frame(true, OP_CLOSE, &code.to_be_bytes()),
            proto,
            "invalid close code",
        ));
    }

    for (what, bytes, code, reason) in &cases {
        let mut client = Client::connect(server.addr, "/ws/events").await;
        client.expect_started().await;
        client.expect_events(&startup_events()).await;
        client.stream.write_all(bytes).await.unwrap();
        let close = client.frame().await;
        assert_eq!(close.close(), (*code, (*reason).to_owned()), "{what}");
        client.expect_end().await;
    }
    server
        .wait_metric("herald_ws_protocol_errors_total", cases.len() as u64)
        .await;
    server.wait_subscribers(0).await;
    server.wait_metric("herald_ws_connections", 0).await;
    serves_a_normal_client(server.addr).await;
    assert_eq!(panics(), 0, "the server panicked");
}

/// Resets (RST, not FIN) a connection: zero linger, then drop.
fn reset(stream: TcpStream) {
    stream.set_zero_linger().unwrap();
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_resets_release_every_resource() {
    let _serial = exclusive().await;
    let config = ServerConfig {
        ping_interval: Duration::from_secs(60),
        ..ServerConfig::default()
    };
    let server = TestServer::start(node(64), config).await;
    let baseline = tasks();
    let rounds = 20 * soak() as usize;
    let mut streams = 0u64;
    for _ in 0..rounds {
        // Mid-frame: half of a 100-byte frame, then a reset.
        let mut client = Client::connect(server.addr, "/ws/events").await;
        client.expect_started().await;
        client.expect_events(&startup_events()).await;
        let frame = masked_frame(true, OP_TEXT, &[b'x'; 100]);
        client.stream.write_all(&frame[..50]).await.unwrap();
        reset(client.stream);
        streams += 1;

        // Mid-handshake: half a request head, then a reset.
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let request = upgrade_request("/ws/events");
        stream
            .write_all(&request.as_bytes()[..request.len() / 2])
            .await
            .unwrap();
        reset(stream);

        // A complete upgrade request, reset before the 101 is read.
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        reset(stream);
    }
    // Stalled with a full pipe and a full outbox, then reset.
    let mut stalled = Vec::new();
    for _ in 0..rounds {
        stalled.push(Client::connect_small_buffer(server.addr, "/ws/events").await);
        streams += 1;
    }
    for i in 0..300 {
        server.bus.publish(herald_core::event::Event::NodeStarted {
            address: format!("{i}{}", "h".repeat(16 * 1024)),
        });
    }
    for client in stalled {
        reset(client.stream);
    }

    server.wait_subscribers(0).await;
    server.wait_metric("herald_ws_connections", 0).await;
    wait_tasks(baseline).await;
    // The upgrades reset before their 101 was read may or may not have become streams.
    let total = server.metric("herald_ws_connections_total").await;
    assert!(
        (streams..=streams + rounds as u64).contains(&total),
        "{total} streams opened, {streams} to {} expected",
        streams + rounds as u64
    );
    let mut client = Client::connect(server.addr, "/ws/events").await;
    client.expect_started().await;
    client.expect_events(&startup_events()).await;
    assert_eq!(panics(), 0, "the server panicked");
}

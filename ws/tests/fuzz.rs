//! Fuzzing of the server's request and frame handling, over real sockets, with proptest
//! (stable Rust). Each case is one TCP connection to a running server:
//!
//! * `requests`: arbitrary bytes, or HTTP requests built from the pieces the server looks at
//!   (methods, paths, queries, versions, upgrade headers) with random values, cuts and
//!   flipped bytes. The server must answer with a well-formed HTTP answer from the set it
//!   can give, or close the connection, within the deadline.
//! * `frames`: a valid upgrade, then arbitrary bytes, or WebSocket frames with random FIN,
//!   RSV, opcode, mask, length and payload. Whatever the server sends back must be
//!   well-formed server frames: `started` first, text frames and pongs, at most one close
//!   frame, last, with a valid code; then the connection ends.
//!
//! Neither may panic the server (a panic hook counts panics in its tasks), and the server
//! serves a normal client afterwards. CI runs 256 cases of each; for a longer run:
//!
//! ```sh
//! HERALD_FUZZ_CASES=200000 cargo test --release -p herald-ws --test fuzz
//! ```

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use herald_ws::ServerConfig;
use proptest::prelude::*;
use proptest::sample::Index;

/// Cases per property: `HERALD_FUZZ_CASES`, default 256.
fn cases() -> u32 {
    match std::env::var("HERALD_FUZZ_CASES") {
        Err(_) => 256,
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("HERALD_FUZZ_CASES must be a number, got {v:?}")),
    }
}

/// One server for every case, on its own runtime.
struct Fuzzed {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    _server: TestServer,
}

fn fuzzed() -> &'static Fuzzed {
    static FUZZED: OnceLock<Fuzzed> = OnceLock::new();
    FUZZED.get_or_init(|| {
        count_panics();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let config = ServerConfig {
            handshake_timeout: Duration::from_secs(2),
            ..ServerConfig::default()
        };
        let server = runtime.block_on(TestServer::start(node(64), config));
        Fuzzed {
            runtime,
            addr: server.addr,
            _server: server,
        }
    })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Failures print their minimal input; no regression files in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// Every status the server may answer a request with: its own (SPEC section 1) and hyper's
/// answers to requests it cannot parse (400, 431) or serve (501, 505).
const STATUSES: &[u16] = &[101, 200, 400, 404, 405, 426, 431, 501, 503, 505];

fn header() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "Connection",
        "Upgrade",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Key",
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Expect",
    ]);
    prop_oneof![
        3 => Just("Connection: Upgrade".to_owned()),
        3 => Just("Upgrade: websocket".to_owned()),
        3 => Just("Sec-WebSocket-Version: 13".to_owned()),
        3 => Just(format!("Sec-WebSocket-Key: {KEY}")),
        1 => Just("Host: t".to_owned()),
        2 => (known, "[ -~]{0,30}").prop_map(|(n, v)| format!("{n}: {v}")),
        1 => ("[A-Za-z-]{1,20}", "[ -~]{0,30}").prop_map(|(n, v)| format!("{n}: {v}")),
        1 => "[ -~]{0,40}",
    ]
}

fn query() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("seq=true".to_owned()),
        Just("seq=false".to_owned()),
        "from=[0-9]{1,22}",
        "events=[a-z,-]{0,40}",
        Just("events=block-added,block-finalised".to_owned()),
        "[a-z=&%,0-9A-F+-]{0,20}",
    ];
    proptest::collection::vec(piece, 0..4).prop_map(|p| p.join("&"))
}

fn structured_request() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        6 => Just("GET".to_owned()),
        1 => Just("POST".to_owned()),
        1 => Just("HEAD".to_owned()),
        1 => Just("PUT".to_owned()),
        1 => "[A-Z]{1,8}",
    ];
    let path = prop_oneof![
        6 => Just("/ws/events".to_owned()),
        1 => Just("/metrics".to_owned()),
        1 => Just("/healthz".to_owned()),
        1 => "/[a-z/.]{0,12}",
        1 => "[ -~]{0,12}",
    ];
    let version = prop_oneof![
        6 => Just("HTTP/1.1".to_owned()),
        1 => Just("HTTP/1.0".to_owned()),
        1 => "HTTP/[0-9].[0-9]",
    ];
    let head = (
        method,
        path,
        proptest::option::of(query()),
        version,
        proptest::collection::vec(header(), 0..8),
    )
        .prop_map(|(method, path, query, version, headers)| {
            let target = match query {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let mut r = format!("{method} {target} {version}\r\n");
            for h in headers {
                r.push_str(&h);
                r.push_str("\r\n");
            }
            r.push_str("\r\n");
            r.into_bytes()
        });
    let body = proptest::collection::vec(any::<u8>(), 0..64);
    let cut = proptest::option::weighted(0.2, any::<Index>());
    let flips = proptest::collection::vec((any::<Index>(), any::<u8>()), 0..3);
    (head, body, cut, flips).prop_map(|(mut bytes, body, cut, flips)| {
        bytes.extend(body);
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        bytes
    })
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..512),
        4 => structured_request(),
    ]
}

/// Checks a server's answer to an arbitrary request: nothing, or a well-formed HTTP answer
/// with a status from [`STATUSES`] (no body after a `HEAD`), then either WebSocket frames
/// (after a `101`) or more answers to what followed the request, whose statuses are
/// checked too.
fn check_answer(request: &[u8], got: &[u8]) -> Result<(), TestCaseError> {
    if got.is_empty() {
        return Ok(());
    }
    let shown = || String::from_utf8_lossy(request).into_owned();
    prop_assert!(
        got.starts_with(b"HTTP/1.1 ") || got.starts_with(b"HTTP/1.0 "),
        "not an HTTP answer to {:?}: {:?}",
        shown(),
        String::from_utf8_lossy(got)
    );
    let (answer, used) = parse_answer_to(got, !request.starts_with(b"HEAD "));
    prop_assert!(
        STATUSES.contains(&answer.status),
        "status {} for {:?}",
        answer.status,
        shown()
    );
    let rest = &got[used..];
    if answer.status == 101 {
        return check_frames(rest);
    }
    // Answers to pipelined requests: their methods are unknown, so only their status lines
    // are checked.
    for line in rest.split(|&b| b == b'\n') {
        if let Some(status) = line.strip_prefix(b"HTTP/1.1 ") {
            let code = std::str::from_utf8(&status[..3.min(status.len())]).unwrap_or("");
            prop_assert!(
                code.parse().is_ok_and(|c: u16| STATUSES.contains(&c)),
                "status line {:?} for {:?}",
                String::from_utf8_lossy(line),
                shown()
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------

/// Checks what a server sent after its `101`: well-formed frames, `started` first, text
/// frames, pongs, pings, and at most one close frame, last, with a valid code.
fn check_frames(bytes: &[u8]) -> Result<(), TestCaseError> {
    let frames = parse_server_frames(bytes);
    if let Some(first) = frames.first() {
        prop_assert_eq!(
            &first.payload[..],
            br#"{"event":"started","schema-version":1}"#
        );
    }
    for (i, frame) in frames.iter().enumerate() {
        match frame.opcode {
            OP_TEXT | OP_PONG | OP_PING => {}
            OP_CLOSE => {
                prop_assert_eq!(i, frames.len() - 1, "a frame after the close frame");
                if !frame.payload.is_empty() {
                    let (code, _) = frame.close();
                    prop_assert!(
                        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999),
                        "close code {}",
                        code
                    );
                }
            }
            other => prop_assert!(false, "opcode {other:#x} from the server"),
        }
    }
    Ok(())
}

/// One client frame with every field chosen at random, valid values most of the time.
fn frame() -> impl Strategy<Value = Vec<u8>> {
    let opcode = prop_oneof![
        4 => prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]),
        1 => 0u8..16,
    ];
    let payload = prop_oneof![
        3 => "[ -~é€]{0,40}".prop_map(String::into_bytes),
        2 => proptest::collection::vec(any::<u8>(), 0..200),
        1 => (
            prop_oneof![
                prop::sample::select(vec![
                    1000u16, 1001, 1002, 1003, 1005, 1006, 1007, 1011, 1014, 1015, 2999, 3000,
                    4999, 5000,
                ]),
                any::<u16>(),
            ],
            "[ -~]{0,20}",
        )
            .prop_map(|(code, reason)| {
            let mut p = code.to_be_bytes().to_vec();
            p.extend(reason.into_bytes());
            p
        }),
        1 => (4000usize..4200).prop_map(|n| vec![b'a'; n]),
    ];
    // The length field: the payload's own (in its shortest form, or a longer one), or any.
    let length = prop_oneof![
        8 => Just(None),
        1 => Just(Some(126u8)),
        1 => Just(Some(127u8)),
        1 => any::<u64>().prop_map(|n| Some((n % 128) as u8)),
    ];
    (
        prop::bool::weighted(0.8),
        prop_oneof![8 => Just(0u8), 1 => 0u8..8],
        opcode,
        prop::bool::weighted(0.95),
        payload,
        length,
        any::<[u8; 4]>(),
    )
        .prop_map(|(fin, rsv, opcode, masked, payload, length, mask)| {
            let mut f = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
            let mask_bit = if masked { 0x80 } else { 0 };
            let n = payload.len();
            match length.unwrap_or(if n < 126 {
                n as u8
            } else if n <= 0xFFFF {
                126
            } else {
                127
            }) {
                126 => {
                    f.push(mask_bit | 126);
                    f.extend_from_slice(&(n as u16).to_be_bytes());
                }
                127 => {
                    f.push(mask_bit | 127);
                    f.extend_from_slice(&(n as u64).to_be_bytes());
                }
                short => f.push(mask_bit | (short & 0x7F)),
            }
            if masked {
                f.extend_from_slice(&mask);
                f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            } else {
                f.extend(payload);
            }
            f
        })
}

fn client_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..600),
        4 => proptest::collection::vec(frame(), 0..8).prop_map(|f| f.concat()),
    ]
}

// ---------------------------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn requests(request in request()) {
        let fuzzed = fuzzed();
        let got = fuzzed.runtime.block_on(exchange(fuzzed.addr, &request, true));
        check_answer(&request, &got)?;
        prop_assert_eq!(panics(), 0, "the server panicked");
    }

    #[test]
    fn frames(target in prop_oneof![Just(String::new()), query().prop_map(|q| format!("?{q}"))],
              bytes in client_bytes()) {
        let fuzzed = fuzzed();
        let mut request = upgrade_request(&format!("/ws/events{target}")).into_bytes();
        request.extend_from_slice(&bytes);
        let got = fuzzed.runtime.block_on(exchange(fuzzed.addr, &request, true));
        check_answer(&request, &got)?;
        prop_assert_eq!(panics(), 0, "the server panicked");
    }
}

/// After both properties (or alone): the server still serves, and no stream is left open.
#[test]
fn the_server_serves_after_fuzzing() {
    let fuzzed = fuzzed();
    fuzzed.runtime.block_on(async {
        let mut client = Client::connect(fuzzed.addr, "/ws/events").await;
        client.expect_started().await;
        client.expect_events(&startup_events()).await;
        client.send(true, OP_PING, b"ok").await;
        assert_eq!(client.frame().await.payload, b"ok");
    });
    assert_eq!(panics(), 0, "the server panicked");
}

//! libFuzzer target: one HTTP connection to the `/ws/events` service per input, in
//! process, over an in-memory pipe (hyper's HTTP/1 server, `EventsService`, and for an
//! upgrade the connection loop with its frame parser).
//!
//! The first byte picks what the rest is: even, the raw bytes of a request; odd, client
//! bytes sent after a valid upgrade request (its query picked by the byte's other bits).
//! The server must answer with HTTP (or nothing) and end the connection once the client
//! has closed its side; a panic or a hang (5 s) is a crash.
//!
//! ```sh
//! cd ws && cargo +nightly fuzz run server              # until stopped
//! cd ws && cargo +nightly fuzz run server -- -max_total_time=3600
//! ```
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use herald_core::bus::{Bus, BusConfig};
use herald_core::event::Event;
use herald_ws::{EventsService, ServerConfig};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const QUERIES: [&str; 4] = [
    "",
    "?seq=true",
    "?events=block-added,node-started",
    "?from=1",
];

struct Harness {
    runtime: tokio::runtime::Runtime,
    service: EventsService,
    _bus: Bus,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let bus = Bus::new(BusConfig {
            capacity: 16,
            startup_capacity: 16,
        });
        bus.publish(Event::NodeStarted {
            address: "rnode://ab@127.0.0.1?protocol=40400&discovery=40404".into(),
        });
        bus.publish(Event::EnteredRunningState {
            block_hash: "ab".repeat(32),
        });
        bus.seal_startup();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let service = EventsService::new(bus.tap(), ServerConfig::default());
        Harness {
            runtime,
            service,
            _bus: bus,
        }
    })
}

fn input(data: &[u8]) -> Vec<u8> {
    let Some((&mode, rest)) = data.split_first() else {
        return Vec::new();
    };
    if mode % 2 == 0 {
        return rest.to_vec();
    }
    let query = QUERIES[usize::from(mode / 2) % QUERIES.len()];
    let mut bytes = format!(
        "GET /ws/events{query} HTTP/1.1\r\nHost: f\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes();
    bytes.extend_from_slice(rest);
    bytes
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let request = input(data);
    h.runtime.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 16);
        let service = h.service.clone();
        let connection = tokio::spawn(async move {
            let mut http = http1::Builder::new();
            http.timer(TokioTimer::new()).half_close(true);
            let _ = http
                .serve_connection(TokioIo::new(server), service)
                .with_upgrades()
                .await;
        });
        let (mut reader, mut writer) = tokio::io::split(client);
        let write = async {
            let _ = writer.write_all(&request).await;
            let _ = writer.shutdown().await;
        };
        let mut answer = Vec::new();
        let read = async {
            let _ = reader.read_to_end(&mut answer).await;
        };
        let exchange = async { tokio::join!(write, read) };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .expect("the server did not end the connection");
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1."),
            "not HTTP: {:?}",
            String::from_utf8_lossy(&answer)
        );
        connection.await.expect("the connection task panicked");
    });
});

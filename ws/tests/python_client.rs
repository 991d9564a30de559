//! Interoperability with a widely used third-party client: Python's `websockets` package
//! (`python3 -m pip install websockets`; `.ci/run` installs it). It must complete the
//! handshake, receive `started` and the replay, then live events, and close cleanly.

mod common;

use std::process::Stdio;

use common::*;
use herald_ws::ServerConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Prints every message it receives, one per line; `READY` once it has the started
/// message and the 3 replayed events; exits after 3 live events and a normal close.
const SCRIPT: &str = r#"
import asyncio, sys
import websockets

async def main(url):
    async with websockets.connect(url, open_timeout=10, close_timeout=5) as ws:
        for _ in range(4):
            print(await asyncio.wait_for(ws.recv(), 10), flush=True)
        print("READY", flush=True)
        for _ in range(3):
            print(await asyncio.wait_for(ws.recv(), 10), flush=True)
    print("CLOSED", ws.close_code, flush=True)

asyncio.run(main(sys.argv[1]))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_client_gets_replay_and_live_events() {
    let probe = Command::new("python3")
        .args(["-c", "import websockets"])
        .output()
        .await
        .expect("python3 is needed for this test");
    assert!(
        probe.status.success(),
        "Python's `websockets` package is missing: run `python3 -m pip install websockets` \
         (.ci/run does). python3 said: {}",
        String::from_utf8_lossy(&probe.stderr)
    );

    let server = TestServer::start(node(64), ServerConfig::default()).await;
    let url = format!("ws://{}/ws/events", server.addr);
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT, &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        within("a line from the Python client", lines.next_line())
            .await
            .unwrap()
            .expect("the Python client exited early")
    };

    assert_eq!(
        next_line().await,
        r#"{"event":"started","schema-version":1}"#
    );
    for event in startup_events() {
        assert_eq!(next_line().await.as_bytes(), &event.encode()[..]);
    }
    assert_eq!(next_line().await, "READY");
    let live: Vec<_> = (0..3).map(live_event).collect();
    for event in &live {
        server.bus.publish(event.clone());
    }
    for event in &live {
        assert_eq!(next_line().await.as_bytes(), &event.encode()[..]);
    }
    assert_eq!(next_line().await, "CLOSED 1000");
    let output = within("the Python client exiting", child.wait_with_output())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.wait_subscribers(0).await;
}

//! `herald-baseline`: the `/ws/events` stream built the way the node herald replaces builds
//! it, so that the two can be measured side by side.
//!
//! ```text
//! herald-baseline --listen 127.0.0.1:40404 --rate 1000
//! ```
//!
//! * axum 0.8 WebSocket (tokio-tungstenite underneath) on `/ws/events`, `/healthz` for
//!   scripts;
//! * a `tokio::sync::broadcast` channel of capacity 100 (`--capacity`) carrying each event
//!   with its sequence number, plus a startup buffer (a `Mutex<Vec>`) sealed right after
//!   `entered-running-state`;
//! * every client subscribes, replays the startup buffer, skips live events the replay
//!   already covered (by sequence number), and then, for each live event, serializes the
//!   envelope itself with `serde_json` and sends it with one `send` (write and flush) per
//!   event;
//! * the events come from the same deterministic simulated node as `herald serve`
//!   (`herald_ws::sim`), at the same `--rate` (events per second, every type counted, or
//!   `max`).
//!
//! So that the load generator can check it, it also honours `seq=true` (the envelope
//! gains `"seq"`) and tells a client that fell behind with herald's `lagged` notice (the
//! replaced node skipped silently); neither changes its cost in any way that matters.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use herald_bench::payload::Envelope;
use herald_core::event::{Event, lagged_message, started_message};
use herald_ws::sim::{Rate, Role, SimConfig, Simulator};
use tokio::sync::broadcast;

#[derive(Debug, Parser)]
#[command(
    name = "herald-baseline",
    about = "The replaced node's /ws/events: axum + tokio broadcast + per-client serde_json"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:40404")]
    listen: SocketAddr,
    /// Role of the simulated node: boot, validator or readonly.
    #[arg(long, default_value = "validator")]
    role: Role,
    /// Events per second, every type counted, or `max`.
    #[arg(long, default_value = "10")]
    rate: Rate,
    /// Validators in the simulated network.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=1000))]
    validators: u16,
    /// Deploys per block.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(0..=1000))]
    deploys: u16,
    /// Seed of the simulated node's generator.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Capacity of the broadcast channel (the replaced node used 100).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    capacity: u64,
}

/// What the channel carries: the sequence number and the shared event.
type Published = (u64, Arc<Event>);

/// The replaced node's event bus: a broadcast channel and a startup buffer.
struct Node {
    tx: broadcast::Sender<Published>,
    startup: Mutex<Startup>,
}

#[derive(Default)]
struct Startup {
    events: Vec<Published>,
    sealed: bool,
}

impl Node {
    fn publish(&self, seq: u64, event: Event) {
        let event = Arc::new(event);
        {
            let mut startup = self.startup.lock().unwrap_or_else(|e| e.into_inner());
            if !startup.sealed {
                startup.events.push((seq, event.clone()));
            }
        }
        // No receiver is not an error: the event is simply not delivered to anyone.
        let _ = self.tx.send((seq, event));
    }

    fn seal(&self) {
        self.startup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sealed = true;
    }
}

async fn ws_events(
    upgrade: WebSocketUpgrade,
    Query(query): Query<HashMap<String, String>>,
    State(node): State<Arc<Node>>,
) -> Response {
    let with_seq = query.get("seq").is_some_and(|v| v == "true");
    upgrade.on_upgrade(move |socket| client(socket, node, with_seq))
}

fn text(bytes: &[u8]) -> Message {
    // herald-core's messages are ASCII JSON.
    Message::Text(String::from_utf8_lossy(bytes).into_owned().into())
}

async fn client(socket: WebSocket, node: Arc<Node>, with_seq: bool) {
    let (mut sink, mut stream) = socket.split();
    // Subscribe before reading the startup buffer, then drop live duplicates by sequence.
    let mut rx = node.tx.subscribe();
    let replay = node
        .startup
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .events
        .clone();
    if sink.send(text(&started_message())).await.is_err() {
        return;
    }
    let mut next = 0;
    for (seq, event) in &replay {
        let json = Envelope::new(event, with_seq.then_some(*seq)).to_json();
        if sink.send(Message::Text(json.into())).await.is_err() {
            return;
        }
        next = seq + 1;
    }
    // Reads pings (answered by tungstenite on the next write) and the close handshake.
    let mut reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Close(_) = message {
                break;
            }
        }
    });
    let mut pending_missed = 0;
    loop {
        let received = tokio::select! {
            received = rx.recv() => received,
            _ = &mut reader => break,
        };
        match received {
            Ok((seq, event)) => {
                if seq < next {
                    continue;
                }
                next = seq + 1;
                if pending_missed > 0 {
                    let notice = lagged_message(std::mem::take(&mut pending_missed), seq);
                    if sink.send(text(&notice)).await.is_err() {
                        break;
                    }
                }
                // The replaced node's cost: one serialization per client per event.
                let json = Envelope::new(&event, with_seq.then_some(seq)).to_json();
                if sink.send(Message::Text(json.into())).await.is_err() {
                    break;
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => pending_missed += missed,
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    reader.abort();
    let _ = sink.close().await;
}

/// Publishes the simulated node's life: startup, seal, then blocks at `rate`.
fn start_simulation(
    node: Arc<Node>,
    config: SimConfig,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let mut sim = Simulator::new(config.clone());
    let mut seq = 0u64;
    for event in sim.startup_events() {
        node.publish(seq, event);
        seq += 1;
    }
    node.seal();
    match config.rate {
        Rate::Max => {
            std::thread::Builder::new()
                .name("baseline-sim".to_owned())
                .spawn(move || {
                    // Relaxed: a stop flag; nothing else is handed over through it.
                    while !stop.load(Ordering::Relaxed) {
                        for event in sim.next_block_events() {
                            node.publish(seq, event);
                            seq += 1;
                        }
                    }
                })?;
        }
        Rate::PerSecond(rate) => {
            tokio::spawn(async move {
                let rate = u128::from(rate);
                let start = Instant::now();
                let mut sent: u128 = 0;
                let mut pending = std::collections::VecDeque::new();
                // Relaxed: as above.
                while !stop.load(Ordering::Relaxed) {
                    let due = start.elapsed().as_nanos() * rate / 1_000_000_000 + 1;
                    while sent < due {
                        if pending.is_empty() {
                            pending.extend(sim.next_block_events());
                        }
                        let Some(event) = pending.pop_front() else {
                            break;
                        };
                        node.publish(seq, event);
                        seq += 1;
                        sent += 1;
                    }
                    let next_ns = sent * 1_000_000_000 / rate;
                    let next =
                        start + Duration::from_nanos(u64::try_from(next_ns).unwrap_or(u64::MAX));
                    let wake = next.max(Instant::now() + Duration::from_millis(1));
                    tokio::time::sleep_until(wake.into()).await;
                }
            });
        }
    }
    Ok(())
}

async fn serve(args: Args) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "herald-baseline: error: cannot listen on {}: {e}",
                args.listen
            );
            return ExitCode::from(2);
        }
    };
    let local = listener.local_addr().map_or(args.listen, |a| a);
    let (tx, _) = broadcast::channel(usize::try_from(args.capacity).unwrap_or(100));
    let node = Arc::new(Node {
        tx,
        startup: Mutex::new(Startup::default()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let config = SimConfig {
        role: args.role,
        rate: args.rate,
        validators: usize::from(args.validators),
        deploys: usize::from(args.deploys),
        seed: args.seed,
    };
    if let Err(e) = start_simulation(node.clone(), config, stop.clone()) {
        eprintln!("herald-baseline: error: cannot start the simulated node: {e}");
        return ExitCode::FAILURE;
    }
    let app = Router::new()
        .route("/ws/events", get(ws_events))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(node);
    println!("herald-baseline: serving ws://{local}/ws/events");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    // Relaxed: see the loads in `start_simulation`.
    stop.store(true, Ordering::Relaxed);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-baseline: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-baseline: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args))
}

//! `herald`: serve a simulated node's events on `/ws/events`, or tail such a stream.
//!
//! ```text
//! herald serve [--listen 127.0.0.1:40403] [--role validator] [--rate 10] ...
//! herald tail [ws://127.0.0.1:40403/ws/events] [--events a,b] [--seq] [--from SEQ] [--count N]
//!             [--json] [--stats]
//! ```

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use herald_core::bus::BusConfig;
use herald_core::event::EventKind;
use herald_core::transfers::{ExtractorConfig, NodeRole, SimulatedSource, node_bus};
use herald_ws::sim::{Rate, Role, SimConfig, Simulator};
use herald_ws::tail::{self, TailError, TailOptions};
use herald_ws::{OnLag, ServerConfig, serve};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "The /ws/events WebSocket event stream of a blockchain node, with a simulated node \
             to serve and a client to watch it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a simulated node and stream its events on ws://LISTEN/ws/events.
    ///
    /// The node publishes `node-started`, the genesis ceremony of its role and
    /// `entered-running-state` (the startup segment every client replays), then blocks.
    /// Logs go to stderr (RUST_LOG, default `info`); the URL to connect to is printed on
    /// stdout. SIGINT or SIGTERM closes every stream with 1001 and exits 0.
    Serve(ServeArgs),
    /// Connect to a /ws/events stream and print one line per event.
    Tail(TailArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the URL printed has the real one).
    #[arg(long, default_value = "127.0.0.1:40403")]
    listen: SocketAddr,
    /// Role of the simulated node: boot, validator or readonly.
    #[arg(long, default_value = "validator")]
    role: Role,
    /// Events per second, every type counted (a validator's block is 3 events), or `max`.
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
    /// Live events retained for slow clients (rounded up to a power of two; at most
    /// 16777216, whose slots alone take 128 MiB before any event is retained).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    capacity: u64,
    /// Most startup events kept for replay (at most 16777216; allocated up front too).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    startup_capacity: u64,
    /// Most open streams; more are answered 503.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    max_connections: u64,
    /// What to do with a client that lags: notify (send `lagged`) or close (code 1008).
    #[arg(long, default_value = "notify")]
    on_lag: OnLag,
    /// Most live events a client may fall behind before it skips ahead to the newest half
    /// of them (told with `lagged`, or closed under --on-lag close); default: only
    /// --capacity bounds it. Keeps slow clients' events fresh while --capacity keeps `from=`
    /// resumption long.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    max_behind: Option<u64>,
    /// Bytes of kernel send buffer (SO_SNDBUF) per connection, 4096 to 2^30; default: the
    /// kernel's autotuning (up to 4 MiB a connection on Linux). With --max-behind, bounds
    /// how old a slow client's events get: what waits in the kernel cannot be skipped.
    /// Also caps a connection at about BYTES per round trip: size it for remote clients.
    #[arg(long, value_parser = clap::value_parser!(u64).range(4096..=1 << 30))]
    send_buffer: Option<u64>,
    /// Read-only role: milliseconds the simulated node takes to report a finalised block's
    /// transfers (each block then gets `transfers-available`).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    report_latency_ms: u64,
    /// Read-only role: most extra milliseconds on top of --report-latency-ms, drawn per block
    /// from --seed.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    report_jitter_ms: u64,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Exit codes:
  0  --count events received
  1  cannot write the output
  2  bad flag or URL
  3  cannot connect (refused, unreachable, timed out)
  4  the server refused the WebSocket upgrade (HTTP status and body printed)
  5  protocol: first message not `started`, a message that does not decode, a WebSocket error
  6  the server closed the stream (close code printed) or the connection dropped")]
struct TailArgs {
    /// URL of the stream.
    #[arg(default_value = tail::DEFAULT_URL)]
    url: String,
    /// Only these event types, comma-separated (e.g. block-added,block-finalised).
    #[arg(long, value_delimiter = ',')]
    events: Vec<EventKind>,
    /// Ask for sequence numbers (`seq=true`): each line ends with `seq=N`.
    #[arg(long)]
    seq: bool,
    /// Resume from sequence number SEQ (`from=SEQ`): every event from SEQ the server still
    /// retains, then live events; older ones are reported as one `lagged` line.
    #[arg(long, value_name = "SEQ")]
    from: Option<u64>,
    /// Exit after this many events (`started` and `lagged` not counted).
    #[arg(long)]
    count: Option<u64>,
    /// Print each message's JSON as received.
    #[arg(long, conflicts_with = "stats")]
    json: bool,
    /// Print events per second and lag counts once a second instead of each event.
    #[arg(long)]
    stats: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve_main(&args),
        Command::Tail(args) => tail_main(args),
    }
}

fn runtime(multi_thread: bool) -> io::Result<tokio::runtime::Runtime> {
    if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()
}

fn serve_main(args: &ServeArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match runtime(true) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herald: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve_node(args))
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

async fn serve_node(args: &ServeArgs) -> ExitCode {
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("herald: error: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    let local = match listener.local_addr() {
        Ok(local) => local,
        Err(e) => {
            eprintln!("herald: error: cannot read the listening address: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bus_config = BusConfig {
        capacity: to_usize(args.capacity),
        startup_capacity: to_usize(args.startup_capacity),
    };
    // The node's bus. On a read-only node its publish hook feeds the transfer extractor,
    // which publishes `transfers-available` for each `block-finalised` (see
    // `herald_core::transfers`); other roles get a plain bus.
    let node_role = match args.role {
        Role::Boot => NodeRole::Boot,
        Role::Validator => NodeRole::Validator,
        Role::Readonly => NodeRole::ReadOnly,
    };
    let source = Arc::new(SimulatedSource::new(
        Duration::from_millis(args.report_latency_ms),
        Duration::from_millis(args.report_jitter_ms),
        args.seed,
    ));
    let (bus, extractor) = node_bus(node_role, bus_config, ExtractorConfig::default(), source);
    let extractor = extractor.map(|extractor| (extractor.stats(), extractor.spawn()));
    let tap = bus.tap();
    let simulator = Simulator::new(SimConfig {
        role: args.role,
        rate: args.rate,
        validators: usize::from(args.validators),
        deploys: usize::from(args.deploys),
        seed: args.seed,
    });
    let config = ServerConfig {
        max_connections: to_usize(args.max_connections),
        on_lag: args.on_lag,
        max_behind: args.max_behind,
        send_buffer: args.send_buffer.map(to_usize),
        ..ServerConfig::default()
    };

    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let mut server = tokio::spawn(serve(listener, tap, config, async move {
        let _ = server_stopped.await;
    }));
    let (stop_node, node_stopped) = oneshot::channel::<()>();
    let node = run_node_thread(simulator, bus, node_stopped);
    tracing::info!(
        listen = %local,
        role = %args.role,
        rate = %args.rate,
        "herald serving a simulated node"
    );
    println!("herald: streaming on ws://{local}/ws/events");
    let _ = io::stdout().flush();

    let code = tokio::select! {
        signal = shutdown_signal() => {
            match signal {
                Ok(name) => tracing::info!("{name} received, shutting down"),
                Err(e) => tracing::error!("cannot wait for signals ({e}), shutting down"),
            }
            let _ = stop_server.send(());
            match (&mut server).await {
                Ok(Ok(())) => ExitCode::SUCCESS,
                Ok(Err(e)) => {
                    eprintln!("herald: error: server failed: {e}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("herald: error: server task failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        ended = &mut server => {
            match ended {
                Ok(Ok(())) => eprintln!("herald: error: server stopped unexpectedly"),
                Ok(Err(e)) => eprintln!("herald: error: server failed: {e}"),
                Err(e) => eprintln!("herald: error: server task failed: {e}"),
            }
            ExitCode::FAILURE
        }
    };
    // Streams are closed (1001) before the node stops, so no client sees the bus end first.
    let _ = stop_node.send(());
    if node.await.is_err() {
        tracing::error!("the simulated node's thread failed");
    }
    // With the node's bus dropped, the extractor finishes the blocks it accepted and ends.
    if let Some((stats, task)) = extractor {
        if let Err(e) = task.await {
            tracing::error!("transfer extractor task failed: {e}");
        }
        let c = stats.snapshot();
        tracing::info!(
            published = c.published,
            failed = c.failed,
            dropped_full = c.dropped_full,
            cache_hits = c.cache_hits,
            "transfer extractor stopped"
        );
    }
    tracing::info!("stopped");
    code
}

/// Runs the simulated node on a thread of its own (with a single-threaded runtime for its
/// pacing), so that a server busy with thousands of clients never delays the node's
/// publishing: the paced rate stays the rate asked for. Resolves when the node has stopped.
fn run_node_thread(
    simulator: Simulator,
    bus: herald_core::bus::Bus,
    stop: oneshot::Receiver<()>,
) -> oneshot::Receiver<()> {
    let (done, finished) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("herald-node".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => rt.block_on(simulator.run(bus, async move {
                    let _ = stop.await;
                })),
                Err(e) => tracing::error!("cannot start the simulated node's runtime: {e}"),
            }
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the simulated node's thread: {e}");
    }
    finished
}

/// Waits for SIGINT (Ctrl-C) or, on Unix, SIGTERM; returns which.
async fn shutdown_signal() -> io::Result<&'static str> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.map(|()| "SIGINT"),
            _ = terminate.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
    }
}

fn tail_main(args: TailArgs) -> ExitCode {
    let options = TailOptions {
        url: args.url,
        events: args.events,
        seq: args.seq,
        from: args.from,
        count: args.count,
        json: args.json,
        stats: args.stats,
    };
    let runtime = match runtime(false) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("herald tail: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = io::stdout();
    match runtime.block_on(tail::run(&options, stdout.lock())) {
        Ok(_) => ExitCode::SUCCESS,
        // The reader went away (`herald tail | head`): nothing left to say to anyone.
        Err(TailError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald tail: error: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

//! `herald-loadgen`: opens many WebSocket connections to a `/ws/events` server and measures
//! what they receive.
//!
//! ```text
//! herald-loadgen --url ws://127.0.0.1:40403/ws/events --conns 1000 --secs 10
//! ```
//!
//! Every connection asks for `seq=true`. After all connections are up and a warm-up, the
//! frames of a measurement window of `--secs` seconds are counted, and one line is printed:
//!
//! ```text
//! loadgen conns=1000 connected=1000 secs=10.00 frames=... frames_per_s=... events=...
//! events_per_s=... bytes_per_s=... lagged_notices=... missed=... gaps=0 dups=0 ...
//! p50_us=... p99_us=... p999_us=... latency_samples=... upgrade_p50_us=...
//! upgrade_p99_us=... upgrade_max_us=... upgrade_retries=...
//! ```
//!
//! `events_per_s` is the deliveries rate (event frames over every connection), `missed` the
//! sum of the `lagged` notices' counts, `gaps`/`dups` events skipped without a notice and
//! events received twice or out of order, per connection, over the whole run.
//!
//! **Connecting.** At most `--connect-concurrency` connections are being set up at a time.
//! An upgrade attempt (TCP connect, request, `101`) that fails or takes over 10 s is
//! retried, three attempts in all. `upgrade_p50_us`/`upgrade_p99_us`/`upgrade_max_us` are the
//! connections' times from their first attempt to their `101` (retries included; only
//! connections that came up), `upgrade_retries` the attempts that failed: a server that is
//! slow to answer new clients while it streams to others shows here even when every
//! connection came up in the end.
//!
//! **Latency.** The simulated node's block `timestamp` is its simulated block time in
//! milliseconds, one stamp for the two or three events of a block (and at `--rate max` it
//! runs ahead of the clock), so it cannot time a delivery to the microsecond. The load
//! generator measures on the receive side instead: for every event whose sequence number
//! is a multiple of `--sample-every`, each connection notes when it read it. Two measures
//! come from those samples:
//!
//! * **schedule** (`p50_us`.., with `--rate N`): both simulated nodes publish live event
//!   `k` at `origin + k / rate`. The origin is taken as the earliest `read - k / rate` over
//!   all samples, so the fastest delivery seen counts as 0 and every other sample is its
//!   delay beyond that: the server's fan-out and queueing, lag backlog included, and the
//!   client's own scheduling. It assumes the publisher keeps its schedule (the simulator's
//!   timer wakes once per millisecond, which adds up to ~1 ms of publish jitter to both
//!   servers alike).
//! * **fan-out spread** (`fan_p50_us`.., always; also `p50_us`.. without `--rate`): the
//!   time a connection read an event minus the earliest time any connection read it. It
//!   needs no schedule, but misses delay that every connection shares (a backlog).
//!
//! **File descriptors.** Each connection is a socket; thousands of them exceed the common
//! default soft limit of 1024 open files, so the soft `RLIMIT_NOFILE` is raised towards the
//! hard limit at start (an error says so when the hard limit is too low).

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use fastwebsockets::{OpCode, Role, WebSocket};
use herald_bench::loadgen::{
    Frame, Sample, SeqTracker, Summary, classify, fanout_latency, percentiles, schedule_latency,
    upgrade_percentiles,
};
use herald_bench::stream::Prefixed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

#[derive(Debug, Parser)]
#[command(
    name = "herald-loadgen",
    about = "Open many /ws/events connections and measure deliveries and latency"
)]
struct Args {
    /// The stream to connect to; `seq=true` is added to the query.
    #[arg(long, default_value = "ws://127.0.0.1:40403/ws/events")]
    url: String,
    /// Connections to open.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    conns: u32,
    /// Length of the measurement window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Seconds between the last connection coming up and the window opening.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Worker threads of the client runtime (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Take a latency sample of every event whose sequence number is a multiple of this.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    sample_every: u64,
    /// The server's publish rate in events per second, when it is fixed (not `max`): latency
    /// is then measured against the publish schedule (see the module docs).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connect_concurrency: u32,
}

/// Where `ws://host:port/path?query` points.
#[derive(Debug, Clone)]
struct Target {
    host_port: String,
    path_and_query: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("--url {url:?}: only ws:// URLs are supported"))?;
    let (host_port, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/ws/events"),
    };
    if host_port.is_empty() || !host_port.contains(':') {
        return Err(format!("--url {url:?}: expected ws://HOST:PORT/PATH"));
    }
    let path_and_query = if path.contains("seq=") {
        path.to_owned()
    } else if path.contains('?') {
        format!("{path}&seq=true")
    } else {
        format!("{path}?seq=true")
    };
    Ok(Target {
        host_port: host_port.to_owned(),
        path_and_query,
    })
}

/// Raises the soft open-files limit to `want` (or as far as the hard limit allows).
fn raise_nofile_limit(want: u64) -> Result<u64, String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(format!("getrlimit: {}", io::Error::last_os_error()));
    }
    if limit.rlim_cur >= want {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: want.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: `raised` is a valid rlimit whose soft value does not exceed the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(format!("setrlimit: {}", io::Error::last_os_error()));
    }
    Ok(raised.rlim_cur)
}

/// Connects and upgrades with a minimal HTTP/1.1 request.
async fn connect(target: &Target) -> Result<WebSocket<Prefixed<TcpStream>>, String> {
    let mut tcp = TcpStream::connect(&target.host_port)
        .await
        .map_err(|e| format!("connect {}: {e}", target.host_port))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.path_and_query, target.host_port
    );
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send upgrade request: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err("upgrade response head over 16 KiB".to_owned());
        }
        let mut chunk = [0u8; 2048];
        let n = tcp
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read upgrade response: {e}"))?;
        if n == 0 {
            return Err("connection closed during the upgrade".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let status_line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    if !status_line.starts_with(b"HTTP/1.1 101") {
        return Err(format!(
            "upgrade refused: {}",
            String::from_utf8_lossy(status_line)
        ));
    }
    let stream = Prefixed::new(buf.split_off(head_end), tcp);
    let mut ws = WebSocket::after_handshake(stream, Role::Client);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    Ok(ws)
}

const WARMUP: u8 = 0;
const MEASURING: u8 = 1;
const DONE: u8 = 2;

/// How long one upgrade attempt (TCP connect, request, `101`) may take.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Upgrade attempts per connection before it is given up on.
const UPGRADE_ATTEMPTS: u64 = 3;

/// What one connection hands back.
#[derive(Default)]
struct ConnResult {
    connected: bool,
    /// From the first upgrade attempt to the `101`, retries included.
    upgrade_us: Option<u64>,
    /// Upgrade attempts that failed.
    upgrade_retries: u64,
    error: Option<String>,
    /// Ended before the run did.
    dropped: bool,
    whole_run: SeqTracker,
    window: SeqTracker,
    frames: u64,
    bytes: u64,
    samples: Vec<(u64, Instant)>,
}

async fn run_connection(
    target: Arc<Target>,
    phase: Arc<AtomicU8>,
    mut stop: watch::Receiver<bool>,
    connecting: Arc<Semaphore>,
    sample_every: u64,
    mut reporter: ConnectReporter,
) -> ConnResult {
    let mut out = ConnResult::default();
    let permit = connecting.acquire().await;
    let started = Instant::now();
    let mut ws = {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failed = match tokio::time::timeout(UPGRADE_TIMEOUT, connect(&target)).await {
                Ok(Ok(ws)) => break ws,
                Ok(Err(e)) => e,
                Err(_) => format!("upgrade timed out ({} s)", UPGRADE_TIMEOUT.as_secs()),
            };
            out.upgrade_retries += 1;
            if attempt >= UPGRADE_ATTEMPTS {
                out.error = Some(format!(
                    "{failed} (attempt {attempt} of {UPGRADE_ATTEMPTS})"
                ));
                return out;
            }
            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        }
    };
    drop(permit);
    out.upgrade_us = Some(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    out.connected = true;
    reporter.report(true);
    let mut tracker = SeqTracker::new();
    let mut window_start: Option<SeqTracker> = None;
    let mut window_end: Option<SeqTracker> = None;
    // One stop future for the whole connection: making (and dropping) a fresh
    // `changed()` future per frame cost the load generator about 5 % of its CPU.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        let frame = tokio::select! {
            biased;
            _ = &mut stopped => break,
            frame = ws.read_frame() => frame,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                out.error = Some(e.to_string());
                out.dropped = true;
                break;
            }
        };
        match frame.opcode {
            OpCode::Text => {}
            OpCode::Close => {
                out.dropped = true;
                break;
            }
            _ => continue,
        }
        if !frame.fin {
            out.error = Some("fragmented message (the servers send whole frames)".to_owned());
            out.dropped = true;
            break;
        }
        // Relaxed: the phase only gates counting; no data is handed over through it.
        let now_phase = phase.load(Ordering::Relaxed);
        if now_phase == DONE && window_end.is_none() {
            window_end = Some(tracker.clone());
        }
        if now_phase == MEASURING && window_start.is_none() {
            window_start = Some(tracker.clone());
        }
        let classified = match classify(&frame.payload) {
            Ok(c) => c,
            Err(e) => {
                out.error = Some(format!("bad frame: {e}"));
                out.dropped = true;
                break;
            }
        };
        tracker.observe(classified);
        if now_phase == MEASURING {
            out.frames += 1;
            out.bytes += frame.payload.len() as u64;
            if let Frame::Event { seq: Some(seq), .. } = classified
                && seq % sample_every == 0
            {
                out.samples.push((seq, Instant::now()));
            }
        }
    }
    // A connection that dropped before the window closed counts what it had.
    let end = window_end.unwrap_or_else(|| tracker.clone());
    out.window = window_start.map_or_else(SeqTracker::new, |s| end.since(&s));
    out.whole_run = tracker;
    if !out.dropped {
        // Best effort: the run is over either way.
        let close = fastwebsockets::Frame::close(1000, b"");
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.write_frame(close)).await;
    }
    out
}

async fn run(args: Args, target: Target) -> Result<Summary, String> {
    let origin = Instant::now();
    let target = Arc::new(target);
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let (stop_tx, stop_rx) = watch::channel(false);
    let connecting = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let (up_tx, mut up_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let tasks: Vec<_> = (0..args.conns)
        .map(|_| {
            let (target, phase, stop, connecting) = (
                target.clone(),
                phase.clone(),
                stop_rx.clone(),
                connecting.clone(),
            );
            let up = up_tx.clone();
            let sample_every = args.sample_every;
            tokio::spawn(run_connection(
                target,
                phase,
                stop,
                connecting,
                sample_every,
                ConnectReporter::new(up),
            ))
        })
        .collect();
    drop(up_tx);
    // Wait until every connection is up or has failed.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut settled = 0;
    let mut up = 0;
    while settled < args.conns {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, up_rx.recv()).await {
            Ok(Some(ok)) => {
                settled += 1;
                up += usize::from(ok);
            }
            Ok(None) => break,
            Err(_) => {
                return Err(format!(
                    "only {settled} of {} connections settled in 120 s",
                    args.conns
                ));
            }
        }
    }
    if up == 0 {
        let _ = stop_tx.send(true);
        let first_error = match tasks.into_iter().next() {
            Some(task) => task.await.ok().and_then(|r| r.error),
            None => None,
        };
        return Err(format!(
            "no connection to {}{} came up: {}",
            target.host_port,
            target.path_and_query,
            first_error.unwrap_or_else(|| "unknown error".to_owned())
        ));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_secs)).await;
    // Relaxed: see the load in `run_connection`.
    phase.store(MEASURING, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.secs)).await;
    phase.store(DONE, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(result)) => results.push(result),
            Ok(Err(e)) => return Err(format!("a connection task failed: {e}")),
            Err(_) => return Err("a connection did not stop within 30 s".to_owned()),
        }
    }
    let mut window = SeqTracker::new();
    let mut whole_run = SeqTracker::new();
    for r in &results {
        window.add(&r.window);
        whole_run.add(&r.whole_run);
    }
    let samples: Vec<Sample> = results
        .iter()
        .flat_map(|r| r.samples.iter())
        .map(|&(seq, at)| {
            let nanos = at.saturating_duration_since(origin).as_nanos();
            (seq, u64::try_from(nanos).unwrap_or(u64::MAX))
        })
        .collect();
    let fanout = fanout_latency(&samples);
    let (latency_us, latency_kind) = match args.rate {
        Some(rate) => (percentiles(&schedule_latency(&samples, rate)), "schedule"),
        None => (percentiles(&fanout), "fanout"),
    };
    let upgrade_us: Vec<u64> = results.iter().filter_map(|r| r.upgrade_us).collect();
    if let Some(e) = results.iter().find_map(|r| r.error.as_ref()) {
        eprintln!("herald-loadgen: note: a connection reported: {e}");
    }
    Ok(Summary {
        conns: args.conns as usize,
        connected: results.iter().filter(|r| r.connected).count(),
        secs,
        frames: results.iter().map(|r| r.frames).sum(),
        bytes: results.iter().map(|r| r.bytes).sum(),
        window,
        whole_run,
        dropped: results.iter().filter(|r| r.dropped).count(),
        latency_us,
        latency_kind,
        fanout_us: percentiles(&fanout),
        latency_samples: fanout.len(),
        upgrade_us: upgrade_percentiles(&upgrade_us),
        upgrade_retries: results.iter().map(|r| r.upgrade_retries).sum(),
    })
}

/// Sends `true` once the connection is up (or `false` if it never comes up), exactly once.
struct ConnectReporter(Option<tokio::sync::mpsc::UnboundedSender<bool>>);

impl ConnectReporter {
    fn new(tx: tokio::sync::mpsc::UnboundedSender<bool>) -> Self {
        Self(Some(tx))
    }
    fn report(&mut self, up: bool) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(up);
        }
    }
}

impl Drop for ConnectReporter {
    fn drop(&mut self) {
        self.report(false);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let valid_secs = args.secs.is_finite() && args.secs > 0.0;
    let valid_warmup = args.warmup_secs.is_finite() && args.warmup_secs >= 0.0;
    if !valid_secs || !valid_warmup {
        eprintln!("herald-loadgen: error: --secs must be positive and --warmup-secs not negative");
        return ExitCode::from(2);
    }
    let target = match parse_url(&args.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("herald-loadgen: error: {e}");
            return ExitCode::from(2);
        }
    };
    let want = u64::from(args.conns) + 256;
    match raise_nofile_limit(want) {
        Ok(got) if got < want => {
            eprintln!(
                "herald-loadgen: error: {} connections need about {want} open files; the hard \
                 limit allows {got} (raise it with `ulimit -Hn` as root)",
                args.conns
            );
            return ExitCode::from(2);
        }
        Ok(_) => {}
        Err(e) => eprintln!("herald-loadgen: warning: cannot raise the open-files limit: {e}"),
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-loadgen: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, target)) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald-loadgen: error: {e}");
            ExitCode::FAILURE
        }
    }
}

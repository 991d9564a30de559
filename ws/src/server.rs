//! The `/ws/events` server: configuration, the standalone [`serve`] loop, and
//! [`EventsService`] for mounting the endpoint in an existing hyper (or, with the `axum`
//! feature, axum) server.
//!
//! ```no_run
//! use herald_core::bus::Bus;
//! use herald_ws::{serve, ServerConfig};
//!
//! # async fn run() -> std::io::Result<()> {
//! let bus = Bus::default();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:40403").await?;
//! serve(listener, bus.tap(), ServerConfig::default(), async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
//!
//! Who does what: [`crate::http`] answers every HTTP request (SPEC section 1) and, for a valid
//! upgrade, subscribes to the bus and spawns the connection; `conn.rs` runs it
//! (SPEC sections 2 to 5); [`crate::metrics`] counts. [`serve`] answers HTTP on a thread of
//! its own and streams on the caller's runtime.

use std::convert::Infallible;
use std::fmt;
use std::future::{Future, Ready, ready};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use herald_core::bus::BusTap;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::SockRef;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use crate::metrics::Metrics;

/// How long [`serve`] waits for connections to finish their close handshakes after the
/// shutdown signal. Connections give up on their own after [`CLOSE_TIMEOUT`].
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1800);

/// How long a connection that sent its close frame waits for the client's before it drops
/// the TCP connection.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the server does with a client the bus had to skip events for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnLag {
    /// Send the `lagged` notice (SPEC section 4) and carry on.
    #[default]
    Notify,
    /// Close the connection with 1008. Lags that are not the client's doing are still sent
    /// as notices: with `from=`, any before its first live event (its `from=` point is no
    /// longer retained); joined live, the startup segment's overflow. A client that joined
    /// live and was lapped before reading its first live event is closed.
    Close,
}

impl fmt::Display for OnLag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnLag::Notify => "notify",
            OnLag::Close => "close",
        })
    }
}

/// An `--on-lag` value other than `notify` or `close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownOnLag(pub String);

impl fmt::Display for UnknownOnLag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown on-lag policy `{}`; valid values: notify, close",
            self.0
        )
    }
}

impl std::error::Error for UnknownOnLag {}

impl FromStr for OnLag {
    type Err = UnknownOnLag;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "notify" => Ok(OnLag::Notify),
            "close" => Ok(OnLag::Close),
            _ => Err(UnknownOnLag(s.to_owned())),
        }
    }
}

/// Settings of a `/ws/events` server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Most open streams; requests beyond it are answered `503`. Default 10,000.
    pub max_connections: usize,
    /// A TCP connection that has not sent a complete HTTP request head within this time is
    /// closed ([`serve`] only; an embedding server sets its own). Default 10 s.
    pub handshake_timeout: Duration,
    /// A client the server has heard nothing from for this long is pinged. Default 20 s.
    pub ping_interval: Duration,
    /// A client that has not answered a ping within this time is dropped. Default 10 s.
    pub ping_timeout: Duration,
    /// Largest client message, in bytes; larger ones are closed with 1009. Default 4096.
    pub max_message_size: usize,
    /// What to do with a client that lags. Default [`OnLag::Notify`].
    pub on_lag: OnLag,
    /// Most events one connection writes per flush. Default 128.
    pub write_batch: usize,
    /// Most live events a client may fall behind the node before it skips ahead to the
    /// newest `max_behind / 2`, told with a `lagged` notice (and, under [`OnLag::Close`],
    /// closed). `None` (the default): only the bus capacity bounds it. Smaller than the
    /// capacity, it bounds how stale a slow client's events get without shortening how far
    /// back `from=` can resume; checked once per batch, not while a `from=` client catches
    /// up to where it joined.
    pub max_behind: Option<u64>,
    /// The kernel send buffer (`SO_SNDBUF`) of each accepted connection, in bytes
    /// ([`serve`] only; an embedding server configures its own sockets, e.g. with axum
    /// 0.8's `listener.tap_io(|tcp| ...)` and `socket2::SockRef::from(tcp)
    /// .set_send_buffer_size(n)`). `None` (the
    /// default): the kernel's autotuning, which on Linux lets one connection's buffer
    /// grow to `net.ipv4.tcp_wmem`'s maximum (4 MiB by default); on loopback it starts at
    /// 3.8 MB. What waits there is out of the server's reach: `max_behind` cannot
    /// skip it, so a slow client's oldest events can be seconds old. A bound here keeps
    /// that backlog to a few batches; with `max_behind` it bounds the tail of a slow
    /// client's latency (`bench/RESULTS.md`). It also caps one connection's rate at about
    /// `send_buffer` per round trip (64 KiB over a 50 ms path: 1.3 MB/s, some 550 block
    /// events a second): size it for the farthest client you serve. Linux doubles the
    /// value for its bookkeeping and raises it to its minimum (4608). Between
    /// [`MIN_SEND_BUFFER`] and [`MAX_SEND_BUFFER`].
    pub send_buffer: Option<usize>,
}

/// The smallest [`ServerConfig::send_buffer`].
pub const MIN_SEND_BUFFER: usize = 4096;
/// The largest [`ServerConfig::send_buffer`] (1 GiB; `SO_SNDBUF` takes a C `int`, which
/// the kernel doubles).
pub const MAX_SEND_BUFFER: usize = 1 << 30;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            ping_timeout: Duration::from_secs(10),
            max_message_size: 4096,
            on_lag: OnLag::Notify,
            write_batch: 128,
            max_behind: None,
            send_buffer: None,
        }
    }
}

/// A [`ServerConfig`] value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ServerConfig {
    /// Checks that every value can work: durations and sizes must be non-zero, and
    /// `send_buffer` within its bounds.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let zero = |name: &str| Err(ConfigError(format!("{name} must be greater than zero")));
        if self.handshake_timeout.is_zero() {
            return zero("handshake_timeout");
        }
        if self.ping_interval.is_zero() {
            return zero("ping_interval");
        }
        if self.ping_timeout.is_zero() {
            return zero("ping_timeout");
        }
        if self.write_batch == 0 {
            return zero("write_batch");
        }
        if self.max_behind == Some(0) {
            return zero("max_behind");
        }
        if let Some(n) = self.send_buffer
            && !(MIN_SEND_BUFFER..=MAX_SEND_BUFFER).contains(&n)
        {
            return Err(ConfigError(format!(
                "send_buffer must be between {MIN_SEND_BUFFER} and {MAX_SEND_BUFFER} bytes, \
                 not {n}"
            )));
        }
        Ok(())
    }

    /// This config with every value that [`validate`](Self::validate) refuses brought to
    /// the nearest working one (1 ms, 1 event, the send buffer's bounds).
    fn clamped(mut self) -> Self {
        let min = Duration::from_millis(1);
        self.handshake_timeout = self.handshake_timeout.max(min);
        self.ping_interval = self.ping_interval.max(min);
        self.ping_timeout = self.ping_timeout.max(min);
        self.write_batch = self.write_batch.max(1);
        self.max_behind = self.max_behind.map(|n| n.max(1));
        self.send_buffer = self
            .send_buffer
            .map(|n| n.clamp(MIN_SEND_BUFFER, MAX_SEND_BUFFER));
        self
    }
}

/// State shared by an [`EventsService`], its clones and its connections.
pub(crate) struct Shared {
    pub(crate) bus: BusTap,
    pub(crate) config: ServerConfig,
    pub(crate) metrics: Arc<Metrics>,
    /// `true` once shutdown began: connections close with 1001, new ones are refused.
    pub(crate) shutdown: watch::Sender<bool>,
    /// Notified when the last stream ends.
    idle: Notify,
    /// The runtime streams run on when it is not the one answering HTTP ([`serve`]'s
    /// handshake thread hands every upgraded connection to the caller's runtime). `None`:
    /// they run where their handshake did.
    pub(crate) streams: Option<tokio::runtime::Handle>,
}

/// One of `max_connections` stream slots, held from the `101` answer until the connection
/// ends. Counted in [`Metrics::connections`].
pub(crate) struct StreamSlot {
    shared: Arc<Shared>,
}

impl StreamSlot {
    /// Takes a slot, or `None` when `max_connections` are taken.
    pub(crate) fn acquire(shared: &Arc<Shared>) -> Option<StreamSlot> {
        let max = shared.config.max_connections as u64;
        // Relaxed: the count only bounds itself; nothing else is published through it.
        let taken =
            shared
                .metrics
                .connections
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                });
        taken.ok().map(|_| StreamSlot {
            shared: shared.clone(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        // AcqRel: pairs with the Acquire load in `EventsService::wait_idle`, so a waiter
        // that sees 0 sees every stream's teardown (its subscriber dropped) before it.
        if self
            .shared
            .metrics
            .connections
            .fetch_sub(1, Ordering::AcqRel)
            == 1
        {
            self.shared.idle.notify_waiters();
        }
    }
}

/// A hyper service answering `/ws/events`, `/metrics` and `/healthz` (anything else: `404`),
/// to mount in an existing hyper server. Clones share connections, limit and metrics.
///
/// ```no_run
/// use herald_core::bus::Bus;
/// use herald_ws::{EventsService, ServerConfig};
/// use hyper::server::conn::http1;
/// use hyper_util::rt::TokioIo;
///
/// # async fn run() -> std::io::Result<()> {
/// let bus = Bus::default();
/// let service = EventsService::new(bus.tap(), ServerConfig::default());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// loop {
///     let (tcp, _) = listener.accept().await?;
///     let service = service.clone();
///     tokio::spawn(async move {
///         // `with_upgrades` is required for the WebSocket upgrade.
///         let _ = http1::Builder::new()
///             .serve_connection(TokioIo::new(tcp), service)
///             .with_upgrades()
///             .await;
///     });
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct EventsService {
    shared: Arc<Shared>,
}

impl fmt::Debug for EventsService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventsService")
            .field("config", &self.shared.config)
            .field("metrics", &self.shared.metrics)
            .finish()
    }
}

impl EventsService {
    /// A service streaming `bus`. Zero durations or `write_batch` in `config` (which
    /// [`ServerConfig::validate`] refuses) are raised to 1 ms and 1 event.
    pub fn new(bus: BusTap, config: ServerConfig) -> Self {
        Self::streaming_on(bus, config, None)
    }

    /// As [`new`](Self::new); upgraded connections stream on `streams` when given.
    fn streaming_on(
        bus: BusTap,
        config: ServerConfig,
        streams: Option<tokio::runtime::Handle>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                bus,
                config: config.clamped(),
                metrics: Arc::new(Metrics::default()),
                shutdown: watch::Sender::new(false),
                idle: Notify::new(),
                streams,
            }),
        }
    }

    /// The counters of this service and its connections.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Closes every open stream with 1001 and answers later `/ws/events` requests with `503`.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Waits until no stream is open, or `timeout` passed; returns whether none is open.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a last stream ending in between wakes us.
            notified.as_mut().enable();
            // Acquire: pairs with the AcqRel decrement in `StreamSlot::drop`.
            if self.shared.metrics.connections.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Answers one request, whatever its body type (for other frameworks). A `101` answer
    /// has spawned the task that streams the connection once the server hands it over.
    pub fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>> {
        crate::http::respond(&self.shared, request)
    }

    /// An axum router serving `/ws/events`, `/metrics` and `/healthz` with this service;
    /// merge or nest it into an app served with `axum::serve`.
    #[cfg(feature = "axum")]
    pub fn axum_router(&self) -> axum::Router {
        use axum::routing::any;
        let service = self.clone();
        let handler = move |request: axum::extract::Request| {
            let service = service.clone();
            async move { service.handle(request) }
        };
        axum::Router::new()
            .route("/ws/events", any(handler.clone()))
            .route("/metrics", any(handler.clone()))
            .route("/healthz", any(handler))
    }
}

impl hyper::service::Service<Request<Incoming>> for EventsService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        ready(Ok(self.handle(request)))
    }
}

/// An axum router serving `/ws/events`, `/metrics` and `/healthz` from `bus`, to merge or
/// nest into an existing app (`app.merge(axum_router(bus, config))`).
#[cfg(feature = "axum")]
pub fn axum_router(bus: BusTap, config: ServerConfig) -> axum::Router {
    EventsService::new(bus, config).axum_router()
}

/// Accepts on `listener` until `shutdown` resolves, then closes every connection with 1001
/// and returns within 2 s.
///
/// HTTP is answered on a thread of its own (`herald-handshakes`, a single-threaded
/// runtime): accepting, reading requests, the `101` and the other answers never wait
/// behind the streams. Each upgraded connection then moves to the runtime `serve` was
/// called on and streams there. With a thousand busy streams sharing the runtime, a new
/// client's `101` used to wait its turn behind all of them (p99 up to 0.8 s at 1000
/// connections on two cores, bench/RESULTS.md); [`EventsService`] mounted in another
/// server keeps that server's arrangement.
///
/// # Errors
///
/// `InvalidInput` when `config` fails [`ServerConfig::validate`]; the OS error when the
/// handshake thread or its runtime cannot be started. Accept errors (such as running out
/// of file descriptors) are logged and retried, never returned.
pub async fn serve(
    listener: TcpListener,
    bus: BusTap,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    config
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let streams = Handle::try_current().map_err(|e| {
        std::io::Error::other(format!("serve needs a tokio runtime to stream on: {e}"))
    })?;
    let service = EventsService::streaming_on(bus, config, Some(streams));
    let listener = listener.into_std()?;
    let (answered, handshakes_done) = oneshot::channel();
    let handshakes = service.clone();
    std::thread::Builder::new()
        .name("herald-handshakes".to_owned())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|runtime| {
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener)?;
                        accept(listener, &handshakes, shutdown).await;
                        Ok(())
                    })
                });
            let _ = answered.send(result);
        })?;
    let accepted = handshakes_done
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the handshake thread panicked")));
    // Streams that are still open get their 1001 (`accept` signalled the shutdown).
    let started = Instant::now();
    service.shutdown();
    let remaining = SHUTDOWN_GRACE.saturating_sub(started.elapsed());
    if !service.wait_idle(remaining).await {
        tracing::warn!(
            open = service.metrics().snapshot().connections,
            "connections still closing at shutdown deadline"
        );
    }
    accepted
}

/// Set once a failure to set `SO_SNDBUF` has been logged as a warning.
static SNDBUF_WARNED: AtomicBool = AtomicBool::new(false);

/// The handshake thread's loop: accepts and answers HTTP until `shutdown` resolves, then
/// stops accepting, signals the streams to close and drops the handshakes in progress.
async fn accept(
    listener: TcpListener,
    service: &EventsService,
    shutdown: impl Future<Output = ()>,
) {
    let config = &service.shared.config;
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.handshake_timeout)
        // A client may shut down its side once its request is sent (`nc -N`, scripts); it
        // still gets its answer. Without this, hyper drops the connection when it sees that
        // EOF before the answer is written, and the answer is lost (or not: it is a race).
        .half_close(true)
        .max_buf_size(16 * 1024);
    // HTTP connections before their upgrade (or serving /metrics and /healthz).
    let mut handshakes = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // Frames are batched by the connection; send each batch at once.
                    let _ = tcp.set_nodelay(true);
                    if let Some(bytes) = config.send_buffer
                        && let Err(e) = SockRef::from(&tcp).set_send_buffer_size(bytes)
                    {
                        // Once as a warning: a platform that refuses it refuses it for
                        // every connection.
                        // Relaxed: a log flag; nothing else is published through it.
                        if SNDBUF_WARNED.swap(true, Ordering::Relaxed) {
                            tracing::debug!(%peer, error = %e, bytes, "could not set SO_SNDBUF");
                        } else {
                            tracing::warn!(%peer, error = %e, bytes, "could not set SO_SNDBUF");
                        }
                    }
                    let connection = http
                        .serve_connection(TokioIo::new(tcp), service.clone())
                        .with_upgrades();
                    handshakes.spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(%peer, error = %e, "HTTP connection ended");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
        }
    }
    drop(listener);
    service.shutdown();
    // Requests still in their handshake are dropped; streams get their 1001.
    handshakes.shutdown().await;
}

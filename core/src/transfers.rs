//! Transfer extraction on read-only nodes: the `transfers-available` event (SPEC section 3).
//!
//! Transfers are not known when a block is created or added; the node learns them by
//! replaying the finalised block. For every `block-finalised` published on a read-only
//! node's bus, the [`Extractor`] asks the node for the block's report (a
//! [`BlockReportSource`], which the node implements: herald ships no blockchain) and
//! publishes one `transfers-available` into the same bus. Its `deploys` lists every deploy
//! of the block, in block order, each with its transfers (an empty list where it made none),
//! so a client waiting for its deploy gets an answer.
//!
//! The node this replaces spawned one unbounded task per block, fed from the lossy channel
//! the WebSocket clients read: a lagging reader lost blocks, results came out in completion
//! order, and a burst spawned unbounded tasks. Here:
//!
//! # Fed losslessly, never blocking a publisher
//!
//! The extractor is fed by the bus's [`PublishHook`], not by a subscriber. A subscriber
//! that falls a ring's length behind loses events for good (the ring keeps only the last
//! `capacity`), and recovering them would need a second buffer as large as the backlog
//! anyway; the hook sees every event on the publishing thread, whatever the subscribers do.
//! For a `block-finalised` it reserves a place in the queue (a compare-and-swap on the
//! queue's occupancy count) and pushes the shared entry into a channel; it never waits.
//! Other events cost one `match` and one atomic add.
//!
//! **Full queue: drop and count.** [`ExtractorConfig::queue_capacity`] bounds the blocks
//! accepted but not yet started (requests in flight are bounded separately, by
//! `concurrency`). When it is full, the new `block-finalised` is *dropped*: it gets no
//! `transfers-available`, and [`ExtractorCounters::dropped_full`] counts it. Waiting
//! instead would stall the node's publish path (SPEC 5: a publisher never waits), which is
//! worse than a counted gap. A full queue means the source has been slower than
//! finalisation for `queue_capacity` blocks in a row; the default (1024) is many minutes of
//! a real node's finalisation.
//!
//! # In finalisation order, at most K at once
//!
//! Blocks are started in the sequence order of their `block-finalised` events, at most
//! [`ExtractorConfig::concurrency`] (K) at once, and their `transfers-available` are
//! published strictly in that order: a block that completes early waits for the blocks
//! before it. A failing block never holds later ones forever: each attempt is bounded by
//! [`ExtractorConfig::attempt_timeout`], and attempts by `max_attempts`.
//!
//! Publishers on several threads may reach the hook in a different order than their
//! sequence numbers (a publish claims its number, then calls the hook). The extractor
//! therefore holds each block in a small reorder buffer, sorted by sequence number, until
//! it knows no earlier block can still arrive: when the number of hook calls, plus the
//! extractor's own publishes (which do not pass through the hook), equals the number of
//! events published, every publish up to that point has finished its hook call.
//! If publishing never pauses that long, a block waits at most
//! [`ExtractorConfig::reorder_grace`]; a block that then arrives after a later one was
//! started is still extracted, right away, and counted in
//! [`ExtractorCounters::out_of_order`]. With one publishing thread (a node's finalisation
//! loop) order is exact and nothing waits.
//!
//! # Failures: retried, then counted, and no event
//!
//! A failing or silent source is retried with exponential backoff
//! ([`ExtractorConfig::initial_backoff`] doubling up to `max_backoff`), up to
//! [`ExtractorConfig::max_attempts`] attempts in all. A block that still has no report is
//! logged (`tracing` at `warn`, with its hash and the last error), counted in
//! [`ExtractorCounters::failed`], and publishes **no** `transfers-available`; the next
//! block goes on. Publishing empty transfer lists instead would tell a waiting client
//! "your deploy made no transfer", which is false and indistinguishable from a true
//! answer: a wallet could conclude that a payment did not happen. Schema version 1 has no
//! field to say "unknown", so the honest answer is silence, a log line and a counter.
//!
//! # Cache
//!
//! The last [`ExtractorConfig::cache_capacity`] reports are kept by block hash (the oldest
//! inserted is evicted first). A block whose report is cached (finalised again, or
//! replayed) is answered without calling the source ([`ExtractorCounters::cache_hits`]).
//!
//! # Read-only nodes only
//!
//! [`node_bus`] builds a node's bus: with the extractor for [`NodeRole::ReadOnly`], a plain
//! bus with no hook for a validator (or boot node), on which `transfers-available` is never
//! published and no source is called.
//!
//! # Lifecycle
//!
//! [`Extractor::spawn`] runs the extractor as one Tokio task. The hook (which owns the
//! sending end of the task's channel) is held only by the node's bus handles; the task
//! publishes through a handle of the same bus that does not carry the hook. So when the
//! node drops its last handle (it shuts down), the hook and the channel's sender go with
//! it, and the task learns at once, from its channel closing: it waits on no timer while
//! idle. It then finishes the blocks it accepted, publishes their transfers and drops its
//! handle, which closes the bus: subscribers drain and see `Closed`. Aborting the task
//! stops it at once (requests in flight are dropped, and blocks finalised afterwards are
//! counted in [`ExtractorCounters::dropped_stopped`]).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use herald_core::bus::BusConfig;
//! use herald_core::event::{BlockInfo, DeployInfo, Event, EventKind};
//! use herald_core::transfers::{node_bus, ExtractorConfig, NodeRole, SimulatedSource};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! // 5 ms per report, plus up to 2 ms of jitter.
//! let source = Arc::new(SimulatedSource::new(Duration::from_millis(5), Duration::from_millis(2), 7));
//! let (bus, extractor) =
//!     node_bus(NodeRole::ReadOnly, BusConfig::default(), ExtractorConfig::default(), source);
//! let extractor = extractor.expect("a read-only node extracts transfers");
//! let stats = extractor.stats();
//! let task = extractor.spawn();
//! bus.seal_startup();
//! let mut client = bus.subscribe();
//!
//! let deploy = DeployInfo {
//!     id: "3045aa".into(), cost: 10, deployer: "04bb".into(), errored: false, transfers: None,
//! };
//! bus.publish(Event::BlockFinalised(BlockInfo {
//!     block_hash: "9f2c".into(), block_number: 42, timestamp: 0, parent_hashes: vec![],
//!     justification_hashes: vec![], deploys: vec![deploy.clone()], creator: "04cc".into(),
//!     seq_num: 1,
//! }));
//! drop(bus); // the node shuts down: the extractor finishes its block, then the bus closes
//!
//! let mut seen = Vec::new();
//! while let Ok(entry) = client.recv().await {
//!     seen.push(entry.event().clone());
//! }
//! assert_eq!(seen[0].kind(), EventKind::BlockFinalised);
//! let Event::TransfersAvailable(info) = &seen[1] else { panic!("{:?}", seen[1]) };
//! assert_eq!((info.block_hash.as_str(), info.block_number), ("9f2c", 42));
//! assert_eq!(info.deploys.len(), 1);
//! assert_eq!(info.deploys[0].transfers, SimulatedSource::transfers(&deploy));
//! task.await.unwrap();
//! assert_eq!(stats.snapshot().published, 1);
//! # });
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::bus::{Bus, BusConfig, BusEntryRef, PublishHook};
use crate::event::{BlockInfo, DeployInfo, DeployTransfers, Event, Transfer, TransfersInfo};

/// How soon a block held back for order is looked at again (a publish in flight finishes
/// in microseconds; this is the timer's resolution).
const REORDER_TICK: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------------
// The node's side
// ---------------------------------------------------------------------------------------------

/// Why a [`BlockReportSource`] could not report a block. Its message is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportError(String);

impl ReportError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// The message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReportError {}

/// What [`BlockReportSource::report`] returns.
pub type ReportFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<DeployTransfers>, ReportError>> + Send + 'a>>;

/// The node's side of extraction: replays a finalised block (or reads its stored report)
/// and returns its deploys with their transfers.
///
/// The report may omit deploys that made no transfer and may list them in any order: the
/// extractor publishes every deploy of the block, in block order, with an empty list for
/// those the report does not name. Entries naming a deploy that is not in the block are
/// ignored and counted ([`ExtractorCounters::unmatched_deploys`]). An error, or no answer
/// within [`ExtractorConfig::attempt_timeout`], is retried.
pub trait BlockReportSource: Send + Sync + 'static {
    /// The deploys of `block` with their transfers.
    fn report<'a>(&'a self, block: &'a BlockInfo) -> ReportFuture<'a>;
}

// ---------------------------------------------------------------------------------------------
// Configuration and roles
// ---------------------------------------------------------------------------------------------

/// How an [`Extractor`] runs. See the module docs for what each knob trades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractorConfig {
    /// Most report requests in flight at once (K); at least 1.
    pub concurrency: usize,
    /// Most blocks accepted but not yet started; a `block-finalised` beyond it is dropped
    /// and counted. At least 1.
    pub queue_capacity: usize,
    /// Reports kept for blocks seen again; 0 disables the cache.
    pub cache_capacity: usize,
    /// Attempts per block, the first included; at least 1.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled after each further failure.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// An attempt with no answer after this long fails (and is retried).
    pub attempt_timeout: Duration,
    /// Longest a block is held back waiting for an earlier one still being published on
    /// another thread.
    pub reorder_grace: Duration,
}

impl Default for ExtractorConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            queue_capacity: 1024,
            cache_capacity: 256,
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(30),
            reorder_grace: Duration::from_millis(20),
        }
    }
}

impl ExtractorConfig {
    /// The configuration actually used: the lower bounds documented on each field applied.
    #[must_use]
    pub fn normalised(self) -> Self {
        Self {
            concurrency: self.concurrency.max(1),
            queue_capacity: self.queue_capacity.max(1),
            max_attempts: self.max_attempts.max(1),
            ..self
        }
    }
}

/// What kind of node owns the bus: only read-only nodes replay blocks, so only they extract
/// transfers (SPEC 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeRole {
    /// The bootstrap node (a validator that runs the genesis ceremony).
    Boot,
    /// A validator.
    Validator,
    /// A read-only node.
    ReadOnly,
}

impl NodeRole {
    /// Whether a node of this role publishes `transfers-available`.
    #[must_use]
    pub const fn extracts_transfers(self) -> bool {
        matches!(self, NodeRole::ReadOnly)
    }
}

/// The bus of a node of `role`: for a read-only node, a bus whose hook feeds a new
/// [`Extractor`] (returned, to be spawned); otherwise a plain bus and `None`, and `source`
/// is dropped unused.
pub fn node_bus(
    role: NodeRole,
    bus_config: BusConfig,
    config: ExtractorConfig,
    source: Arc<dyn BlockReportSource>,
) -> (Bus, Option<Extractor>) {
    if role.extracts_transfers() {
        let (bus, extractor) = Extractor::new(bus_config, config, source);
        (bus, Some(extractor))
    } else {
        (Bus::new(bus_config), None)
    }
}

// ---------------------------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------------------------

/// Live counters of an extractor, shared with its task. Read them with
/// [`snapshot`](Self::snapshot).
#[derive(Debug, Default)]
pub struct ExtractorStats {
    seen: AtomicU64,
    accepted: AtomicU64,
    dropped_full: AtomicU64,
    dropped_stopped: AtomicU64,
    published: AtomicU64,
    failed: AtomicU64,
    cache_hits: AtomicU64,
    source_calls: AtomicU64,
    retries: AtomicU64,
    timeouts: AtomicU64,
    out_of_order: AtomicU64,
    unmatched_deploys: AtomicU64,
    queued: AtomicU64,
    in_flight: AtomicU64,
}

/// A snapshot of [`ExtractorStats`].
///
/// `seen == accepted + dropped_full + dropped_stopped`, and while the extractor runs,
/// `accepted == published + failed + queued + in_flight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtractorCounters {
    /// `block-finalised` events the hook saw.
    pub seen: u64,
    /// Blocks queued for extraction.
    pub accepted: u64,
    /// Blocks dropped because the queue held `queue_capacity` blocks (no event for them).
    pub dropped_full: u64,
    /// Blocks dropped because the extractor was no longer running (aborted or dropped).
    pub dropped_stopped: u64,
    /// `transfers-available` events published.
    pub published: u64,
    /// Blocks given up after `max_attempts` (logged; no event for them).
    pub failed: u64,
    /// Blocks answered from the cache, without calling the source.
    pub cache_hits: u64,
    /// Calls to [`BlockReportSource::report`] (every attempt).
    pub source_calls: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Attempts that failed by timing out (included in the failures above).
    pub timeouts: u64,
    /// Blocks started after a block finalised later than them (see "In finalisation order").
    pub out_of_order: u64,
    /// Report entries naming a deploy the block does not have (ignored).
    pub unmatched_deploys: u64,
    /// Now: blocks accepted and not yet started.
    pub queued: u64,
    /// Now: blocks started and not yet published or given up.
    pub in_flight: u64,
}

impl ExtractorStats {
    /// Current values. Each counter is read on its own, so a snapshot taken while the
    /// extractor works may be off by the blocks moving at that instant.
    pub fn snapshot(&self) -> ExtractorCounters {
        // Relaxed throughout: statistics only; no other memory is read on their strength.
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExtractorCounters {
            seen: get(&self.seen),
            accepted: get(&self.accepted),
            dropped_full: get(&self.dropped_full),
            dropped_stopped: get(&self.dropped_stopped),
            published: get(&self.published),
            failed: get(&self.failed),
            cache_hits: get(&self.cache_hits),
            source_calls: get(&self.source_calls),
            retries: get(&self.retries),
            timeouts: get(&self.timeouts),
            out_of_order: get(&self.out_of_order),
            unmatched_deploys: get(&self.unmatched_deploys),
            queued: get(&self.queued),
            in_flight: get(&self.in_flight),
        }
    }
}

/// Adds one to a statistics counter.
fn bump(counter: &AtomicU64) {
    // Relaxed: a statistic; read by `ExtractorStats::snapshot`, which orders nothing on it.
    counter.fetch_add(1, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------------
// The hook (publishing thread)
// ---------------------------------------------------------------------------------------------

/// A `block-finalised` entry of the bus.
#[derive(Clone)]
struct Finalised(BusEntryRef);

impl Finalised {
    fn new(entry: &BusEntryRef) -> Option<Self> {
        matches!(entry.event(), Event::BlockFinalised(_)).then(|| Self(entry.clone()))
    }

    fn block(&self) -> &BlockInfo {
        match self.0.event() {
            Event::BlockFinalised(block) => block,
            _ => unreachable!("Finalised::new only wraps block-finalised entries"),
        }
    }

    fn seq(&self) -> u64 {
        self.0.seq()
    }
}

/// State shared by the hook and the extractor's task.
struct Shared {
    stats: Arc<ExtractorStats>,
    /// Hook calls finished, one per event the node published on the bus (the extractor's
    /// own publishes skip the hook and are counted by its task; see "In finalisation
    /// order").
    observed: AtomicU64,
    queue_capacity: u64,
}

struct Hook {
    tx: UnboundedSender<Finalised>,
    shared: Arc<Shared>,
}

impl Hook {
    fn accept(&self, block: Finalised) {
        let stats = &*self.shared.stats;
        bump(&stats.seen);
        if self.tx.is_closed() {
            bump(&stats.dropped_stopped);
            return;
        }
        // Reserve a place: `queued` never exceeds the capacity.
        // Relaxed: an occupancy count, bounded by this CAS alone; the block itself is
        // handed over by the channel, which synchronises on its own.
        let mut queued = stats.queued.load(Ordering::Relaxed);
        loop {
            if queued >= self.shared.queue_capacity {
                bump(&stats.dropped_full);
                return;
            }
            // Relaxed: as the load above.
            match stats.queued.compare_exchange_weak(
                queued,
                queued + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => queued = now,
            }
        }
        bump(&stats.accepted);
        if self.tx.send(block).is_err() {
            // The task ended between the check above and now.
            // Relaxed: statistics and the occupancy count, as above.
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            stats.accepted.fetch_sub(1, Ordering::Relaxed);
            bump(&stats.dropped_stopped);
        }
    }
}

impl PublishHook for Hook {
    fn on_publish(&self, entry: &BusEntryRef) {
        if let Some(block) = Finalised::new(entry) {
            self.accept(block);
        }
        // Release: pairs with the Acquire load in `Task::intake`; a task that reads this
        // count also sees the block pushed above.
        self.shared.observed.fetch_add(1, Ordering::Release);
    }
}

// ---------------------------------------------------------------------------------------------
// The extractor
// ---------------------------------------------------------------------------------------------

/// Extracts the transfers of every finalised block of a read-only node's bus and publishes
/// them, in order, as `transfers-available`. Built with its bus by [`Extractor::new`] or
/// [`node_bus`]; does nothing until [`spawn`](Self::spawn)ed (blocks finalised meanwhile
/// wait in the queue).
pub struct Extractor {
    /// A handle without the hook (see "Lifecycle").
    bus: Bus,
    rx: UnboundedReceiver<Finalised>,
    shared: Arc<Shared>,
    config: ExtractorConfig,
    source: Arc<dyn BlockReportSource>,
}

impl fmt::Debug for Extractor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extractor")
            .field("config", &self.config)
            .field("stats", &self.shared.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl Extractor {
    /// A new bus whose publish hook feeds a new extractor. The bus is built here so that
    /// the hook lives exactly as long as the node's handles of it: the extractor keeps a
    /// handle without the hook (see "Lifecycle").
    pub fn new(
        bus_config: BusConfig,
        config: ExtractorConfig,
        source: Arc<dyn BlockReportSource>,
    ) -> (Bus, Extractor) {
        let config = config.normalised();
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            stats: Arc::default(),
            observed: AtomicU64::new(0),
            queue_capacity: config.queue_capacity as u64,
        });
        let hook = Arc::new(Hook {
            tx,
            shared: Arc::clone(&shared),
        });
        let bus = Bus::with_hook(bus_config, hook);
        let extractor = Extractor {
            bus: bus.without_hook(),
            rx,
            shared,
            config,
            source,
        };
        (bus, extractor)
    }

    /// Its counters, live.
    pub fn stats(&self) -> Arc<ExtractorStats> {
        Arc::clone(&self.shared.stats)
    }

    /// The configuration in use (normalised).
    pub fn config(&self) -> &ExtractorConfig {
        &self.config
    }

    /// Runs the extractor as a Tokio task until the node's handles of the bus are all
    /// dropped (then it finishes what it accepted and closes the bus) or the task is
    /// aborted.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime with its time driver enabled (as [`tokio::spawn`]).
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(Task::new(self).run())
    }
}

/// A block accepted and waiting in the reorder buffer.
struct Waiting {
    block: Finalised,
    since: Instant,
}

/// A report: the block's deploys with their transfers, in block order.
type Report = Arc<Vec<DeployTransfers>>;

/// A block given up after its last attempt.
struct Failure {
    attempts: u32,
    error: ReportError,
}

type Outcome = Result<Report, Failure>;

enum SlotState {
    Running(Pin<Box<dyn Future<Output = Outcome> + Send>>),
    Done(Outcome),
}

/// A started block, in the window of blocks in flight.
struct Slot {
    block: Finalised,
    state: SlotState,
}

/// Timing of one block's attempts.
#[derive(Clone, Copy)]
struct Attempts {
    max: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    timeout: Duration,
}

/// Recent reports by block hash; evicts the oldest inserted.
struct Cache {
    capacity: usize,
    map: HashMap<String, Report>,
    order: VecDeque<String>,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, hash: &str) -> Option<Report> {
        self.map.get(hash).cloned()
    }

    fn insert(&mut self, hash: &str, report: Report) {
        if self.capacity == 0 {
            return;
        }
        if let Some(old) = self.map.get_mut(hash) {
            *old = report;
            return;
        }
        while self.map.len() >= self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&oldest);
        }
        self.order.push_back(hash.to_owned());
        self.map.insert(hash.to_owned(), report);
    }
}

/// The extractor's task state.
struct Task {
    /// The extractor's handle of the bus, without the hook: its publishes are counted in
    /// `own_published`, not in `Shared::observed`.
    bus: Bus,
    rx: UnboundedReceiver<Finalised>,
    shared: Arc<Shared>,
    config: ExtractorConfig,
    source: Arc<dyn BlockReportSource>,
    /// Accepted blocks by sequence number, not started yet.
    reorder: BTreeMap<u64, Waiting>,
    /// Started blocks, in sequence order; at most `concurrency`.
    window: VecDeque<Slot>,
    cache: Cache,
    /// Every block with a smaller sequence number is known to be in `reorder` already
    /// (or was dropped, or is started).
    settled_below: u64,
    /// Largest sequence number started.
    last_started: Option<u64>,
    /// Events this task published (they do not pass through the hook).
    own_published: u64,
    /// The node's handles of the bus are gone (the channel closed): finish what is
    /// accepted, then end.
    closing: bool,
}

impl Task {
    fn new(extractor: Extractor) -> Self {
        let Extractor {
            bus,
            rx,
            shared,
            config,
            source,
        } = extractor;
        Self {
            bus,
            rx,
            shared,
            cache: Cache::new(config.cache_capacity),
            config,
            source,
            reorder: BTreeMap::new(),
            window: VecDeque::new(),
            settled_below: 0,
            last_started: None,
            own_published: 0,
            closing: false,
        }
    }

    fn stats(&self) -> &ExtractorStats {
        &self.shared.stats
    }

    async fn run(mut self) {
        loop {
            self.intake();
            self.start_ready();
            if self.closing && self.reorder.is_empty() && self.window.is_empty() {
                break;
            }
            let wake_at = self.next_wake();
            let closing = self.closing;
            let window = &mut self.window;
            let rx = &mut self.rx;
            tokio::select! {
                biased;
                () = poll_fn(|cx| poll_window(window, cx)) => {}
                received = rx.recv(), if !closing => match received {
                    Some(block) => self.insert(block),
                    // The hook, and with it the only sender, went with the node's last bus
                    // handle, so no block can come: finish and end.
                    None => self.closing = true,
                },
                () = sleep_until(wake_at) => {}
            }
            self.publish_ready();
        }
        // Dropping `self.bus` here closes the bus if it was the last handle.
    }

    fn insert(&mut self, block: Finalised) {
        let since = Instant::now();
        self.reorder.insert(block.seq(), Waiting { block, since });
    }

    /// Moves every pushed block into the reorder buffer and learns which sequence numbers
    /// are settled.
    fn intake(&mut self) {
        // Acquire: pairs with the Release fetch_add at the end of `Hook::on_publish`: every
        // hook call counted here has pushed its block, and the drain below sees it.
        let observed = self.shared.observed.load(Ordering::Acquire);
        let published = self.bus.stats().published;
        loop {
            match self.rx.try_recv() {
                Ok(block) => self.insert(block),
                Err(TryRecvError::Empty) => break,
                // Every sender is gone and every block it sent is drained (as the `None`
                // of `recv` in `run`).
                Err(TryRecvError::Disconnected) => {
                    self.closing = true;
                    break;
                }
            }
        }
        // Every event on the bus is published either by the node, through the hook, which
        // counts it in `observed` once its block is pushed, or by this task, which counts
        // it in `own_published` after its publish returned (in `publish_ready`, which never
        // runs concurrently with this). Each event counted in either is a publish that
        // claimed its sequence number before `published` was read (a hook call's claim
        // happens before its Release increment, which the Acquire load above synchronises
        // with; our own claims are earlier in this task's program order), hence below
        // `published`, and no publish is counted twice. So the sum never exceeds
        // `published`, and equality means every publish below `published` is counted:
        // every hook call among them has finished and pushed its block. A hook call still
        // running when we look (racing with our own publish or not) is not in `observed`,
        // so the counts cannot be equal too early; and once every hook call has finished,
        // they are equal, since our own publishes are all counted.
        if observed + self.own_published == published {
            self.settled_below = self.settled_below.max(published);
        }
    }

    /// Starts blocks, in sequence order, while the window has room and the first waiting
    /// block cannot be preceded by one still being published.
    fn start_ready(&mut self) {
        let now = Instant::now();
        while self.window.len() < self.config.concurrency {
            let Some(first) = self.reorder.first_entry() else {
                break;
            };
            let seq = *first.key();
            let ready = self.closing
                || seq < self.settled_below
                || now >= first.get().since + self.config.reorder_grace;
            if !ready {
                break;
            }
            let Waiting { block, .. } = first.remove();
            // Relaxed: the occupancy count (see `Hook::accept`).
            self.stats().queued.fetch_sub(1, Ordering::Relaxed);
            match self.last_started {
                Some(last) if seq < last => bump(&self.stats().out_of_order),
                _ => self.last_started = Some(seq),
            }
            let slot = self.start(block);
            self.window.push_back(slot);
        }
        self.update_in_flight();
    }

    fn start(&mut self, block: Finalised) -> Slot {
        if let Some(report) = self.cache.get(&block.block().block_hash) {
            bump(&self.stats().cache_hits);
            return Slot {
                block,
                state: SlotState::Done(Ok(report)),
            };
        }
        let attempts = Attempts {
            max: self.config.max_attempts,
            initial_backoff: self.config.initial_backoff,
            max_backoff: self.config.max_backoff,
            timeout: self.config.attempt_timeout,
        };
        let future = fetch(
            Arc::clone(&self.source),
            block.clone(),
            attempts,
            Arc::clone(&self.shared.stats),
        );
        Slot {
            block,
            state: SlotState::Running(Box::pin(future)),
        }
    }

    /// Publishes the finished blocks at the head of the window, in order.
    fn publish_ready(&mut self) {
        while matches!(
            self.window.front(),
            Some(Slot {
                state: SlotState::Done(_),
                ..
            })
        ) {
            let Some(Slot {
                block,
                state: SlotState::Done(outcome),
            }) = self.window.pop_front()
            else {
                break;
            };
            let info = block.block();
            match outcome {
                Ok(report) => {
                    // Counted before publishing: a subscriber that receives the event also
                    // sees the count (the bus's slot write releases it).
                    bump(&self.stats().published);
                    self.bus.publish(Event::TransfersAvailable(TransfersInfo {
                        block_hash: info.block_hash.clone(),
                        block_number: info.block_number,
                        deploys: report.as_ref().clone(),
                    }));
                    // Not through the hook: counted here instead (see `intake`).
                    self.own_published += 1;
                    self.cache.insert(&info.block_hash, report);
                }
                Err(Failure { attempts, error }) => {
                    bump(&self.stats().failed);
                    tracing::warn!(
                        block_hash = %info.block_hash,
                        block_number = info.block_number,
                        attempts,
                        %error,
                        "no block report; transfers-available not published for this block"
                    );
                }
            }
        }
        self.update_in_flight();
    }

    fn update_in_flight(&self) {
        // Relaxed: a statistic (gauge).
        self.stats()
            .in_flight
            .store(self.window.len() as u64, Ordering::Relaxed);
    }

    /// When to look again if nothing else wakes the task: only while a block is held back
    /// for order; otherwise never (a block, the channel closing or a report wakes it).
    fn next_wake(&self) -> Option<Instant> {
        if self.window.len() >= self.config.concurrency {
            // The window's reports wake the task when it has room again.
            return None;
        }
        // Held back for order: look again soon, release at the grace deadline.
        let first = self.reorder.values().next()?;
        Some((first.since + self.config.reorder_grace).min(Instant::now() + REORDER_TICK))
    }
}

/// Sleeps until `at`; with no deadline, never ends and sets no timer.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Polls every running block of the window; ready when the head is done.
fn poll_window(window: &mut VecDeque<Slot>, cx: &mut Context<'_>) -> Poll<()> {
    for slot in window.iter_mut() {
        let SlotState::Running(future) = &mut slot.state else {
            continue;
        };
        if let Poll::Ready(outcome) = future.as_mut().poll(cx) {
            slot.state = SlotState::Done(outcome);
        }
    }
    match window.front() {
        Some(Slot {
            state: SlotState::Done(_),
            ..
        }) => Poll::Ready(()),
        _ => Poll::Pending,
    }
}

/// One block's report: attempts with backoff, each bounded in time.
async fn fetch(
    source: Arc<dyn BlockReportSource>,
    block: Finalised,
    attempts: Attempts,
    stats: Arc<ExtractorStats>,
) -> Outcome {
    let info = block.block();
    let mut backoff = attempts.initial_backoff;
    let mut attempt = 1;
    loop {
        bump(&stats.source_calls);
        let result = match tokio::time::timeout(attempts.timeout, source.report(info)).await {
            Ok(result) => result,
            Err(_) => {
                bump(&stats.timeouts);
                Err(ReportError::new(format!(
                    "no report within {:?}",
                    attempts.timeout
                )))
            }
        };
        match result {
            Ok(report) => return Ok(Arc::new(complete(info, report, &stats))),
            Err(error) if attempt >= attempts.max => {
                return Err(Failure {
                    attempts: attempt,
                    error,
                });
            }
            Err(error) => {
                bump(&stats.retries);
                tracing::debug!(
                    block_hash = %info.block_hash,
                    attempt,
                    %error,
                    "block report failed; retrying in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2).min(attempts.max_backoff);
                attempt += 1;
            }
        }
    }
}

/// Every deploy of `block`, in block order, with the transfers `report` gives it (none if
/// it is not named there).
fn complete(
    block: &BlockInfo,
    report: Vec<DeployTransfers>,
    stats: &ExtractorStats,
) -> Vec<DeployTransfers> {
    let ids: HashSet<&str> = block.deploys.iter().map(|d| d.id.as_str()).collect();
    let mut by_id: HashMap<String, Vec<Transfer>> = HashMap::with_capacity(report.len());
    for entry in report {
        if ids.contains(entry.deploy_id.as_str()) {
            by_id
                .entry(entry.deploy_id)
                .or_default()
                .extend(entry.transfers);
        } else {
            bump(&stats.unmatched_deploys);
        }
    }
    block
        .deploys
        .iter()
        .map(|deploy| DeployTransfers {
            deploy_id: deploy.id.clone(),
            transfers: by_id.get(&deploy.id).cloned().unwrap_or_default(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The simulated node's source
// ---------------------------------------------------------------------------------------------

/// The report source of the simulated read-only node (`herald serve --role readonly`):
/// deterministic transfers derived from each deploy, after a latency with jitter.
///
/// Each deploy makes 0, 1 or 2 transfers (from a hash of its id), from an address derived
/// from its deployer to addresses derived from its id, all successful unless the deploy
/// errored. A block's report takes `latency` plus a jitter in `0..=jitter` derived from
/// `seed` and the block hash, so a run is reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimulatedSource {
    /// Base time to report a block.
    pub latency: Duration,
    /// Most extra time, on top of `latency`.
    pub jitter: Duration,
    /// Seeds the jitter.
    pub seed: u64,
}

impl SimulatedSource {
    /// A source with this latency, jitter and seed.
    #[must_use]
    pub const fn new(latency: Duration, jitter: Duration, seed: u64) -> Self {
        Self {
            latency,
            jitter,
            seed,
        }
    }

    /// How long reporting `block` takes.
    #[must_use]
    pub fn delay(&self, block: &BlockInfo) -> Duration {
        let jitter = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
        if jitter == 0 {
            return self.latency;
        }
        let draw = splitmix(self.seed ^ fnv1a(block.block_hash.as_bytes()));
        let extra = draw % jitter.saturating_add(1);
        self.latency.saturating_add(Duration::from_nanos(extra))
    }

    /// The transfers the simulated node reports for `deploy`.
    #[must_use]
    pub fn transfers(deploy: &DeployInfo) -> Vec<Transfer> {
        let h = fnv1a(deploy.id.as_bytes());
        let from = address(fnv1a(deploy.deployer.as_bytes()));
        (0..h % 3)
            .map(|i| {
                let key = splitmix(h ^ (i + 1).wrapping_mul(GOLDEN));
                Transfer {
                    from_addr: from.clone(),
                    to_addr: address(key),
                    amount: 1 + splitmix(key) % 1_000_000_000,
                    success: !deploy.errored,
                }
            })
            .collect()
    }

    /// The report of `block`, at once: every deploy with [`transfers`](Self::transfers).
    #[must_use]
    pub fn report_now(block: &BlockInfo) -> Vec<DeployTransfers> {
        block
            .deploys
            .iter()
            .map(|deploy| DeployTransfers {
                deploy_id: deploy.id.clone(),
                transfers: Self::transfers(deploy),
            })
            .collect()
    }
}

impl BlockReportSource for SimulatedSource {
    fn report<'a>(&'a self, block: &'a BlockInfo) -> ReportFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(self.delay(block)).await;
            Ok(Self::report_now(block))
        })
    }
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// FNV-1a, 64 bits: stable across Rust versions (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The SplitMix64 finaliser.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 64 lowercase hex digits derived from `key`.
fn address(key: u64) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(64);
    let mut word = key;
    for _ in 0..4 {
        word = splitmix(word);
        // Writing to a String cannot fail.
        let _ = write!(out, "{word:016x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(id: &str, errored: bool) -> DeployInfo {
        DeployInfo {
            id: id.to_owned(),
            cost: 1,
            deployer: "04ab".to_owned(),
            errored,
            transfers: None,
        }
    }

    #[test]
    fn simulated_transfers_are_deterministic_and_shaped_by_the_deploy() {
        let counts: Vec<usize> = (0..300)
            .map(|i| SimulatedSource::transfers(&deploy(&format!("d{i}"), false)).len())
            .collect();
        // Every count in 0..=2 occurs, none other.
        for n in 0..=2 {
            assert!(counts.contains(&n), "no deploy with {n} transfers");
        }
        assert!(counts.iter().all(|&n| n <= 2));
        for i in 0..300 {
            let d = deploy(&format!("d{i}"), false);
            let a = SimulatedSource::transfers(&d);
            assert_eq!(a, SimulatedSource::transfers(&d));
            for t in &a {
                assert!(t.success);
                assert_eq!(t.from_addr.len(), 64);
                assert_eq!(t.to_addr.len(), 64);
                assert!(
                    t.from_addr
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                );
                assert!((1..=1_000_000_000).contains(&t.amount));
            }
            // An errored deploy makes the same transfers, all failed.
            let failed = SimulatedSource::transfers(&deploy(&format!("d{i}"), true));
            assert_eq!(failed.len(), a.len());
            assert!(failed.iter().all(|t| !t.success));
        }
    }

    #[test]
    fn simulated_delay_stays_within_latency_plus_jitter() {
        let source = SimulatedSource::new(Duration::from_millis(10), Duration::from_millis(4), 99);
        let mut distinct = HashSet::new();
        for i in 0..200 {
            let block = BlockInfo {
                block_hash: format!("{i:064x}"),
                block_number: i,
                timestamp: 0,
                parent_hashes: vec![],
                justification_hashes: vec![],
                deploys: vec![],
                creator: String::new(),
                seq_num: 0,
            };
            let d = source.delay(&block);
            assert!(
                d >= Duration::from_millis(10) && d <= Duration::from_millis(14),
                "{d:?}"
            );
            assert_eq!(d, source.delay(&block));
            distinct.insert(d);
        }
        assert!(
            distinct.len() > 100,
            "jitter barely varies: {}",
            distinct.len()
        );
        let flat = SimulatedSource::new(Duration::from_millis(3), Duration::ZERO, 1);
        assert_eq!(
            flat.delay(&BlockInfo {
                block_hash: "x".into(),
                block_number: 0,
                timestamp: 0,
                parent_hashes: vec![],
                justification_hashes: vec![],
                deploys: vec![],
                creator: String::new(),
                seq_num: 0,
            }),
            Duration::from_millis(3)
        );
    }

    #[test]
    fn complete_lists_every_deploy_in_block_order() {
        let block = BlockInfo {
            block_hash: "h".into(),
            block_number: 1,
            timestamp: 0,
            parent_hashes: vec![],
            justification_hashes: vec![],
            deploys: vec![deploy("a", false), deploy("b", false), deploy("c", true)],
            creator: String::new(),
            seq_num: 0,
        };
        let t = |n: u64| Transfer {
            from_addr: "f".into(),
            to_addr: "t".into(),
            amount: n,
            success: true,
        };
        let report = vec![
            DeployTransfers {
                deploy_id: "c".into(),
                transfers: vec![t(3)],
            },
            DeployTransfers {
                deploy_id: "zz".into(),
                transfers: vec![t(9)],
            },
            DeployTransfers {
                deploy_id: "a".into(),
                transfers: vec![t(1)],
            },
            DeployTransfers {
                deploy_id: "a".into(),
                transfers: vec![t(2)],
            },
        ];
        let stats = ExtractorStats::default();
        let out = complete(&block, report, &stats);
        assert_eq!(
            out,
            vec![
                DeployTransfers {
                    deploy_id: "a".into(),
                    transfers: vec![t(1), t(2)]
                },
                DeployTransfers {
                    deploy_id: "b".into(),
                    transfers: vec![]
                },
                DeployTransfers {
                    deploy_id: "c".into(),
                    transfers: vec![t(3)]
                },
            ]
        );
        assert_eq!(stats.snapshot().unmatched_deploys, 1);
    }

    #[test]
    fn cache_evicts_the_oldest_inserted() {
        let mut cache = Cache::new(2);
        let r = |n: usize| {
            Arc::new(vec![DeployTransfers {
                deploy_id: n.to_string(),
                transfers: vec![],
            }])
        };
        cache.insert("a", r(1));
        cache.insert("b", r(2));
        cache.insert("a", r(3)); // replaces, does not grow
        assert_eq!(cache.map.len(), 2);
        assert_eq!(cache.get("a"), Some(r(3)));
        cache.insert("c", r(4)); // evicts "a", the oldest inserted
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("b"), Some(r(2)));
        assert_eq!(cache.get("c"), Some(r(4)));
        let mut off = Cache::new(0);
        off.insert("a", r(1));
        assert_eq!(off.get("a"), None);
    }

    #[test]
    fn config_normalised_applies_lower_bounds() {
        let c = ExtractorConfig {
            concurrency: 0,
            queue_capacity: 0,
            max_attempts: 0,
            cache_capacity: 0,
            ..ExtractorConfig::default()
        }
        .normalised();
        assert_eq!(
            (
                c.concurrency,
                c.queue_capacity,
                c.max_attempts,
                c.cache_capacity
            ),
            (1, 1, 1, 0)
        );
        let d = ExtractorConfig::default();
        assert_eq!(d.normalised(), d);
        assert_eq!(d.concurrency, 4);
    }
}

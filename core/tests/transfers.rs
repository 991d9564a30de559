//! The transfer extractor: order, losslessness, roles, retries, cache, the full queue and
//! its lifecycle. Every test ends by closing the bus and draining a subscriber to `Closed`,
//! so counts are final when they are compared.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::bus::{Bus, BusConfig, BusEntryRef, BusSubscriber};
use herald_core::event::{BlockInfo, DeployInfo, DeployTransfers, Event, EventKind, TransfersInfo};
use herald_core::ring::{RecvError, TryRecvError};
use herald_core::transfers::{
    BlockReportSource, Extractor, ExtractorConfig, ExtractorCounters, ExtractorStats, NodeRole,
    ReportError, ReportFuture, SimulatedSource, node_bus,
};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Every wait in these tests gives up (and fails) after this long.
const DEADLINE: Duration = Duration::from_secs(30);

fn bus_config(capacity: usize) -> BusConfig {
    BusConfig {
        capacity,
        startup_capacity: 16,
    }
}

fn config(concurrency: usize) -> ExtractorConfig {
    ExtractorConfig {
        concurrency,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
        // Long enough that the fallback never fires in a test: order comes from the
        // quiescence check alone, so `out_of_order` must be 0.
        reorder_grace: Duration::from_secs(10),
        ..ExtractorConfig::default()
    }
}

fn block(n: u64) -> BlockInfo {
    BlockInfo {
        block_hash: format!("{:064x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        block_number: n,
        timestamp: 1_700_000_000_000 + n,
        parent_hashes: vec![],
        justification_hashes: vec![],
        deploys: (0..3)
            .map(|i| DeployInfo {
                id: format!("{n:08x}{i:056x}"),
                cost: 10 + i,
                deployer: format!("04{:0128x}", i + 1),
                errored: (n + i) % 5 == 4,
                transfers: None,
            })
            .collect(),
        creator: "04cc".to_owned(),
        seq_num: n,
    }
}

/// What a read-only node must publish for `block`: every deploy, in block order.
fn expected(n: u64) -> TransfersInfo {
    let b = block(n);
    TransfersInfo {
        deploys: SimulatedSource::report_now(&b),
        block_hash: b.block_hash,
        block_number: n,
    }
}

/// A source the test scripts block by block. Its reports omit deploys that made no transfer
/// and list the others in reverse order: the extractor must restore the block's list.
#[derive(Default)]
struct TestSource {
    /// Delay of each block's answer (none if absent).
    delay: HashMap<u64, Duration>,
    /// Attempts that fail before one succeeds (`u32::MAX`: every attempt fails).
    fail_first: HashMap<u64, u32>,
    /// Blocks that never answer.
    hang: HashSet<u64>,
    /// When set, each block waits for its gate to be closed by the test.
    gated: bool,
    gates: Mutex<HashMap<u64, Arc<Semaphore>>>,
    /// Every call: block number and when.
    calls: Mutex<Vec<(u64, Instant)>>,
    /// Blocks whose report future completed, in completion order.
    completed: Mutex<Vec<u64>>,
    active: AtomicUsize,
    max_active: AtomicUsize,
}

/// Decrements `active` when a report future ends or is dropped.
struct Active<'a>(&'a AtomicUsize);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TestSource {
    fn gate(&self, n: u64) -> Arc<Semaphore> {
        self.gates
            .lock()
            .unwrap()
            .entry(n)
            .or_insert_with(|| Arc::new(Semaphore::new(0)))
            .clone()
    }

    /// Lets block `n` answer (now and on every later attempt).
    fn release(&self, n: u64) {
        self.gate(n).close();
    }

    fn calls_of(&self, n: u64) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(b, _)| *b == n)
            .count()
    }

    fn completed(&self) -> Vec<u64> {
        self.completed.lock().unwrap().clone()
    }
}

impl BlockReportSource for TestSource {
    fn report<'a>(&'a self, block: &'a BlockInfo) -> ReportFuture<'a> {
        Box::pin(async move {
            let n = block.block_number;
            let attempt = {
                let mut calls = self.calls.lock().unwrap();
                calls.push((n, Instant::now()));
                calls.iter().filter(|(b, _)| *b == n).count() as u32
            };
            let active = self.active.fetch_add(1, Ordering::SeqCst) + 1;
            let _active = Active(&self.active);
            self.max_active.fetch_max(active, Ordering::SeqCst);
            if self.hang.contains(&n) {
                std::future::pending::<()>().await;
            }
            if self.gated {
                // Closed by `release`: the acquire fails, which is the signal to go on.
                let _ = self.gate(n).acquire().await;
            }
            if let Some(delay) = self.delay.get(&n) {
                tokio::time::sleep(*delay).await;
            }
            if attempt <= self.fail_first.get(&n).copied().unwrap_or(0) {
                return Err(ReportError::new(format!(
                    "block {n}: attempt {attempt} failed"
                )));
            }
            self.completed.lock().unwrap().push(n);
            let mut report: Vec<DeployTransfers> = SimulatedSource::report_now(block)
                .into_iter()
                .filter(|d| !d.transfers.is_empty())
                .collect();
            report.reverse();
            Ok(report)
        })
    }
}

/// Polls `cond` every millisecond until it holds; fails the test after [`DEADLINE`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Everything `sub` receives until the bus closes, and the sum of its `missed` notices.
async fn drain(sub: &mut BusSubscriber) -> (Vec<BusEntryRef>, u64) {
    let mut entries = Vec::new();
    let mut missed = 0;
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match sub.recv().await {
                Ok(entry) => entries.push(entry),
                Err(RecvError::Lagged { missed: m, .. }) => missed += m,
                Err(RecvError::Closed) => break,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the bus did not close");
    (entries, missed)
}

/// The `transfers-available` payloads among `entries`, in order.
fn transfers(entries: &[BusEntryRef]) -> Vec<TransfersInfo> {
    entries
        .iter()
        .filter_map(|e| match e.event() {
            Event::TransfersAvailable(info) => Some(info.clone()),
            _ => None,
        })
        .collect()
}

/// Block numbers of the `block-finalised` events among `entries`, in order.
fn finalised(entries: &[BusEntryRef]) -> Vec<u64> {
    entries
        .iter()
        .filter_map(|e| match e.event() {
            Event::BlockFinalised(b) => Some(b.block_number),
            _ => None,
        })
        .collect()
}

/// Asserts that a subscriber that `missed` nothing saw blocks `0..n` finalised, in order,
/// and each block's transfers, in order.
fn assert_all_extracted(entries: &[BusEntryRef], missed: u64, n: u64) {
    assert_eq!(missed, 0);
    assert_eq!(finalised(entries), (0..n).collect::<Vec<_>>());
    assert_eq!(transfers(entries), (0..n).map(expected).collect::<Vec<_>>());
}

/// A read-only node's bus and its running extractor, sealed, with a subscriber.
fn read_only(
    capacity: usize,
    config: ExtractorConfig,
    source: Arc<dyn BlockReportSource>,
) -> (
    Bus,
    Arc<ExtractorStats>,
    tokio::task::JoinHandle<()>,
    BusSubscriber,
) {
    let (bus, extractor) = node_bus(NodeRole::ReadOnly, bus_config(capacity), config, source);
    let extractor = extractor.expect("a read-only node has an extractor");
    let stats = extractor.stats();
    let task = extractor.spawn();
    bus.seal_startup();
    let sub = bus.subscribe();
    (bus, stats, task, sub)
}

async fn join(task: tokio::task::JoinHandle<()>) {
    let joined = tokio::time::timeout(DEADLINE, task).await;
    assert!(
        matches!(joined, Ok(Ok(()))),
        "the extractor did not end: {joined:?}"
    );
}

/// Counters of a run where every block of `n` was published, with `calls` source calls.
fn clean(n: u64, calls: u64) -> ExtractorCounters {
    ExtractorCounters {
        seen: n,
        accepted: n,
        published: n,
        source_calls: calls,
        ..ExtractorCounters::default()
    }
}

/// A small deterministic PRNG (SplitMix64) for latencies.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_preserved_under_random_source_latencies() {
    const N: u64 = 200;
    let mut rng = 42;
    let source = Arc::new(TestSource {
        delay: (0..N)
            .map(|n| (n, Duration::from_micros(1_000 + next(&mut rng) % 7_000)))
            .collect(),
        ..TestSource::default()
    });
    let (bus, stats, task, mut sub) = read_only(1024, config(4), source.clone());
    for n in 0..N {
        bus.publish(Event::BlockFinalised(block(n)));
    }
    drop(bus);
    let (entries, missed) = drain(&mut sub).await;
    join(task).await;

    assert_eq!(entries.len(), 2 * N as usize);
    assert_all_extracted(&entries, missed, N);
    // Each block's transfers come after its finalisation.
    let mut finalised_at = HashMap::new();
    for e in &entries {
        match e.event() {
            Event::BlockFinalised(b) => {
                finalised_at.insert(b.block_number, e.seq());
            }
            Event::TransfersAvailable(t) => assert!(e.seq() > finalised_at[&t.block_number]),
            other => panic!("unexpected {other:?}"),
        }
    }
    // K requests at once, never more; every block asked for once.
    assert_eq!(source.max_active.load(Ordering::SeqCst), 4);
    assert_eq!(source.calls.lock().unwrap().len(), N as usize);
    assert_eq!(stats.snapshot(), clean(N, N));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_completing_in_reverse_are_published_in_finalisation_order() {
    let source = Arc::new(TestSource {
        gated: true,
        ..TestSource::default()
    });
    let (bus, stats, task, mut sub) = read_only(64, config(4), source.clone());
    for n in 0..4 {
        bus.publish(Event::BlockFinalised(block(n)));
    }
    wait_until("four requests in flight", || {
        source.active.load(Ordering::SeqCst) == 4
    })
    .await;
    // Complete them 3, 2, 1, 0: each one finished before the next is let go.
    for n in (0..4).rev() {
        source.release(n);
        wait_until("the block's report", || {
            source.completed().len() == 4 - n as usize
        })
        .await;
    }
    assert_eq!(source.completed(), vec![3, 2, 1, 0]);
    drop(bus);
    let (entries, missed) = drain(&mut sub).await;
    join(task).await;

    assert_eq!(missed, 0);
    assert_eq!(
        transfers(&entries),
        (0..4).map(expected).collect::<Vec<_>>()
    );
    assert_eq!(stats.snapshot(), clean(4, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_get_transfers_in_sequence_order() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 150;
    let source = Arc::new(SimulatedSource::new(
        Duration::from_micros(200),
        Duration::from_micros(800),
        3,
    ));
    let (bus, stats, task, mut sub) = read_only(4096, config(4), source);
    let publishers: Vec<_> = (0..THREADS)
        .map(|t| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let n = t * 1_000 + i;
                    bus.publish(Event::BlockAdded(block(n)));
                    bus.publish(Event::BlockFinalised(block(n)));
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    drop(bus);
    let (entries, missed) = drain(&mut sub).await;
    join(task).await;

    let total = THREADS * PER_THREAD;
    assert_eq!(missed, 0);
    assert_eq!(entries.len(), 3 * total as usize);
    // Entries arrive in sequence order, so this is the finalisation order.
    let order = finalised(&entries);
    assert_eq!(order.len(), total as usize);
    assert_eq!(
        transfers(&entries),
        order.iter().map(|&n| expected(n)).collect::<Vec<_>>()
    );
    assert_eq!(stats.snapshot(), clean(total, total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_a_subscriber_lags_badly() {
    const N: u64 = 500;
    const CAPACITY: u64 = 64;
    let mut rng = 7;
    let source = Arc::new(TestSource {
        delay: (0..N)
            .map(|n| (n, Duration::from_micros(next(&mut rng) % 2_000)))
            .collect(),
        ..TestSource::default()
    });
    let (bus, stats, task, mut collector) = read_only(CAPACITY as usize, config(4), source.clone());
    // Never reads until the end: the ring laps it many times.
    let mut laggard = bus.subscribe();

    // A collector that keeps up: the publisher below waits for it, and keeps the
    // extractor's backlog small, so fewer than CAPACITY events are ever unread by it.
    let seen = Arc::new(AtomicU64::new(0));
    let collecting = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut entries = Vec::new();
            let mut missed = 0;
            loop {
                match collector.recv().await {
                    Ok(entry) => {
                        if entry.kind() == EventKind::BlockFinalised {
                            seen.fetch_add(1, Ordering::SeqCst);
                        }
                        entries.push(entry);
                    }
                    Err(RecvError::Lagged { missed: m, .. }) => missed += m,
                    Err(RecvError::Closed) => return (entries, missed),
                }
            }
        })
    };
    for n in 0..N {
        bus.publish(Event::BlockAdded(block(n)));
        bus.publish(Event::BlockFinalised(block(n)));
        wait_until("the collector and the extractor", || {
            seen.load(Ordering::SeqCst) == n + 1 && stats.snapshot().published + 16 > n
        })
        .await;
    }
    drop(bus);
    let (entries, missed) = tokio::time::timeout(DEADLINE, collecting)
        .await
        .expect("the collector ended")
        .unwrap();
    join(task).await;

    let total = 3 * N;
    assert_eq!(missed, 0);
    assert_eq!(entries.len(), total as usize);
    assert_eq!(
        transfers(&entries),
        (0..N).map(expected).collect::<Vec<_>>()
    );
    // The laggard lost all but the last CAPACITY events, and was told so exactly.
    let (late, late_missed) = drain(&mut laggard).await;
    assert_eq!(late_missed, total - CAPACITY);
    assert_eq!(late.len() as u64, CAPACITY);
    assert_eq!(late.len() as u64 + late_missed, total);
    assert_eq!(late[0].seq(), total - CAPACITY);
    assert_eq!(stats.snapshot(), clean(N, N));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_publishes_no_transfers_and_calls_no_source() {
    assert!(NodeRole::ReadOnly.extracts_transfers());
    assert!(!NodeRole::Validator.extracts_transfers());
    assert!(!NodeRole::Boot.extracts_transfers());
    for role in [NodeRole::Validator, NodeRole::Boot] {
        let source = Arc::new(TestSource::default());
        let (bus, extractor) = node_bus(role, bus_config(256), config(4), source.clone());
        assert!(extractor.is_none(), "{role:?} must not extract transfers");
        bus.seal_startup();
        let mut sub = bus.subscribe();
        for n in 0..20 {
            bus.publish(Event::BlockCreated(block(n)));
            bus.publish(Event::BlockAdded(block(n)));
            bus.publish(Event::BlockFinalised(block(n)));
        }
        drop(bus);
        let (entries, missed) = drain(&mut sub).await;
        assert_eq!(missed, 0);
        assert_eq!(entries.len(), 60);
        assert_eq!(
            entries
                .iter()
                .filter(|e| e.kind() == EventKind::TransfersAvailable)
                .count(),
            0
        );
        assert_eq!(finalised(&entries), (0..20).collect::<Vec<_>>());
        assert_eq!(source.calls.lock().unwrap().len(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_errors_are_retried_then_counted_and_later_blocks_go_on() {
    const N: u64 = 12;
    let source = Arc::new(TestSource {
        // 2 fails twice then succeeds; 5 always fails; 7 fails once; 9 never answers.
        fail_first: HashMap::from([(2, 2), (5, u32::MAX), (7, 1)]),
        hang: HashSet::from([9]),
        ..TestSource::default()
    });
    let config = ExtractorConfig {
        max_attempts: 3,
        attempt_timeout: Duration::from_millis(50),
        ..config(4)
    };
    let (bus, stats, task, mut sub) = read_only(256, config, source.clone());
    for n in 0..N {
        bus.publish(Event::BlockFinalised(block(n)));
    }
    drop(bus);
    let (entries, missed) = drain(&mut sub).await;
    join(task).await;

    assert_eq!(missed, 0);
    let published: Vec<u64> = (0..N).filter(|n| *n != 5 && *n != 9).collect();
    assert_eq!(
        transfers(&entries),
        published.iter().map(|&n| expected(n)).collect::<Vec<_>>()
    );
    for n in 0..N {
        let calls = match n {
            2 | 5 | 9 => 3,
            7 => 2,
            _ => 1,
        };
        assert_eq!(source.calls_of(n), calls, "block {n}");
    }
    // Backoff: 1 ms, then 2 ms, between block 5's attempts (lower bounds of tokio's sleep).
    let times: Vec<Instant> = source
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(b, _)| *b == 5)
        .map(|(_, t)| *t)
        .collect();
    assert!(times[1] - times[0] >= Duration::from_millis(1));
    assert!(times[2] - times[1] >= Duration::from_millis(2));
    assert_eq!(
        stats.snapshot(),
        ExtractorCounters {
            seen: N,
            accepted: N,
            published: N - 2,
            failed: 2,
            source_calls: 8 + 3 + 3 + 2 + 3,
            retries: 2 + 2 + 1 + 2,
            timeouts: 3,
            ..ExtractorCounters::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_skip_the_source() {
    // One request at a time, so each block is published (and cached) before the next
    // one is looked up.
    let source = Arc::new(TestSource::default());
    let config = ExtractorConfig {
        cache_capacity: 2,
        ..config(1)
    };
    let (bus, stats, task, mut sub) = read_only(256, config, source.clone());
    // A, B, A (hit), C (evicts A), A (miss: evicts B), B (miss: evicts C), B (hit).
    let sequence = [0, 1, 0, 2, 0, 1, 1];
    for n in sequence {
        bus.publish(Event::BlockFinalised(block(n)));
    }
    drop(bus);
    let (entries, missed) = drain(&mut sub).await;
    join(task).await;

    assert_eq!(missed, 0);
    assert_eq!(
        transfers(&entries),
        sequence.iter().map(|&n| expected(n)).collect::<Vec<_>>()
    );
    assert_eq!(
        (source.calls_of(0), source.calls_of(1), source.calls_of(2)),
        (2, 2, 1)
    );
    assert_eq!(
        stats.snapshot(),
        ExtractorCounters {
            cache_hits: 2,
            ..clean(7, 5)
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_new_blocks_and_counts_them() {
    // Not spawned yet: nothing leaves the queue.
    let source = Arc::new(TestSource::default());
    let config = ExtractorConfig {
        queue_capacity: 8,
        ..config(4)
    };
    let (bus, extractor) = Extractor::new(bus_config(256), config, source.clone());
    let stats = extractor.stats();
    bus.seal_startup();
    let mut sub = bus.subscribe();
    for n in 0..12 {
        bus.publish(Event::BlockFinalised(block(n)));
    }
    assert_eq!(
        stats.snapshot(),
        ExtractorCounters {
            seen: 12,
            accepted: 8,
            dropped_full: 4,
            queued: 8,
            ..ExtractorCounters::default()
        }
    );
    let task = extractor.spawn();
    drop(bus);
    let (entries, missed) = drain(&mut sub).await;
    join(task).await;

    assert_eq!(missed, 0);
    // The first eight, in order; the four that found the queue full get nothing.
    assert_eq!(
        transfers(&entries),
        (0..8).map(expected).collect::<Vec<_>>()
    );
    assert_eq!(
        stats.snapshot(),
        ExtractorCounters {
            seen: 12,
            accepted: 8,
            dropped_full: 4,
            published: 8,
            source_calls: 8,
            ..ExtractorCounters::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_behind_a_stalled_source_drops_and_never_blocks_the_publisher() {
    let source = Arc::new(TestSource {
        gated: true,
        ..TestSource::default()
    });
    let config = ExtractorConfig {
        queue_capacity: 3,
        ..config(2)
    };
    let (bus, stats, task, mut sub) = read_only(256, config, source.clone());
    bus.publish(Event::BlockFinalised(block(0)));
    bus.publish(Event::BlockFinalised(block(1)));
    wait_until("two requests in flight", || {
        let s = stats.snapshot();
        (s.in_flight, s.queued) == (2, 0) && source.active.load(Ordering::SeqCst) == 2
    })
    .await;
    // Two in flight, three queued, two dropped; every publish returns at once.
    for n in 2..7 {
        bus.publish(Event::BlockFinalised(block(n)));
    }
    assert_eq!(
        stats.snapshot(),
        ExtractorCounters {
            seen: 7,
            accepted: 5,
            dropped_full: 2,
            source_calls: 2,
            queued: 3,
            in_flight: 2,
            ..ExtractorCounters::default()
        }
    );
    for n in 0..7 {
        source.release(n);
    }
    drop(bus);
    let (entries, missed) = drain(&mut sub).await;
    join(task).await;

    assert_eq!(missed, 0);
    assert_eq!(
        transfers(&entries),
        (0..5).map(expected).collect::<Vec<_>>()
    );
    assert_eq!(source.max_active.load(Ordering::SeqCst), 2);
    assert_eq!(
        stats.snapshot(),
        ExtractorCounters {
            seen: 7,
            dropped_full: 2,
            ..clean(5, 5)
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_stays_open_until_accepted_blocks_are_published() {
    let source = Arc::new(TestSource {
        gated: true,
        ..TestSource::default()
    });
    let (bus, stats, task, mut sub) = read_only(256, config(4), source.clone());
    for n in 0..3 {
        bus.publish(Event::BlockFinalised(block(n)));
    }
    wait_until("three requests in flight", || {
        source.active.load(Ordering::SeqCst) == 3
    })
    .await;
    // The node is gone; its blocks are still being extracted.
    drop(bus);
    for n in 0..3 {
        source.release(n);
    }
    let (entries, missed) = drain(&mut sub).await;
    join(task).await;

    assert_all_extracted(&entries, missed, 3);
    assert_eq!(stats.snapshot(), clean(3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_extractor_counts_what_it_no_longer_takes() {
    // Aborted while running.
    let source = Arc::new(TestSource::default());
    let (bus, stats, task, mut sub) = read_only(256, config(4), source.clone());
    task.abort();
    let aborted = tokio::time::timeout(DEADLINE, task).await.expect("ended");
    assert!(aborted.unwrap_err().is_cancelled());
    for n in 0..3 {
        bus.publish(Event::BlockFinalised(block(n)));
    }
    drop(bus);
    let (entries, missed) = drain(&mut sub).await;
    assert_eq!((entries.len(), missed), (3, 0));
    assert_eq!(
        stats.snapshot(),
        ExtractorCounters {
            seen: 3,
            dropped_stopped: 3,
            ..ExtractorCounters::default()
        }
    );
    assert_eq!(source.calls.lock().unwrap().len(), 0);

    // Dropped without being spawned: the bus closes with the node's last handle.
    let (bus, extractor) = Extractor::new(bus_config(256), config(4), source.clone());
    let stats = extractor.stats();
    drop(extractor);
    bus.seal_startup();
    let mut sub = bus.subscribe();
    bus.publish(Event::BlockFinalised(block(0)));
    drop(bus);
    let (entries, missed) = drain(&mut sub).await;
    assert_eq!((entries.len(), missed), (1, 0));
    assert_eq!(stats.snapshot().dropped_stopped, 1);

    // Spawned after the node dropped its bus: ends at once and closes it.
    let (bus, extractor) = Extractor::new(bus_config(256), config(4), source.clone());
    let mut sub = bus.subscribe();
    drop(bus);
    join(extractor.spawn()).await;
    let (entries, missed) = drain(&mut sub).await;
    assert_eq!((entries.len(), missed), (0, 0));
}

// ---------------------------------------------------------------------------------------------
// On a paused clock: tokio's virtual time moves only when every task waits and a timer is
// pending, and then straight to that timer. A close that needed a timer to be noticed
// would show up as virtual time passing.
// ---------------------------------------------------------------------------------------------

/// The next entry of `sub`, within [`DEADLINE`] (virtual time on a paused clock).
async fn next_entry(sub: &mut BusSubscriber) -> BusEntryRef {
    match tokio::time::timeout(DEADLINE, sub.recv()).await {
        Ok(Ok(entry)) => entry,
        other => panic!("no entry: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_node_dropping_its_bus_ends_an_idle_extractor_at_once() {
    let source = Arc::new(TestSource::default());
    let (bus, stats, task, mut sub) = read_only(256, config(4), source.clone());
    let start = Instant::now();
    // One block at a time: each block's order is settled by the counts alone, which must
    // include the extractor's own earlier `transfers-available` publishes. Had they been
    // left out, block 1 would wait out the 10 s `reorder_grace`, and the clock would move.
    for n in 0..3 {
        bus.publish(Event::BlockFinalised(block(n)));
        let added = next_entry(&mut sub).await;
        assert_eq!(finalised(&[added]), vec![n]);
        let extracted = next_entry(&mut sub).await;
        assert_eq!(transfers(&[extracted]), vec![expected(n)]);
    }
    assert_eq!(Instant::now(), start, "a block waited on a timer");

    // Idle for an hour (and 7 ms, off any 25 ms grid): the bus stays open, nothing comes.
    tokio::time::sleep(Duration::from_millis(3_600_007)).await;
    assert!(matches!(sub.try_recv(), Err(TryRecvError::Empty)));
    assert!(!task.is_finished());
    assert_eq!(stats.snapshot(), clean(3, 3));

    // The node shuts down: the extractor learns it from its channel closing, not from a
    // timer, so subscribers see `Closed` with no virtual time passing.
    let dropped_at = Instant::now();
    drop(bus);
    let (entries, missed) = drain(&mut sub).await;
    join(task).await;
    assert_eq!(Instant::now(), dropped_at, "the close waited on a timer");
    assert_eq!((entries.len(), missed), (0, 0));
    assert_eq!(stats.snapshot(), clean(3, 3));
    assert_eq!(source.calls.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn blocks_in_flight_at_the_drop_are_published_and_then_the_bus_closes_at_once() {
    // Reports take 15, 5 and 10 ms (virtual): they complete out of order, all before the
    // 25 ms the extractor used to poll at.
    let source = Arc::new(TestSource {
        delay: HashMap::from([
            (0, Duration::from_millis(15)),
            (1, Duration::from_millis(5)),
            (2, Duration::from_millis(10)),
        ]),
        ..TestSource::default()
    });
    let (bus, stats, task, mut sub) = read_only(256, config(4), source.clone());
    let start = Instant::now();
    for n in 0..3 {
        bus.publish(Event::BlockFinalised(block(n)));
    }
    // Wait, on no timer of our own, until the extractor has started all three.
    for _ in 0..1_000 {
        if source.active.load(Ordering::SeqCst) == 3 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(source.active.load(Ordering::SeqCst), 3);
    assert_eq!(Instant::now(), start);
    drop(bus);
    let (entries, missed) = drain(&mut sub).await;
    join(task).await;

    // Closed the moment the last report (15 ms) was in and published, not later.
    assert_eq!(Instant::now() - start, Duration::from_millis(15));
    assert_eq!(source.completed(), vec![1, 2, 0]);
    assert_all_extracted(&entries, missed, 3);
    assert_eq!(stats.snapshot(), clean(3, 3));
}

//! The simulated read-only node with its transfer extractor, end to end on a bus (no
//! sockets): one `transfers-available` per `block-finalised`, in order, with the simulated
//! source's transfers for every deploy; and exact accounting when `--rate max` overruns the
//! extractor's queue.

use std::sync::Arc;
use std::time::Duration;

use herald_core::bus::{BusConfig, BusEntry, BusEntryRef, BusSubscriber};
use herald_core::event::{BlockInfo, Event, EventKind, TransfersInfo};
use herald_core::ring::RecvError;
use herald_core::transfers::{
    ExtractorConfig, ExtractorCounters, NodeRole, SimulatedSource, node_bus,
};
use herald_ws::sim::{Rate, Role, SimConfig, Simulator};
use tokio::sync::oneshot;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(60);

fn source() -> Arc<SimulatedSource> {
    Arc::new(SimulatedSource::new(
        Duration::from_millis(1),
        Duration::from_millis(3),
        11,
    ))
}

fn sim(rate: Rate) -> Simulator {
    Simulator::new(SimConfig {
        role: Role::Readonly,
        rate,
        validators: 3,
        deploys: 4,
        seed: 9,
    })
}

/// Receives until the bus closes; returns the entries and the sum of `missed`. Calls
/// `on_entry` with each entry as it arrives.
async fn drain(
    sub: &mut BusSubscriber,
    mut on_entry: impl FnMut(&BusEntry),
) -> (Vec<BusEntryRef>, u64) {
    let mut entries = Vec::new();
    let mut missed = 0;
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match sub.recv().await {
                Ok(entry) => {
                    on_entry(&entry);
                    entries.push(entry);
                }
                Err(RecvError::Lagged { missed: m, .. }) => missed += m,
                Err(RecvError::Closed) => break,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the bus did not close");
    (entries, missed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_node_publishes_one_transfers_available_per_finalised_block_in_order() {
    const BLOCKS: u64 = 60;
    let (bus, extractor) = node_bus(
        NodeRole::ReadOnly,
        BusConfig::default(),
        ExtractorConfig::default(),
        source(),
    );
    let extractor = extractor.expect("a read-only node extracts transfers");
    let stats = extractor.stats();
    let task = extractor.spawn();
    let mut sub = bus.subscribe();
    let (stop, stopped) = oneshot::channel::<()>();
    let node = tokio::spawn(sim(Rate::PerSecond(2_000)).run(bus, async move {
        let _ = stopped.await;
    }));

    // Stop the node once BLOCKS blocks are finalised; the bus closes once the extractor
    // has published what it accepted.
    let mut stop = Some(stop);
    let mut finalised_count = 0;
    let (entries, missed) = drain(&mut sub, |entry| {
        if entry.kind() == EventKind::BlockFinalised {
            finalised_count += 1;
            if let Some(stop) = stop.take_if(|_| finalised_count == BLOCKS) {
                let _ = stop.send(());
            }
        }
    })
    .await;
    node.await.unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the extractor ended")
        .unwrap();

    assert_eq!(missed, 0);
    let kinds: Vec<EventKind> = entries.iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds[..3],
        [
            EventKind::NodeStarted,
            EventKind::ApprovedBlockReceived,
            EventKind::EnteredRunningState
        ]
    );
    let finalised: Vec<(u64, &BlockInfo)> = entries
        .iter()
        .filter_map(|e| match e.event() {
            Event::BlockFinalised(b) => Some((e.seq(), b)),
            _ => None,
        })
        .collect();
    let transfers: Vec<(u64, &TransfersInfo)> = entries
        .iter()
        .filter_map(|e| match e.event() {
            Event::TransfersAvailable(t) => Some((e.seq(), t)),
            _ => None,
        })
        .collect();
    // The node may finalise a few more blocks before it sees the stop.
    assert!(finalised.len() as u64 >= BLOCKS);
    assert_eq!(transfers.len(), finalised.len());
    for ((f_seq, block), (t_seq, info)) in finalised.iter().zip(&transfers) {
        assert!(
            t_seq > f_seq,
            "transfers of block {} before it",
            block.block_number
        );
        assert_eq!(info.block_hash, block.block_hash);
        assert_eq!(info.block_number, block.block_number);
        // Every deploy of the block, with the simulated node's transfers (maybe none).
        assert_eq!(info.deploys, SimulatedSource::report_now(block));
        assert_eq!(info.deploys.len(), 4);
    }
    let n = finalised.len() as u64;
    assert_eq!(
        stats.snapshot(),
        ExtractorCounters {
            seen: n,
            accepted: n,
            published: n,
            source_calls: n,
            ..ExtractorCounters::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_rate_every_finalised_block_is_published_or_counted_as_dropped() {
    let (bus, extractor) = node_bus(
        NodeRole::ReadOnly,
        BusConfig {
            capacity: 1024,
            startup_capacity: 16,
        },
        ExtractorConfig {
            queue_capacity: 64,
            ..ExtractorConfig::default()
        },
        source(),
    );
    let extractor = extractor.expect("a read-only node extracts transfers");
    let stats = extractor.stats();
    let task = extractor.spawn();
    let tap = bus.tap();
    let mut sub = bus.subscribe();
    let simulator = sim(Rate::Max);
    let counters = simulator.counters();
    let (stop, stopped) = oneshot::channel::<()>();
    let node = tokio::spawn(simulator.run(bus, async move {
        let _ = stopped.await;
    }));
    // Run until the queue has overflowed many times over.
    let deadline = Instant::now() + DEADLINE;
    while stats.snapshot().dropped_full < 10_000 {
        assert!(Instant::now() < deadline, "the queue never overflowed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = stop.send(());
    let (entries, missed) = drain(&mut sub, |_| {}).await;
    node.await.unwrap();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("the extractor ended")
        .unwrap();

    // The client lagged; it was told exactly how much.
    assert_eq!(entries.len() as u64 + missed, tap.stats().published);
    // Every block the node finalised reached the extractor's hook, and each one was either
    // published or dropped for a full queue, nothing else.
    let c = stats.snapshot();
    assert_eq!(c.seen, counters.blocks());
    assert_eq!(c.seen, c.published + c.dropped_full);
    assert_eq!(c.accepted, c.published);
    assert_eq!(
        (c.failed, c.dropped_stopped, c.queued, c.in_flight),
        (0, 0, 0, 0)
    );
    assert_eq!(c.source_calls + c.cache_hits, c.published);
    // Every block finalised and published reached the bus in order.
    let numbers: Vec<u64> = entries
        .iter()
        .filter_map(|e| match e.event() {
            Event::TransfersAvailable(t) => Some(t.block_number),
            _ => None,
        })
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    // Ring counters agree with the extractor's: its events are the only other ones.
    assert_eq!(tap.stats().published, counters.published() + c.published);
}

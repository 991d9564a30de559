//! Behaviour of the broadcast ring: every method and error path, then concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use herald_core::ring::{self, EntryRef, RecvError, RingConfig, TryRecvError};

mod common;

fn cfg(capacity: usize, startup_capacity: usize) -> RingConfig {
    RingConfig {
        capacity,
        startup_capacity,
    }
}

/// What `drain` saw: sequence numbers, values, `(missed, resume_seq)` notices, and the
/// error that ended it.
type Drained<T> = (Vec<u64>, Vec<T>, Vec<(u64, u64)>, TryRecvError);

/// Drains everything ready.
fn drain<T: Copy + Send + Sync + 'static>(sub: &mut ring::Subscriber<T>) -> Drained<T> {
    let (mut seqs, mut vals, mut lags) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        match sub.try_recv() {
            Ok(e) => {
                seqs.push(e.seq());
                vals.push(**e);
            }
            Err(TryRecvError::Lagged { missed, resume_seq }) => lags.push((missed, resume_seq)),
            Err(end) => return (seqs, vals, lags, end),
        }
    }
}

#[test]
fn publish_assigns_consecutive_sequence_numbers_from_zero() {
    let p = ring::ring::<u32>(cfg(8, 0));
    let seqs: Vec<u64> = (0..20).map(|i| p.publish(i)).collect();
    assert_eq!(seqs, (0..20).collect::<Vec<u64>>());
    assert_eq!(p.stats().published, 20);
}

#[test]
fn fresh_subscriber_is_empty_then_reads_in_order() {
    let p = ring::ring::<u32>(cfg(8, 0));
    p.seal_startup();
    let mut s = p.subscribe();
    assert_eq!(s.try_recv().unwrap_err(), TryRecvError::Empty);
    for i in 0..5 {
        p.publish(i * 10);
    }
    let (seqs, vals, lags, end) = drain(&mut s);
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    assert_eq!(vals, vec![0, 10, 20, 30, 40]);
    assert!(lags.is_empty());
    assert_eq!(end, TryRecvError::Empty);
}

#[test]
fn capacity_is_rounded_up_to_a_power_of_two_of_at_least_two() {
    assert_eq!(ring::ring::<u8>(cfg(3, 0)).stats().capacity, 4);
    assert_eq!(ring::ring::<u8>(cfg(0, 0)).stats().capacity, 2);
    assert_eq!(ring::ring::<u8>(cfg(1024, 0)).stats().capacity, 1024);
}

#[test]
fn a_lapped_subscriber_gets_the_exact_missed_count_and_resumes_at_the_oldest_retained() {
    let p = ring::ring::<u64>(cfg(4, 0));
    p.seal_startup();
    let mut s = p.subscribe();
    for i in 0..11 {
        p.publish(i);
    }
    // Retained: 7, 8, 9, 10. Missed: 0..7.
    assert_eq!(
        s.try_recv().unwrap_err(),
        TryRecvError::Lagged {
            missed: 7,
            resume_seq: 7
        }
    );
    let (seqs, vals, lags, _) = drain(&mut s);
    assert_eq!(seqs, vec![7, 8, 9, 10]);
    assert_eq!(vals, vec![7, 8, 9, 10]);
    assert!(lags.is_empty());
    assert_eq!(p.stats().lagged, 7);
}

#[test]
fn startup_events_are_replayed_to_subscribers_joining_before_the_seal() {
    let p = ring::ring::<u32>(cfg(8, 16));
    p.publish(100);
    p.publish(101);
    let mut early = p.subscribe(); // join point 2: replays 0..2, then live from 2
    p.publish(102);
    assert_eq!(p.seal_startup(), 3);
    p.publish(103);
    let (seqs, vals, lags, _) = drain(&mut early);
    assert_eq!(
        seqs,
        vec![0, 1, 2, 3],
        "each event exactly once, replay then live"
    );
    assert_eq!(vals, vec![100, 101, 102, 103]);
    assert!(lags.is_empty());
}

#[test]
fn subscribers_joining_after_the_seal_replay_the_sealed_segment_then_live_from_their_join() {
    let p = ring::ring::<u32>(cfg(8, 16));
    p.publish(0);
    p.publish(1);
    assert_eq!(p.seal_startup(), 2);
    p.publish(2); // after the seal, before the join: not replayed (SPEC 2)
    let mut late = p.subscribe();
    p.publish(3);
    let (seqs, _, lags, _) = drain(&mut late);
    assert_eq!(seqs, vec![0, 1, 3]);
    assert!(lags.is_empty());
    let st = p.stats();
    assert!(st.sealed);
    assert_eq!((st.startup_len, st.startup_dropped), (2, 0));
}

#[test]
fn seal_is_idempotent_and_returns_the_first_seal_point() {
    let p = ring::ring::<u32>(cfg(8, 16));
    p.publish(0);
    assert!(!p.stats().sealed);
    assert_eq!(p.seal_startup(), 1);
    p.publish(1);
    assert_eq!(p.seal_startup(), 1);
    assert_eq!(p.clone().seal_startup(), 1);
    assert_eq!(p.stats().startup_len, 1);
}

#[test]
fn startup_overflow_keeps_the_first_events_and_reports_the_rest_as_missed() {
    let p = ring::ring::<u32>(cfg(8, 3));
    for i in 0..5 {
        p.publish(i);
    }
    p.seal_startup();
    let st = p.stats();
    assert_eq!((st.startup_len, st.startup_dropped), (3, 2));
    let mut s = p.subscribe();
    p.publish(5);
    let (seqs, _, lags, _) = drain(&mut s);
    assert_eq!(seqs, vec![0, 1, 2, 5]);
    assert_eq!(lags, vec![(2, 5)]);
}

#[test]
fn startup_overflow_before_the_seal_is_reported_to_early_subscribers_too() {
    let p = ring::ring::<u32>(cfg(8, 2));
    for i in 0..4 {
        p.publish(i);
    }
    let mut s = p.subscribe(); // unsealed, join 4: keeps 0,1; 2,3 not kept
    p.publish(4);
    let (seqs, _, lags, _) = drain(&mut s);
    assert_eq!(seqs, vec![0, 1, 4]);
    assert_eq!(lags, vec![(2, 4)]);
}

#[test]
fn a_zero_startup_capacity_keeps_nothing_and_says_so() {
    let p = ring::ring::<u32>(cfg(8, 0));
    p.publish(0);
    p.seal_startup();
    let mut s = p.subscribe();
    assert_eq!(
        s.try_recv().unwrap_err(),
        TryRecvError::Lagged {
            missed: 1,
            resume_seq: 1
        }
    );
    assert_eq!(s.try_recv().unwrap_err(), TryRecvError::Empty);
}

#[test]
fn subscribe_from_delivers_every_retained_event_from_that_sequence() {
    let p = ring::ring::<u32>(cfg(4, 8));
    for i in 0..3 {
        p.publish(i); // startup 0,1,2
    }
    p.seal_startup();
    for i in 3..10 {
        p.publish(i); // ring retains 6..10
    }
    // From inside the startup segment: 1,2 from it, then 3..6 are gone, then 6..10.
    let mut s = p.subscribe_from(1);
    let (seqs, _, lags, _) = drain(&mut s);
    assert_eq!(seqs, vec![1, 2, 6, 7, 8, 9]);
    assert_eq!(lags, vec![(3, 6)]);
    // From a retained live sequence: exactly from there.
    let mut s = p.subscribe_from(8);
    assert_eq!(drain(&mut s).0, vec![8, 9]);
    // From the next sequence (a reconnecting client that saw everything): only new ones.
    let mut s = p.subscribe_from(10);
    assert_eq!(s.try_recv().unwrap_err(), TryRecvError::Empty);
    p.publish(10);
    assert_eq!(drain(&mut s).0, vec![10]);
    // From 0: all startup events, then what the ring retains.
    let mut s = p.subscribe_from(0);
    let (seqs, _, lags, _) = drain(&mut s);
    assert_eq!(seqs, vec![0, 1, 2, 7, 8, 9, 10]);
    assert_eq!(lags, vec![(4, 7)]);
}

#[test]
fn subscribe_from_a_future_sequence_waits_for_it() {
    let p = ring::ring::<u32>(cfg(4, 0));
    p.seal_startup();
    let mut s = p.subscribe_from(3);
    for i in 0..5 {
        p.publish(i);
    }
    assert_eq!(drain(&mut s).0, vec![3, 4]);
}

#[test]
fn dropping_the_last_publisher_closes_after_the_subscriber_drains() {
    let p = ring::ring::<u32>(cfg(8, 0));
    p.seal_startup();
    let mut s = p.subscribe();
    let tap = p.tap();
    let p2 = p.clone();
    p.publish(1);
    drop(p);
    assert_eq!(s.try_recv().unwrap().seq(), 0);
    assert_eq!(
        s.try_recv().unwrap_err(),
        TryRecvError::Empty,
        "a clone keeps it open"
    );
    p2.publish(2);
    drop(p2);
    assert_eq!(s.try_recv().unwrap().seq(), 1);
    assert_eq!(s.try_recv().unwrap_err(), TryRecvError::Closed);
    assert_eq!(s.try_recv().unwrap_err(), TryRecvError::Closed);
    // A tap does not keep the ring open, and its new subscribers see it closed.
    let mut late = tap.subscribe();
    assert_eq!(late.try_recv().unwrap_err(), TryRecvError::Closed);
}

#[test]
fn subscribers_share_one_allocation_per_value() {
    let p = ring::ring::<String>(cfg(8, 8));
    let mut a = p.subscribe();
    let mut b = p.subscribe();
    p.publish("block".to_string());
    let (x, y) = (a.try_recv().unwrap(), b.try_recv().unwrap());
    assert!(EntryRef::ptr_eq(&x, &y));
    // And the replayed copy is the same allocation as the live one.
    let mut c = p.subscribe_from(0);
    assert!(EntryRef::ptr_eq(&x, &c.try_recv().unwrap()));
}

#[test]
fn stats_count_subscribers_and_reported_lag() {
    let p = ring::ring::<u32>(cfg(2, 0));
    p.seal_startup();
    let s1 = p.subscribe();
    let mut s2 = p.subscribe();
    assert_eq!(p.stats().subscribers, 2);
    drop(s1);
    assert_eq!(p.stats().subscribers, 1);
    for i in 0..5 {
        p.publish(i);
    }
    let _ = s2.try_recv();
    assert_eq!(p.stats().lagged, 3);
}

#[test]
fn a_subscriber_lapped_again_soon_after_a_lap_resumes_half_a_ring_ahead() {
    let p = ring::ring::<u64>(cfg(8, 0));
    p.seal_startup();
    let mut s = p.subscribe();
    let publish = |n: u64| {
        for _ in 0..n {
            p.publish(0);
        }
    };
    // First lap: resumes at the oldest retained value (tail 20 - capacity 8).
    publish(20);
    assert_eq!(
        s.try_recv().unwrap_err(),
        TryRecvError::Lagged {
            missed: 12,
            resume_seq: 12
        }
    );
    assert_eq!(s.try_recv().unwrap().seq(), 12);
    // Lapped again one value (less than half a ring) after that: the publisher is faster,
    // so it resumes half a ring past the oldest (tail 30 - 8 + 4) instead of where the
    // very next publish would lap it again.
    publish(10);
    assert_eq!(
        s.try_recv().unwrap_err(),
        TryRecvError::Lagged {
            missed: 13,
            resume_seq: 26
        }
    );
    // Reading half a ring (4 values) before the next lap counts as keeping up: that lap
    // resumes at the oldest again.
    let (seqs, _, lags, end) = drain(&mut s);
    assert_eq!(
        (seqs, lags, end),
        (vec![26, 27, 28, 29], vec![], TryRecvError::Empty)
    );
    publish(20);
    assert_eq!(
        s.try_recv().unwrap_err(),
        TryRecvError::Lagged {
            missed: 12,
            resume_seq: 42
        }
    );
    // Exact either way: everything published is received or reported missed.
    let (seqs, _, lags, _) = drain(&mut s);
    assert_eq!((seqs.len(), lags), (8, vec![]));
    assert_eq!(1 + 4 + 8 + 12 + 13 + 12, p.stats().published);
}

#[test]
fn try_recv_many_batches_and_defers_a_lag_found_mid_batch() {
    let p = ring::ring::<u32>(cfg(4, 0));
    p.seal_startup();
    let mut s = p.subscribe();
    for i in 0..3 {
        p.publish(i);
    }
    let mut out = Vec::new();
    assert_eq!(s.try_recv_many(&mut out, 2), Ok(2));
    assert_eq!(s.try_recv_many(&mut out, 10), Ok(1));
    assert_eq!(
        out.iter().map(|e| e.seq()).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(s.try_recv_many(&mut out, 10), Err(TryRecvError::Empty));
    assert_eq!(s.try_recv_many(&mut out, 0), Ok(0));
    for i in 3..12 {
        p.publish(i);
    }
    out.clear();
    assert_eq!(
        s.try_recv_many(&mut out, 10),
        Err(TryRecvError::Lagged {
            missed: 5,
            resume_seq: 8
        })
    );
    assert_eq!(s.try_recv_many(&mut out, 10), Ok(4));
    assert_eq!(p.stats().lagged, 5);
}

/// Counts drops, to prove nothing leaks and nothing is dropped twice.
struct Counted(Arc<AtomicUsize>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn every_value_is_dropped_exactly_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    {
        let p = ring::ring::<Counted>(cfg(4, 2));
        for _ in 0..100 {
            p.publish(Counted(drops.clone()));
        }
        let mut s = p.subscribe_from(0);
        let held = s.try_recv().unwrap(); // replayed startup entry
        assert_eq!(held.seq(), 0);
        drop(p);
        drop(held);
        drop(s);
    }
    assert_dropped_eventually(&drops, 100);
}

/// Asserts that the drop count reaches exactly `expected` (driving the collector for up to
/// 20 s: `common::collect_until`).
fn assert_dropped_eventually(drops: &AtomicUsize, expected: usize) {
    common::collect_until(|| drops.load(Ordering::SeqCst) >= expected);
    assert_eq!(drops.load(Ordering::SeqCst), expected);
}

/// Owned references (`EntryRef`) held past their entry's overwrite, cloned and dropped on
/// several threads while the publisher laps everyone: every value is received or counted
/// as missed exactly, and dropped exactly once, whoever lets go of it last (the ring's
/// retirement or a subscriber's reference).
#[test]
fn entry_refs_held_and_cloned_across_threads_drop_every_value_once() {
    const PUBLISHED: u64 = 20_000;
    let drops = Arc::new(AtomicUsize::new(0));
    {
        let p = ring::ring::<Counted>(cfg(8, 0));
        p.seal_startup();
        let readers: Vec<_> = (0..3)
            .map(|k| {
                let mut s = p.subscribe();
                thread::spawn(move || {
                    let (mut received, mut missed) = (0u64, 0u64);
                    let mut kept = Vec::new();
                    loop {
                        match s.recv_blocking() {
                            Ok(entry) => {
                                received += 1;
                                // Keep some past their overwrite, and some clones.
                                if entry.seq() % 7 == k {
                                    let clone = entry.clone();
                                    assert!(EntryRef::ptr_eq(&clone, &entry));
                                    assert!(EntryRef::ref_count(&entry) >= 2);
                                    kept.push(clone);
                                }
                                if entry.seq() % 5 == k {
                                    kept.push(entry);
                                }
                                if kept.len() > 64 {
                                    kept.drain(..32);
                                }
                            }
                            Err(RecvError::Lagged { missed: m, .. }) => missed += m,
                            Err(RecvError::Closed) => return (received, missed, kept),
                        }
                    }
                })
            })
            .collect();
        for _ in 0..PUBLISHED {
            p.publish(Counted(drops.clone()));
        }
        drop(p);
        let mut still_held = Vec::new();
        for reader in readers {
            let (received, missed, kept) = reader.join().unwrap();
            assert_eq!(received + missed, PUBLISHED);
            still_held.push(kept);
        }
        // Dropped here, after the ring itself is gone.
        drop(still_held);
    }
    assert_dropped_eventually(&drops, PUBLISHED as usize);
}

/// A value tagged with the sequence number it was published at, counting its drops.
struct Tagged(u64, #[allow(dead_code)] Counted); // the `Counted` is held for its drop

/// Publishes `Tagged` values until the memory of an overwritten entry is reused for a new
/// one (at most `limit` publishes) and returns how many it took; every value is dropped
/// exactly once. The entry a publish installs is observed through `publish_observed`.
fn publish_until_an_entry_is_recycled(
    p: &ring::Publisher<Tagged>,
    drops: &Arc<AtomicUsize>,
    limit: u64,
) -> Option<u64> {
    let mut seen = std::collections::HashSet::new();
    for n in 0..limit {
        let next = p.stats().published;
        let mut at = 0;
        p.publish_observed(Tagged(next, Counted(drops.clone())), |e| {
            at = &**e as *const ring::Entry<Tagged> as usize;
            assert_eq!((e.seq(), e.0), (next, next));
        });
        if !seen.insert(at) {
            return Some(n + 1);
        }
    }
    None
}

/// An entry taken out of its slot waits out its grace period in the publishing thread's
/// limbo and is then reused for a later publish (no allocation), its old value dropped
/// then; every value is still dropped exactly once.
#[test]
fn overwritten_entries_are_recycled_and_every_value_dropped_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let published = {
        let p = ring::ring::<Tagged>(cfg(64, 4));
        let took = publish_until_an_entry_is_recycled(&p, &drops, 1_000_000);
        assert!(took.is_some(), "no entry recycled in 1,000,000 publishes");
        // Recycling dropped the values it overwrote, long before the ring goes.
        assert!(drops.load(Ordering::SeqCst) > 0);
        let mut s = p.subscribe_from(0);
        let first = s.try_recv().unwrap(); // the startup segment keeps its entries
        assert_eq!((first.seq(), first.0), (0, 0));
        p.stats().published
    };
    assert_dropped_eventually(&drops, published as usize);
}

/// A value lent to a reader (`recv_with`) is neither dropped nor overwritten by recycling
/// while the reader holds it, however many times the publisher laps the ring meanwhile.
#[test]
fn a_lent_entry_is_not_recycled_while_its_reader_holds_it() {
    const LAPS: u64 = 2_000;
    let drops = Arc::new(AtomicUsize::new(0));
    let published = {
        let p = ring::ring::<Tagged>(cfg(8, 0));
        p.seal_startup();
        let mut s = p.subscribe();
        p.publish(Tagged(0, Counted(drops.clone())));
        let (lent_tx, lent_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let reader = thread::spawn(move || {
            s.try_recv_with(|e| {
                let before = (e.seq(), e.0);
                lent_tx.send(()).unwrap();
                done_rx.recv().unwrap();
                (before, (e.seq(), e.0))
            })
            .unwrap()
        });
        lent_rx.recv().unwrap();
        for _ in 0..LAPS * 8 {
            let next = p.stats().published;
            p.publish(Tagged(next, Counted(drops.clone())));
        }
        // The lent value is alive: of the 1 + LAPS * 8 values, at most those retired
        // before the reader pinned its guard can have been dropped.
        assert!(drops.load(Ordering::SeqCst) < (LAPS * 8) as usize);
        done_tx.send(()).unwrap();
        let (before, after) = reader.join().unwrap();
        assert_eq!(before, (0, 0));
        assert_eq!(after, (0, 0), "the lent entry was reused while lent");
        p.stats().published
    };
    assert_dropped_eventually(&drops, published as usize);
}

/// A thread that publishes into rings of two value types recycles one type and hands the
/// other to the collector; both rings deliver their own values. When the thread then
/// publishes only the second type, the first type's overwritten values still get dropped
/// while their ring lives (its limbo drains), and every value of both is dropped once.
#[test]
fn one_thread_publishing_two_value_types_drops_each_value_once() {
    const EACH: u64 = 20_000;
    const CAPACITY: usize = 16;
    let (drops_t, drops_c) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let published_c = {
        let tagged = ring::ring::<Tagged>(cfg(CAPACITY, 0));
        let counted = ring::ring::<(u64, Counted)>(cfg(CAPACITY, 0));
        tagged.seal_startup();
        counted.seal_startup();
        let (mut st, mut sc) = (tagged.subscribe(), counted.subscribe());
        let (mut got_t, mut got_c) = (0u64, 0u64);
        for i in 0..EACH {
            tagged.publish(Tagged(i, Counted(drops_t.clone())));
            counted.publish((i, Counted(drops_c.clone())));
            if i % 4 == 0 {
                while let Ok(e) = st.try_recv() {
                    assert_eq!(e.seq(), e.0);
                    got_t += 1;
                }
                while let Ok(e) = sc.try_recv() {
                    assert_eq!(e.seq(), e.0);
                    got_c += 1;
                }
            }
        }
        assert!(got_t > 0 && got_c > 0);
        drop((st, sc));
        // Now only the second type, until every overwritten value of the first is dropped
        // (the last CAPACITY are still in their slots).
        let overwritten_t = EACH as usize - CAPACITY;
        let mut i = EACH;
        while drops_t.load(Ordering::SeqCst) < overwritten_t && i < 1_000_000 {
            counted.publish((i, Counted(drops_c.clone())));
            i += 1;
        }
        assert_eq!(drops_t.load(Ordering::SeqCst), overwritten_t);
        i
    };
    assert_dropped_eventually(&drops_t, EACH as usize);
    assert_dropped_eventually(&drops_c, published_c as usize);
}

#[test]
fn blocking_recv_wakes_on_publish_and_on_close() {
    let p = ring::ring::<u32>(cfg(8, 0));
    p.seal_startup();
    let mut s = p.subscribe();
    let reader = thread::spawn(move || {
        let (mut got, mut missed) = (Vec::new(), 0);
        loop {
            match s.recv_blocking() {
                Ok(e) => got.push(**e),
                Err(RecvError::Lagged { missed: m, .. }) => missed += m,
                Err(RecvError::Closed) => return (got, missed),
            }
        }
    });
    for i in 0..1000 {
        p.publish(i);
        if i % 100 == 0 {
            thread::yield_now();
        }
    }
    drop(p);
    // Capacity 8 may lap it; what it got must be in order and end with the last value.
    let (got, missed) = reader.join().unwrap();
    assert_eq!(got.len() as u64 + missed, 1000);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(got.last(), Some(&999));
}

/// Publishes `0..n` from a new thread, letting other threads run every 64 values, then
/// drops `p` (closing the ring if it was the last publisher).
fn publish_0_to(p: ring::Publisher<u64>, n: u64) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for i in 0..n {
            p.publish(i);
            if i % 64 == 0 {
                thread::yield_now();
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_recv_wakes_on_publish_and_on_close() {
    let p = ring::ring::<u64>(cfg(1 << 14, 0));
    p.seal_startup();
    let mut s = p.subscribe();
    let reader = tokio::spawn(async move {
        let mut sum = 0;
        let mut n = 0;
        loop {
            match s.recv().await {
                Ok(e) => {
                    sum += **e;
                    n += 1;
                }
                Err(RecvError::Closed) => return (n, sum),
                Err(e) => panic!("unexpected {e}"),
            }
        }
    });
    publish_0_to(p, 10_000).join().unwrap();
    assert_eq!(reader.await.unwrap(), (10_000, 10_000 * 9_999 / 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_many_waits_then_batches() {
    let p = ring::ring::<u64>(cfg(1 << 14, 0));
    p.seal_startup();
    let mut s = p.subscribe();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut batches = 0;
        loop {
            match s.recv_many(&mut out, 64).await {
                Ok(n) => {
                    assert!((1..=64).contains(&n));
                    batches += 1;
                }
                Err(RecvError::Closed) => return (out, batches),
                Err(e) => panic!("unexpected {e}"),
            }
        }
    });
    for i in 0..5_000u64 {
        p.publish(i);
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    drop(p);
    let (out, batches) = reader.await.unwrap();
    assert_eq!(out.len(), 5_000);
    assert!(out.iter().enumerate().all(|(i, e)| e.seq() == i as u64));
    assert!(batches <= 5_000);
}

/// Publishes `(producer, n)` for `n` in `0..per` from each of `producers` threads, then
/// drops the last publisher (closing the ring) once they are all done.
fn publish_from_threads(p: ring::Publisher<(u64, u64)>, producers: u64, per: u64) {
    let threads: Vec<_> = (0..producers)
        .map(|pid| {
            let p = p.clone();
            thread::spawn(move || {
                for n in 0..per {
                    p.publish((pid, n));
                }
            })
        })
        .collect();
    drop(p);
    for h in threads {
        h.join().unwrap();
    }
}

/// 4 producers x 250k with 8 subscribers, some slow, on a ring small enough that the slow
/// ones lap. For each subscriber: sequences strictly increase, per-producer order holds,
/// and received + missed == published since it joined.
#[test]
fn stress_many_producers_many_subscribers_exact_accounting() {
    const PRODUCERS: u64 = 4;
    const PER: u64 = 250_000;
    let p = ring::ring::<(u64, u64)>(cfg(1024, 0));
    p.seal_startup();
    let subs: Vec<_> = (0..8).map(|_| p.subscribe()).collect();
    let readers: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let slow = i % 3 == 2;
            thread::spawn(move || {
                let join = s.cursor();
                let (mut received, mut missed) = (0u64, 0u64);
                let mut last_seq: Option<u64> = None;
                let mut last_per = [None::<u64>; PRODUCERS as usize];
                loop {
                    match s.recv_blocking() {
                        Ok(e) => {
                            if let Some(l) = last_seq {
                                assert!(e.seq() > l, "sequence went backwards");
                            }
                            last_seq = Some(e.seq());
                            let (pid, n) = **e;
                            if let Some(prev) = last_per[pid as usize] {
                                assert!(n > prev, "producer {pid} order broken");
                            }
                            last_per[pid as usize] = Some(n);
                            received += 1;
                            if slow && received % 1000 == 0 {
                                thread::sleep(std::time::Duration::from_micros(200));
                            }
                        }
                        Err(RecvError::Lagged {
                            missed: m,
                            resume_seq,
                        }) => {
                            assert!(m >= 1);
                            missed += m;
                            if let Some(l) = last_seq {
                                assert!(resume_seq > l);
                            }
                        }
                        Err(RecvError::Closed) => return (join, received, missed, slow),
                    }
                }
            })
        })
        .collect();
    publish_from_threads(p, PRODUCERS, PER);
    let mut any_lag = false;
    for r in readers {
        let (join, received, missed, _slow) = r.join().unwrap();
        assert_eq!(received + missed, PRODUCERS * PER - join);
        any_lag |= missed > 0;
    }
    assert!(
        any_lag,
        "the slow subscribers were expected to lap at capacity 1024"
    );
}

/// Subscribers racing publishers and the seal, many rounds: each sees every startup event
/// exactly once, in order, and then everything from its join point, with no gap.
#[test]
fn seal_race_exactly_once_over_many_rounds() {
    for round in 0..1000u64 {
        let p = ring::ring::<u64>(cfg(256, 256));
        let per = 20u64;
        let go = Arc::new(std::sync::Barrier::new(4));
        let publishers: Vec<_> = (0..2)
            .map(|_| {
                let (p, go) = (p.clone(), go.clone());
                thread::spawn(move || {
                    go.wait();
                    for i in 0..per {
                        p.publish(i);
                    }
                })
            })
            .collect();
        let sealer = {
            let (p, go) = (p.clone(), go.clone());
            thread::spawn(move || {
                go.wait();
                for _ in 0..(round % 7) {
                    thread::yield_now();
                }
                p.seal_startup()
            })
        };
        let subscriber = {
            let (tap, go) = (p.tap(), go.clone());
            thread::spawn(move || {
                go.wait();
                for _ in 0..(round % 5) {
                    thread::yield_now();
                }
                let s = tap.subscribe();
                let join = s.cursor();
                (s, join)
            })
        };
        for h in publishers {
            h.join().unwrap();
        }
        let seal = sealer.join().unwrap();
        let (mut s, join) = subscriber.join().unwrap();
        drop(p);
        let mut seqs = Vec::new();
        loop {
            match s.try_recv() {
                Ok(e) => seqs.push(e.seq()),
                Err(TryRecvError::Closed) => break,
                Err(e) => panic!("round {round}: unexpected {e}"),
            }
        }
        let total = 2 * per;
        // Joined before the seal: everything. After: startup, then from the join point.
        let expected: Vec<u64> = if join <= seal {
            (0..total).collect()
        } else {
            (0..seal).chain(join..total).collect()
        };
        assert_eq!(seqs, expected, "round {round}: seal {seal}, join {join}");
    }
}

#[test]
fn try_recv_with_lends_the_value_in_order_and_reports_errors() {
    let p = ring::ring::<u32>(cfg(4, 2));
    p.publish(100); // startup, replayed by a borrowing receive too
    p.seal_startup();
    let mut s = p.subscribe();
    p.publish(101);
    assert_eq!(s.try_recv_with(|e| (e.seq(), **e)), Ok((0, 100)));
    assert_eq!(s.try_recv_with(|e| (e.seq(), **e)), Ok((1, 101)));
    assert_eq!(s.try_recv_with(|e| **e), Err(TryRecvError::Empty));
    for i in 0..9 {
        p.publish(i);
    }
    // 9 more published from seq 2: tail 11, capacity 4 keeps 7..=10.
    assert_eq!(
        s.try_recv_with(|e| **e),
        Err(TryRecvError::Lagged {
            missed: 5,
            resume_seq: 7
        })
    );
    assert_eq!(s.try_recv_with(|e| e.seq()), Ok(7));
    assert_eq!(p.stats().lagged, 5);
    drop(p);
    let mut rest = Vec::new();
    assert_eq!(s.try_recv_each(10, |e| rest.push(e.seq())), Ok(3));
    assert_eq!(rest, [8, 9, 10]);
    assert_eq!(s.try_recv_with(|e| **e), Err(TryRecvError::Closed));
}

#[test]
fn try_recv_each_batches_and_defers_a_lag_found_mid_batch() {
    let p = ring::ring::<u32>(cfg(4, 0));
    p.seal_startup();
    let mut s = p.subscribe();
    for i in 0..3 {
        p.publish(i);
    }
    let mut seen = Vec::new();
    assert_eq!(s.try_recv_each(2, |e| seen.push((e.seq(), **e))), Ok(2));
    assert_eq!(s.try_recv_each(10, |e| seen.push((e.seq(), **e))), Ok(1));
    assert_eq!(seen, [(0, 0), (1, 1), (2, 2)]);
    assert_eq!(s.try_recv_each(10, |_| {}), Err(TryRecvError::Empty));
    assert_eq!(s.try_recv_each(0, |_| {}), Ok(0));
    p.publish(3);
    for i in 4..12 {
        p.publish(i);
    }
    // Cursor 3, tail 12, capacity 4: 8..=11 retained, 3..=7 missed.
    seen.clear();
    assert_eq!(
        s.try_recv_each(10, |e| seen.push((e.seq(), **e))),
        Err(TryRecvError::Lagged {
            missed: 5,
            resume_seq: 8
        })
    );
    assert!(seen.is_empty());
    assert_eq!(s.try_recv_each(10, |e| seen.push((e.seq(), **e))), Ok(4));
    assert_eq!(seen, [(8, 8), (9, 9), (10, 10), (11, 11)]);
    assert_eq!(p.stats().lagged, 5);
}

#[test]
fn borrowing_receives_take_no_reference_count() {
    let p = ring::ring::<u32>(cfg(4, 0));
    p.seal_startup();
    let mut s = p.subscribe();
    let mut t = p.subscribe();
    p.publish(1);
    let held = t.try_recv().unwrap(); // one count for the slot, one for `held`
    assert_eq!(EntryRef::ref_count(&held), 2);
    s.try_recv_with(|e| assert_eq!(**e, 1)).unwrap();
    assert_eq!(EntryRef::ref_count(&held), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_a_value_a_lag_or_the_close_and_consumes_nothing() {
    let p = ring::ring::<u64>(cfg(4, 0));
    p.seal_startup();
    let mut s = p.subscribe();
    let publisher = p.clone();
    let producer = thread::spawn(move || publisher.publish(5));
    s.ready().await;
    s.ready().await; // still ready: nothing was consumed
    producer.join().unwrap();
    assert_eq!(s.try_recv_with(|e| **e), Ok(5));
    assert_eq!(s.try_recv_with(|e| **e), Err(TryRecvError::Empty));
    for i in 0..10 {
        p.publish(i);
    }
    s.ready().await; // a lag is ready too
    // Cursor 1, tail 11, capacity 4: 7..=10 retained, 1..=6 missed.
    assert_eq!(
        s.try_recv_with(|e| **e),
        Err(TryRecvError::Lagged {
            missed: 6,
            resume_seq: 7
        })
    );
    assert_eq!(s.try_recv_each(64, |_| {}), Ok(4));
    let closer = thread::spawn(move || drop(p));
    s.ready().await; // and the close
    closer.join().unwrap();
    assert_eq!(s.try_recv_with(|e| **e), Err(TryRecvError::Closed));
}

/// The borrowing path under the same load as the stress test above: 4 producers, async
/// subscribers that wait with `ready()` and read with `try_recv_each`, some lapped.
/// For each: sequences strictly increase and received + missed == published since join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_ready_and_try_recv_each_exact_accounting() {
    const PRODUCERS: u64 = 4;
    const PER: u64 = 100_000;
    let p = ring::ring::<(u64, u64)>(cfg(256, 0));
    p.seal_startup();
    let readers: Vec<_> = (0..6)
        .map(|i| {
            let mut s = p.subscribe();
            let slow = i % 3 == 2;
            tokio::spawn(async move {
                let join = s.cursor();
                let (mut received, mut missed) = (0u64, 0u64);
                let mut last_seq: Option<u64> = None;
                let mut last_per = [None::<u64>; PRODUCERS as usize];
                loop {
                    s.ready().await;
                    let got = s.try_recv_each(32, |e| {
                        assert!(last_seq.is_none_or(|l| e.seq() > l), "order");
                        last_seq = Some(e.seq());
                        let (pid, n) = **e;
                        assert!(last_per[pid as usize].is_none_or(|prev| n > prev));
                        last_per[pid as usize] = Some(n);
                    });
                    match got {
                        Ok(n) => {
                            received += n as u64;
                            if slow {
                                tokio::task::yield_now().await;
                            }
                        }
                        Err(TryRecvError::Lagged {
                            missed: m,
                            resume_seq,
                        }) => {
                            assert!(m >= 1);
                            assert!(last_seq.is_none_or(|l| resume_seq > l));
                            missed += m;
                        }
                        Err(TryRecvError::Closed) => return (join, received, missed),
                        Err(TryRecvError::Empty) => panic!("ready() resolved with nothing ready"),
                    }
                }
            })
        })
        .collect();
    publish_from_threads(p, PRODUCERS, PER);
    for r in readers {
        let (join, received, missed) = r.await.unwrap();
        assert_eq!(received + missed, PRODUCERS * PER - join);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_with_and_recv_each_wait_then_lend_everything_in_order() {
    let p = ring::ring::<u64>(cfg(1 << 14, 0));
    p.seal_startup();
    let mut one = p.subscribe();
    let mut batched = p.subscribe();
    let single = tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            match one.recv_with(|e| (e.seq(), **e)).await {
                Ok((seq, v)) => {
                    assert_eq!(seq, v);
                    seqs.push(seq);
                }
                Err(RecvError::Closed) => return seqs,
                Err(e) => panic!("unexpected {e}"),
            }
        }
    });
    let many = tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            match batched.recv_each(64, |e| seqs.push(e.seq())).await {
                Ok(n) => assert!((1..=64).contains(&n)),
                Err(RecvError::Closed) => return seqs,
                Err(e) => panic!("unexpected {e}"),
            }
        }
    });
    publish_0_to(p, 10_000).join().unwrap();
    let expected: Vec<u64> = (0..10_000).collect();
    assert_eq!(single.await.unwrap(), expected);
    assert_eq!(many.await.unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_with_reports_a_lag_and_keeps_its_closure_for_the_next_call() {
    let p = ring::ring::<u64>(cfg(4, 0));
    p.seal_startup();
    let mut s = p.subscribe();
    for i in 0..10 {
        p.publish(i);
    }
    let mut calls = 0;
    assert_eq!(
        s.recv_with(|e| {
            calls += 1;
            **e
        })
        .await,
        Err(RecvError::Lagged {
            missed: 6,
            resume_seq: 6
        })
    );
    assert_eq!(calls, 0, "the closure runs only for a value");
    assert_eq!(s.recv_with(|e| **e).await, Ok(6));
    let mut rest = Vec::new();
    assert_eq!(
        s.recv_each(0, |e| rest.push(**e)).await,
        Ok(1),
        "max 0 means 1"
    );
    assert_eq!(s.recv_each(8, |e| rest.push(**e)).await, Ok(2));
    assert_eq!(rest, [7, 8, 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_covers_the_startup_replay_and_a_from_point_no_longer_retained() {
    // Startup events to replay: ready at once, and the borrowing receive replays them.
    let p = ring::ring::<u64>(cfg(4, 8));
    p.publish(10);
    p.publish(11);
    let mut early = p.subscribe();
    early.ready().await;
    let mut seen = Vec::new();
    assert_eq!(early.try_recv_each(8, |e| seen.push((e.seq(), **e))), Ok(2));
    assert_eq!(seen, [(0, 10), (1, 11)]);
    assert_eq!(early.try_recv_each(8, |_| {}), Err(TryRecvError::Empty));
    p.seal_startup();
    for i in 2..12 {
        p.publish(i);
    }
    // A subscriber from sequence 2, which the 4-slot ring no longer holds: its first
    // ready() is the lag (2..=7 missed), then 8..=11.
    let mut late = p.subscribe_from(2);
    late.ready().await;
    assert_eq!(
        late.try_recv_each(8, |_| {}),
        Err(TryRecvError::Lagged {
            missed: 6,
            resume_seq: 8
        })
    );
    late.ready().await;
    seen.clear();
    assert_eq!(late.try_recv_each(8, |e| seen.push((e.seq(), **e))), Ok(4));
    assert_eq!(seen, [(8, 8), (9, 9), (10, 10), (11, 11)]);
}

#[test]
fn a_panicking_borrow_closure_consumes_its_value_and_the_subscriber_goes_on() {
    let p = ring::ring::<u32>(cfg(4, 0));
    p.seal_startup();
    let mut s = p.subscribe();
    p.publish(1);
    p.publish(2);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.try_recv_with(|e| -> u32 { panic!("closure failed on {}", **e) })
    }));
    assert!(caught.is_err());
    assert_eq!(s.try_recv_with(|e| (e.seq(), **e)), Ok((1, 2)));
    assert_eq!(s.try_recv_with(|e| **e), Err(TryRecvError::Empty));
}

#[test]
#[should_panic(expected = "ring capacity 18446744073709551615 is too large")]
fn a_capacity_with_no_power_of_two_in_usize_is_refused_with_a_clear_panic() {
    // Before: `next_power_of_two` wrapped to 0 in a release build, and the first publish
    // indexed an empty slot array.
    let _ = ring::ring::<u64>(cfg(usize::MAX, 0));
}

#[test]
fn skip_behind_keeps_the_newest_half_and_reports_the_skip_as_one_lag() {
    let p = ring::ring::<u64>(cfg(64, 8));
    p.publish(100); // a startup event
    p.seal_startup();
    let mut s = p.subscribe();
    for v in 0..30 {
        p.publish(v);
    }
    // Nothing is skipped while the startup replay is unfinished, nor with a cap of 0.
    assert_eq!(s.skip_behind(4), 0);
    assert_eq!(**s.try_recv().unwrap(), 100);
    assert_eq!(s.skip_behind(0), 0);
    // 30 behind (1..=30), cap 10: skip 25, to the newest 5.
    assert_eq!(s.cursor(), 1);
    assert_eq!(s.skip_behind(10), 25);
    assert_eq!(s.skip_behind(10), 0, "5 behind now");
    let (seqs, _, lags, end) = drain(&mut s);
    assert_eq!(lags, [(25, 26)]);
    assert_eq!(seqs, (26..31).collect::<Vec<_>>());
    assert_eq!(end, TryRecvError::Empty);
    // A cap of 1 still leaves the newest value; an odd cap keeps half rounded down.
    p.publish(31);
    p.publish(32);
    assert_eq!(s.skip_behind(1), 1);
    assert_eq!(drain(&mut s).0, [32]);
    assert_eq!(s.skip_behind(1), 0, "caught up");
    for v in 33..40 {
        p.publish(v);
    }
    assert_eq!(s.skip_behind(5), 5, "7 behind, keep 2");
    assert_eq!(drain(&mut s).2, [(5, 38)]);
    assert_eq!(p.stats().lagged, 25 + 1 + 5);
}

#[test]
fn skip_behind_waits_until_a_pending_lag_is_reported() {
    let p = ring::ring::<u64>(cfg(8, 0));
    p.seal_startup();
    let mut s = p.subscribe();
    p.publish(0);
    p.publish(1);
    // The batch reads 0; meanwhile (inside the lending closure) 16 more are published, so
    // 1 is overwritten: the batch stops there and keeps the lap (9 missed, resume at 10,
    // the oldest retained) for the next call.
    let mut seen = Vec::new();
    let lent = s.try_recv_each(4, |e| {
        seen.push(e.seq());
        if e.seq() == 0 {
            for v in 2..18 {
                p.publish(v);
            }
        }
    });
    assert_eq!((lent, seen), (Ok(1), vec![0]));
    // 8 behind, cap 4, but the lap is not told yet: it is told alone first...
    assert_eq!(s.skip_behind(4), 0);
    assert_eq!(
        s.try_recv().unwrap_err(),
        TryRecvError::Lagged {
            missed: 9,
            resume_seq: 10
        }
    );
    // ...and then the skip, as a lag of its own: 6 more, to 16.
    assert_eq!(s.skip_behind(4), 6);
    let (seqs, _, lags, end) = drain(&mut s);
    assert_eq!(lags, [(6, 16)]);
    assert_eq!(seqs, [16, 17]);
    // Received 0, 16 and 17, missed 9 + 6: all 18 published accounted for.
    assert_eq!(end, TryRecvError::Empty);
}

#[test]
fn skip_behind_leaves_the_startup_overflow_notice_alone() {
    // 3 startup events, 1 kept: a subscriber replays it, then is told of the 2 not kept.
    let p = ring::ring::<u64>(cfg(64, 1));
    for v in 0..3 {
        p.publish(v);
    }
    p.seal_startup();
    let mut s = p.subscribe();
    for v in 3..40 {
        p.publish(v);
    }
    assert_eq!(**s.try_recv().unwrap(), 0);
    assert_eq!(s.skip_behind(4), 0, "the overflow is told first");
    assert_eq!(
        s.try_recv().unwrap_err(),
        TryRecvError::Lagged {
            missed: 2,
            resume_seq: 3
        }
    );
    assert_eq!(s.skip_behind(4), 35);
    assert_eq!(drain(&mut s).2, [(35, 38)]);
}

#[test]
fn join_point_is_where_the_ring_was_when_the_subscriber_was_created() {
    let p = ring::ring::<u64>(cfg(64, 4));
    for v in 0..10 {
        p.publish(v);
    }
    let plain = p.subscribe();
    assert_eq!((plain.join_point(), plain.cursor()), (10, 10));
    let resuming = p.subscribe_from(2);
    assert_eq!((resuming.join_point(), resuming.cursor()), (10, 4));
    let ahead = p.subscribe_from(25);
    assert_eq!(
        ahead.join_point(),
        10,
        "a from point past it asks for the future"
    );
}

/// A reader that caps its backlog before every batch, against 2 producers publishing
/// flat out: every value is received or reported missed exactly once, in order.
#[test]
fn stress_skip_behind_exact_accounting() {
    const PRODUCERS: u64 = 2;
    const PER: u64 = 200_000;
    let p = ring::ring::<(u64, u64)>(cfg(1024, 0));
    p.seal_startup();
    let mut s = p.subscribe();
    let reader = thread::spawn(move || {
        let (mut received, mut missed, mut skipped) = (0u64, 0u64, 0u64);
        let mut next_seq = 0u64;
        loop {
            skipped += s.skip_behind(64);
            let got = s.try_recv_each(16, |e| {
                assert_eq!(e.seq(), next_seq, "in order, no gap not reported");
                next_seq += 1;
            });
            match got {
                Ok(n) => received += n as u64,
                Err(TryRecvError::Lagged {
                    missed: m,
                    resume_seq,
                }) => {
                    assert!(m >= 1);
                    assert_eq!(resume_seq, next_seq + m, "the lag accounts for the gap");
                    next_seq = resume_seq;
                    missed += m;
                }
                Err(TryRecvError::Empty) => thread::yield_now(),
                Err(TryRecvError::Closed) => return (received, missed, skipped),
            }
        }
    });
    publish_from_threads(p, PRODUCERS, PER);
    let (received, missed, skipped) = reader.join().unwrap();
    assert_eq!(received + missed, PRODUCERS * PER);
    assert!(skipped <= missed, "every skip is reported as missed");
    assert!(
        skipped > 0,
        "the reader never fell 64 behind: the test proves nothing"
    );
}

//! Model 1: one producer, one subscriber, capacity 2, three events. The subscriber reads
//! while the producer publishes (and laps it): it receives the values in order, or a
//! `Lagged` with the exact missed count and then the rest in order.
#![cfg(herald_loom)]

use std::sync::atomic::{AtomicBool, Ordering};

use herald_loom_tests::{DropLog, Payload, Step, Transcript, check, live_ring};
use loom::thread;

const EVENTS: u64 = 3;
const LABEL: u64 = 100;

/// Set when some execution reported a lag, so the model is known to reach that case.
static LAG_SEEN: AtomicBool = AtomicBool::new(false);
/// Set when some execution received every value without a lag.
static ALL_SEEN: AtomicBool = AtomicBool::new(false);

#[test]
fn in_order_or_exact_lag() {
    check("in_order_or_exact_lag", || {
        let publisher = live_ring(2);
        let mut sub = publisher.subscribe();
        let reader = thread::spawn(move || {
            let mut t = Transcript::default();
            // Bounded: three reads race the three publishes.
            for _ in 0..EVENTS {
                let step = t.record(sub.try_recv());
                assert_ne!(step, Step::Closed, "closed while the publisher is alive");
            }
            (sub, t)
        });
        for i in 0..EVENTS {
            assert_eq!(publisher.publish(Payload::new(LABEL + i)), i);
        }
        let (mut sub, mut t) = reader.join().unwrap();
        drop(publisher);
        t.drain(&mut sub, Step::Closed, 2 * EVENTS as usize);
        let (received, missed) = t.verify(0, EVENTS, |seq| LABEL + seq);
        assert_eq!(received + missed, EVENTS);
        if missed > 0 {
            LAG_SEEN.store(true, Ordering::Relaxed);
        } else {
            ALL_SEEN.store(true, Ordering::Relaxed);
        }
    });
    // Outside loom: both outcomes were explored.
    assert!(LAG_SEEN.load(Ordering::Relaxed), "no execution lagged");
    assert!(
        ALL_SEEN.load(Ordering::Relaxed),
        "no execution read everything"
    );
}

/// Set when some execution lent two values in one `try_recv_each` call.
static BATCH_SEEN: AtomicBool = AtomicBool::new(false);
/// Set when some batched execution reported a lag.
static BATCH_LAG_SEEN: AtomicBool = AtomicBool::new(false);

/// The same race for the batched borrowing read the WebSocket server uses:
/// `try_recv_each(2, ..)` lends up to two values per call, each read while the call's
/// epoch guard is pinned, while the producer publishes and laps the reader. The values
/// lent are whole and not yet dropped (their payload is read inside the closure and its
/// drop is logged), in order, none twice, and every gap is one exact `Lagged`.
#[test]
fn in_order_or_exact_lag_batched() {
    check("in_order_or_exact_lag_batched", || {
        let publisher = live_ring(2);
        let log = DropLog::new(EVENTS as usize);
        let mut sub = publisher.subscribe();
        let reader = thread::spawn(move || {
            let mut t = Transcript::default();
            let mut most = 0;
            // Bounded: two batched reads race the three publishes.
            for _ in 0..2 {
                match sub.try_recv_each(2, |entry| t.value(entry)) {
                    Ok(n) => {
                        assert!((1..=2).contains(&n), "lent {n} values");
                        most = most.max(n);
                    }
                    Err(e) => {
                        let step = t.record(Err(e));
                        assert_ne!(step, Step::Closed, "closed while the publisher is alive");
                    }
                }
            }
            (sub, t, most)
        });
        for i in 0..EVENTS {
            let payload = Payload::logged(LABEL + i, &log, i as usize);
            assert_eq!(publisher.publish(payload), i);
        }
        let (mut sub, mut t, most) = reader.join().unwrap();
        drop(publisher);
        t.drain(&mut sub, Step::Closed, 2 * EVENTS as usize);
        let (received, missed) = t.verify(0, EVENTS, |seq| LABEL + seq);
        assert_eq!(received + missed, EVENTS);
        if most == 2 {
            BATCH_SEEN.store(true, Ordering::Relaxed);
        }
        if missed > 0 {
            BATCH_LAG_SEEN.store(true, Ordering::Relaxed);
        }
    });
    assert!(
        BATCH_SEEN.load(Ordering::Relaxed),
        "no execution lent two values in one call"
    );
    assert!(
        BATCH_LAG_SEEN.load(Ordering::Relaxed),
        "no batched execution lagged"
    );
}

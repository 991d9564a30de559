//! Model 1: one producer, one subscriber, capacity 2, three events. The subscriber reads
//! while the producer publishes (and laps it): it receives the values in order, or a
//! `Lagged` with the exact missed count and then the rest in order.
#![cfg(herald_loom)]

use std::sync::atomic::{AtomicBool, Ordering};

use herald_loom_tests::{Payload, RingConfig, Step, Transcript, check, ring};
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
        let publisher = ring::<Payload>(RingConfig {
            capacity: 2,
            startup_capacity: 0,
        });
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

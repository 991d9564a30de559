//! Model 2: two producers publish across a wrap-around of a 2-slot ring while a subscriber
//! reads: no torn or duplicated value, each producer's order kept, and
//! received + missed == published.
#![cfg(herald_loom)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use herald_loom_tests::{Payload, Seen, Step, Transcript, check, live_ring};
use loom::thread;

/// Label of producer `p`'s `n`-th value.
fn label(p: u64, n: u64) -> u64 {
    10 * (p + 1) + n
}

/// Set when some execution missed a value (the wrap overtook the subscriber).
static MISSED_SEEN: AtomicBool = AtomicBool::new(false);

#[test]
fn two_producers_across_wrap() {
    check("two_producers_across_wrap", || {
        let publisher = live_ring(2);
        let mut sub = publisher.subscribe();
        let second = publisher.clone();
        // Producer 1 publishes two values, producer 0 (this thread) one: three values in
        // two slots, so the ring wraps.
        let producer = thread::spawn(move || {
            (0..2)
                .map(|n| (second.publish(Payload::new(label(1, n))), label(1, n)))
                .collect::<Vec<_>>()
        });
        let reader = thread::spawn(move || {
            let mut t = Transcript::default();
            for _ in 0..2 {
                let step = t.record(sub.try_recv());
                assert_ne!(step, Step::Closed, "closed while publishers are alive");
            }
            (sub, t)
        });
        let mut published = vec![(publisher.publish(Payload::new(label(0, 0))), label(0, 0))];
        let theirs = producer.join().unwrap();
        assert!(
            theirs[0].0 < theirs[1].0,
            "a producer's sequence numbers increase"
        );
        published.extend(theirs);
        let (mut sub, mut t) = reader.join().unwrap();
        drop(publisher);
        t.drain(&mut sub, Step::Closed, 6);

        let labels: BTreeMap<u64, u64> = published.iter().copied().collect();
        assert_eq!(labels.len(), 3, "three distinct sequence numbers");
        assert_eq!(labels.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
        let (received, missed) = t.verify(0, 3, |seq| labels[&seq]);
        assert_eq!(received + missed, 3);
        // Per-producer order: each producer's values arrive in the order it published.
        for p in 0..2 {
            let ns: Vec<u64> = t
                .seen
                .iter()
                .filter_map(|s| match *s {
                    Seen::Value { label: l, .. } if l / 10 == p + 1 => Some(l % 10),
                    _ => None,
                })
                .collect();
            assert!(
                ns.windows(2).all(|w| w[0] < w[1]),
                "producer {p} order: {ns:?}"
            );
        }
        if missed > 0 {
            MISSED_SEEN.store(true, Ordering::Relaxed);
        }
    });
    assert!(
        MISSED_SEEN.load(Ordering::Relaxed),
        "no execution missed a value"
    );
}

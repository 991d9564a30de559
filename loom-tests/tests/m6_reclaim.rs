//! Model 6: reclamation. The producer overwrites the entry a subscriber is reading (a
//! 2-slot ring, three values). The payload is not freed while the subscriber holds it (it
//! reads the payload's loom-tracked body and checks its drop flag, in loom atomics, is
//! clear), is freed exactly once as soon as nobody holds it, and nothing leaks (each entry
//! and payload holds a loom `Arc`, and loom fails the model on a leaked one).
#![cfg(herald_loom)]

use herald_loom_tests::{DropLog, Payload, RingConfig, Seen, Step, Transcript, check, ring};
use loom::thread;

const EVENTS: u64 = 3;

#[test]
fn overwritten_entry_is_neither_freed_early_nor_leaked() {
    check(
        "overwritten_entry_is_neither_freed_early_nor_leaked",
        || {
            let log = DropLog::new(EVENTS as usize);
            let publisher = ring::<Payload>(RingConfig {
                capacity: 2,
                startup_capacity: 0,
            });
            let mut sub = publisher.subscribe();
            let reader = {
                let log = log.clone();
                thread::spawn(move || {
                    let mut held = Vec::new();
                    let mut t = Transcript::default();
                    for _ in 0..2 {
                        match sub.try_recv() {
                            Ok(entry) => {
                                t.value(&entry); // reads the body, checks the drop flag
                                held.push(entry);
                            }
                            Err(e) => assert_ne!(t.record(Err(e)), Step::Closed),
                        }
                    }
                    // Still held after the producer may have overwritten and retired them.
                    for entry in &held {
                        let index = entry.seq() as usize;
                        assert!(!log.is_dropped(index), "entry {index} freed while held");
                        assert_eq!(entry.value().read(), entry.seq());
                    }
                    (sub, t)
                })
            };
            for i in 0..EVENTS {
                assert_eq!(publisher.publish(Payload::logged(i, &log, i as usize)), i);
            }
            let (sub, t) = reader.join().unwrap();
            // Quiescent: the reader dropped what it held, no guard is pinned. Event 0 was
            // overwritten by event 2 and is freed; events 1 and 2 are still in the ring.
            assert_eq!(log.flags(), vec![true, false, false]);
            let received = t
                .seen
                .iter()
                .filter(|s| matches!(s, Seen::Value { .. }))
                .count();
            assert!(received <= 2);
            drop((sub, publisher));
            // The ring is gone: everything freed once (a second drop panics in the log).
            assert_eq!(log.flags(), vec![true; EVENTS as usize]);
        },
    );
}

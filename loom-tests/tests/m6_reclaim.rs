//! Model 6: reclamation. The producer overwrites the entry a subscriber is reading (a
//! 2-slot ring, three values). The payload is not freed while the subscriber holds it (it
//! reads the payload's loom-tracked body and checks its drop flag, in loom atomics, is
//! clear). Once nobody holds it, the next publish reuses its entry and drops it there,
//! exactly once, and nothing leaks (each entry and payload holds a loom `Arc`, and loom
//! fails the model on a leaked one).
#![cfg(herald_loom)]

use std::sync::atomic::{AtomicBool, Ordering};

use herald_loom_tests::{DropLog, Payload, Step, Transcript, check, live_ring};
use loom::thread;

const EVENTS: u64 = 3;

/// Set when some execution had the reader holding entry 0 after event 2 replaced it in
/// its slot: the case this model is about.
static HELD_WHILE_OVERWRITTEN: AtomicBool = AtomicBool::new(false);

#[test]
fn overwritten_entry_is_neither_freed_early_nor_leaked() {
    check(
        "overwritten_entry_is_neither_freed_early_nor_leaked",
        || {
            let log = DropLog::new(EVENTS as usize + 1);
            let publisher = live_ring(2);
            let mut sub = publisher.subscribe();
            let tap = publisher.tap();
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
                    let published = tap.stats().published;
                    for entry in &held {
                        let index = entry.seq() as usize;
                        assert!(!log.is_dropped(index), "entry {index} freed while held");
                        assert_eq!(entry.value().read(), entry.seq());
                        if index == 0 && published == EVENTS {
                            HELD_WHILE_OVERWRITTEN.store(true, Ordering::Relaxed);
                        }
                    }
                    (sub, t)
                })
            };
            for i in 0..EVENTS {
                assert_eq!(publisher.publish(Payload::logged(i, &log, i as usize)), i);
            }
            let (mut sub, mut t) = reader.join().unwrap();
            // Quiescent: the reader dropped what it held, no guard is pinned. Event 0 was
            // overwritten by event 2 and waits for reuse; events 1 and 2 are in the ring.
            assert_eq!(log.flags(), vec![false; EVENTS as usize + 1]);
            // The next publish reuses event 0's entry: its payload is dropped there.
            let last = Payload::logged(EVENTS, &log, EVENTS as usize);
            assert_eq!(publisher.publish(last), EVENTS);
            assert_eq!(log.flags(), vec![true, false, false, false]);
            drop(publisher);
            t.drain(&mut sub, Step::Closed, 6);
            let (received, missed) = t.verify(0, EVENTS + 1, |seq| seq);
            assert_eq!(received + missed, EVENTS + 1);
            drop(sub);
            // The ring is gone: everything freed once (a second drop panics in the log).
            assert_eq!(log.flags(), vec![true; EVENTS as usize + 1]);
        },
    );
    assert!(
        HELD_WHILE_OVERWRITTEN.load(Ordering::Relaxed),
        "no execution held an entry while it was overwritten"
    );
}

//! Model 7: recycling. A subscriber takes each value with a count, reads its payload and
//! lets go of it, while the producer publishes four values into a 2-slot ring. From the
//! fourth publish on, a publish reuses the entry an earlier one overwrote once no guard is
//! pinned, dropping the old payload there, if the entry's count is the slot's alone. The
//! subscriber's last read of a payload must happen before that drop and the new entry
//! written in its place (the count's Acquire load in `Entry::reclaim` pairs with the
//! subscriber's Release decrement); loom reports the read otherwise. Every value is
//! received or counted as missed exactly once, and every payload is dropped once.
#![cfg(herald_loom)]

use std::sync::atomic::{AtomicBool, Ordering};

use herald_loom_tests::{DropLog, Payload, Step, Transcript, check, live_ring};
use loom::sync::Arc;
use loom::thread;

const EVENTS: u64 = 4;

/// Set when some execution dropped payload 0 by reusing its entry while the subscriber
/// was still reading: the case this model is about.
static REUSED_WHILE_READING: AtomicBool = AtomicBool::new(false);

#[test]
fn a_reused_entry_is_one_nobody_reads() {
    check("a_reused_entry_is_one_nobody_reads", || {
        let log = DropLog::new(EVENTS as usize);
        let publisher = live_ring(2);
        let mut sub = publisher.subscribe();
        let reading = Arc::new(loom::sync::atomic::AtomicBool::new(true));
        let reader = {
            let reading = reading.clone();
            thread::spawn(move || {
                let mut t = Transcript::default();
                for _ in 0..2 {
                    // `record` reads the payload while it holds the entry, then lets go.
                    assert_ne!(t.record(sub.try_recv()), Step::Closed);
                }
                // Release: pairs with the producer's Acquire load below.
                reading.store(false, Ordering::Release);
                (sub, t)
            })
        };
        for i in 0..EVENTS {
            assert_eq!(publisher.publish(Payload::logged(i, &log, i as usize)), i);
        }
        // Acquire: pairs with the reader's Release store.
        if log.is_dropped(0) && reading.load(Ordering::Acquire) {
            REUSED_WHILE_READING.store(true, Ordering::Relaxed);
        }
        let (mut sub, mut t) = reader.join().unwrap();
        drop(publisher);
        t.drain(&mut sub, Step::Closed, 6);
        let (received, missed) = t.verify(0, EVENTS, |seq| seq);
        assert_eq!(received + missed, EVENTS);
        drop(sub);
        // The ring is gone: every payload dropped once (a second drop panics in the log).
        assert_eq!(log.flags(), vec![true; EVENTS as usize]);
    });
    assert!(
        REUSED_WHILE_READING.load(Ordering::Relaxed),
        "no execution reused an entry while the subscriber was reading"
    );
}

//! Model 5: close. Two publishers each publish one value and drop; the last one to drop
//! closes the ring while a subscriber waits in `recv`. The subscriber receives both values,
//! then `Closed`, and is never left parked.
#![cfg(herald_loom)]

use herald_loom_tests::{Payload, Step, Transcript, check, live_ring};
use loom::future::block_on;
use loom::thread;

#[test]
fn last_publisher_drop_closes_after_drain() {
    check("last_publisher_drop_closes_after_drain", || {
        let publisher = live_ring(2);
        let mut sub = publisher.subscribe();
        let reader = thread::spawn(move || {
            let mut t = Transcript::default();
            // Bounded: two values, then Closed.
            for _ in 0..3 {
                if t.record_recv(block_on(sub.recv())) == Step::Closed {
                    return t;
                }
            }
            panic!("no Closed after two values: {t:?}");
        });
        let second = publisher.clone();
        let other = thread::spawn(move || {
            let seq = second.publish(Payload::new(1));
            drop(second);
            seq
        });
        let mine = publisher.publish(Payload::new(0));
        drop(publisher);
        let theirs = other.join().unwrap();
        let t = reader.join().unwrap();
        assert_eq!(mine + theirs, 1, "sequence numbers 0 and 1");
        let label_of = |seq| if seq == mine { 0 } else { 1 };
        assert_eq!(t.verify(0, 2, label_of), (2, 0), "both values, then Closed");
    });
}

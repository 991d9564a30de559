//! Model 4 (blocking): no lost wakeup. A subscriber that finds nothing and parks its
//! thread in `recv_blocking` while a producer publishes is always woken (twice in a row):
//! loom reports a deadlock if, in any interleaving, it stays parked.
#![cfg(herald_loom)]

use herald_loom_tests::{Payload, Step, Transcript, check, live_ring};
use loom::thread;

const LABEL: u64 = 100;

#[test]
fn blocking_recv_is_woken_twice() {
    check("blocking_recv_is_woken_twice", || {
        let publisher = live_ring(2);
        let mut sub = publisher.subscribe();
        let reader = thread::spawn(move || {
            let mut t = Transcript::default();
            // Two waits: the second parks again with the node the first one pushed,
            // which a publisher may still be taking off the waiters stack.
            for _ in 0..2 {
                assert_eq!(t.record_recv(sub.recv_blocking()), Step::Value);
            }
            t
        });
        for i in 0..2 {
            assert_eq!(publisher.publish(Payload::new(LABEL + i)), i);
        }
        let t = reader.join().unwrap();
        assert_eq!(t.verify(0, 2, |seq| LABEL + seq), (2, 0));
    });
}

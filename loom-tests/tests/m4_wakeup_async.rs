//! Model 4 (async): no lost wakeup. A subscriber that finds nothing and parks in the async
//! `recv` (driven by loom's `block_on`) while a producer publishes is always woken: loom
//! reports a deadlock if, in any interleaving, it stays parked.
#![cfg(herald_loom)]

use herald_loom_tests::{Payload, RingConfig, Step, Transcript, check, ring};
use loom::future::block_on;
use loom::thread;

const LABEL: u64 = 100;

#[test]
fn async_recv_is_woken() {
    check("async_recv_is_woken", || {
        let publisher = ring::<Payload>(RingConfig {
            capacity: 2,
            startup_capacity: 0,
        });
        let mut sub = publisher.subscribe();
        let reader = thread::spawn(move || {
            let mut t = Transcript::default();
            assert_eq!(t.record_recv(block_on(sub.recv())), Step::Value);
            t
        });
        assert_eq!(publisher.publish(Payload::new(LABEL)), 0);
        let t = reader.join().unwrap();
        assert_eq!(t.verify(0, 1, |seq| LABEL + seq), (1, 0));
    });
}

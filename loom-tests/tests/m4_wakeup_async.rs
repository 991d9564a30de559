//! Model 4 (async): no lost wakeup. A subscriber that finds nothing and parks in the async
//! `recv` (driven by loom's `block_on`) while a producer publishes is always woken: loom
//! reports a deadlock if, in any interleaving, it stays parked.
#![cfg(herald_loom)]

use herald_loom_tests::{Payload, Step, Transcript, check, live_ring};
use loom::future::block_on;
use loom::thread;

const LABEL: u64 = 100;

#[test]
fn async_recv_is_woken() {
    check("async_recv_is_woken", || {
        let publisher = live_ring(2);
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

/// The same for the borrowing path the WebSocket server uses: `ready()` parks until a
/// value is there, then `try_recv_each` lends it without a reference count.
#[test]
fn ready_is_woken_and_lends_the_value() {
    check("ready_is_woken_and_lends_the_value", || {
        let publisher = live_ring(2);
        let mut sub = publisher.subscribe();
        let reader = thread::spawn(move || {
            block_on(sub.ready());
            let mut seen = Vec::new();
            let n = sub.try_recv_each(4, |entry| seen.push((entry.seq(), entry.read())));
            (n, seen)
        });
        assert_eq!(publisher.publish(Payload::new(LABEL)), 0);
        let (n, seen) = reader.join().unwrap();
        assert_eq!(n, Ok(1));
        assert_eq!(seen, [(0, LABEL)]);
    });
}

/// And for `recv_with`, which parks with the closure still unused and lends the value on
/// the poll that finds it.
#[test]
fn recv_with_is_woken() {
    check("recv_with_is_woken", || {
        let publisher = live_ring(2);
        let mut sub = publisher.subscribe();
        let reader = thread::spawn(move || block_on(sub.recv_with(|e| (e.seq(), e.read()))));
        assert_eq!(publisher.publish(Payload::new(LABEL)), 0);
        assert_eq!(reader.join().unwrap(), Ok((0, LABEL)));
    });
}

/// The sweep: a subscriber dropped while parked leaves its node on the wait stack, and
/// under loom every such drop takes the stack itself (`STALE_SWEEP` is 1), waking whoever
/// is on it. A live subscriber parking meanwhile, and a publish, must still end with it
/// woken and holding the value: the sweep races its push and the publisher's check of the
/// stack, and may take its node before the publisher looks.
#[test]
fn sweep_by_a_dropped_subscriber_loses_no_wakeup() {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Waker};

    check("sweep_by_a_dropped_subscriber_loses_no_wakeup", || {
        let publisher = live_ring(2);
        let mut sub = publisher.subscribe();
        let mut gone = publisher.subscribe();
        {
            // Parks `gone`: its node goes on the stack.
            let mut recv = gone.recv();
            let mut cx = Context::from_waker(Waker::noop());
            assert!(Pin::new(&mut recv).poll(&mut cx).is_pending());
        }
        let reader = thread::spawn(move || {
            let mut t = Transcript::default();
            assert_eq!(t.record_recv(block_on(sub.recv())), Step::Value);
            t
        });
        let dropper = thread::spawn(move || drop(gone));
        assert_eq!(publisher.publish(Payload::new(LABEL)), 0);
        dropper.join().unwrap();
        let t = reader.join().unwrap();
        assert_eq!(t.verify(0, 1, |seq| LABEL + seq), (1, 0));
    });
}

//! Model 8: no lost wakeup in the startup replay. A subscriber that joins after a startup
//! event's claim but before its publisher stored the startup cell replays that cell: it
//! finds it empty and parks on it (not on a ring slot), and the publisher's store must
//! wake it. A subscriber races one startup publish, then waits for its first value, async
//! and blocking; loom reports a deadlock if, in any interleaving, it stays parked. Every
//! join point (before the claim: the value is read live; after it: replayed) is explored.
#![cfg(herald_loom)]

use std::sync::Mutex;

use herald_loom_tests::{Payload, RingConfig, Step, Transcript, check, ring};
use loom::future::block_on;
use loom::thread;

const LABEL: u64 = 100;

/// Join points seen, per model, to show that both sides of the race are explored.
static JOINS: Mutex<Vec<(&str, u64)>> = Mutex::new(Vec::new());

fn model(name: &'static str, blocking: bool) {
    check(name, move || {
        let publisher = ring::<Payload>(RingConfig {
            capacity: 2,
            startup_capacity: 1,
        });
        // The subscriber waits on a thread of its own, so that a wakeup it no longer needs
        // lands on a thread nobody joins on (loom's `join` takes a stale unpark for its
        // own notification).
        let tap = publisher.tap();
        let reader = thread::spawn(move || {
            let mut sub = tap.subscribe();
            let join = sub.cursor(); // 0: before the claim, 1: after it (replays cell 0)
            let mut t = Transcript::default();
            let step = if blocking {
                t.record_recv(sub.recv_blocking())
            } else {
                t.record_recv(block_on(sub.recv()))
            };
            assert_eq!(step, Step::Value);
            (join, t)
        });
        assert_eq!(publisher.publish(Payload::new(LABEL)), 0);
        let (join, t) = reader.join().unwrap();
        assert_eq!(t.verify(0, 1, |seq| LABEL + seq), (1, 0));
        JOINS.lock().unwrap().push((name, join));
    });
    let joins = JOINS.lock().unwrap();
    for join in [0, 1] {
        assert!(
            joins.contains(&(name, join)),
            "{name}: join point {join} never explored"
        );
    }
}

#[test]
fn async_replay_is_woken() {
    model("async_replay_is_woken", false);
}

#[test]
fn blocking_replay_is_woken() {
    model("blocking_replay_is_woken", true);
}

//! Model 9: `skip_behind` racing publishes. A reader does what the WebSocket server does
//! with `max_behind` (here 1): before each batch it caps its backlog, then waits with
//! `ready()` and borrows what is there with `try_recv_each`, while a producer publishes 2
//! values into capacity 2 and then drops its publisher. The skip target is computed from
//! `tail`, which counts claims whose values may not be installed yet: whatever the
//! interleaving, values come in order, every gap is told with its exact count, received +
//! missed == 2, and the reader is never left parked. Both a run that skipped and one that
//! did not are reached. (Skips mixed with laps are in `core/tests/ring.rs`'s stress test: a
//! third publish here makes 683 thousand executions instead of 40 thousand.)
//!
//! The reader waits in the async path (loom's `block_on`), as the server does. In the
//! blocking path loom reports false deadlocks here: an `unpark` that reaches a thread while
//! it waits for the reclamation stand-in's loom `Mutex` (between its re-check and its
//! `park`) makes it runnable instead of saving the token, as `std` would (loom 0.7's
//! `set_unparked`), so its `park` then sleeps for good.
#![cfg(herald_loom)]

use std::sync::Mutex;

use herald_core::ring::TryRecvError;
use herald_loom_tests::{Payload, Transcript, check, live_ring};
use loom::future::block_on;
use loom::thread;

const LABEL: u64 = 100;

/// Whether each execution skipped, to show that both cases are explored.
static SKIPPED: Mutex<Vec<bool>> = Mutex::new(Vec::new());

#[test]
fn skip_behind_keeps_exact_accounting() {
    check("skip_behind_keeps_exact_accounting", || {
        let publisher = live_ring(2);
        let mut sub = publisher.subscribe();
        let reader = thread::spawn(move || {
            let mut t = Transcript::default();
            let mut skipped = 0;
            for _ in 0..8 {
                skipped += sub.skip_behind(1);
                block_on(sub.ready());
                match sub.try_recv_each(4, |entry| t.value(entry)) {
                    Ok(_) => {}
                    Err(TryRecvError::Lagged { missed, resume_seq }) => {
                        t.record(Err(TryRecvError::Lagged { missed, resume_seq }));
                    }
                    Err(TryRecvError::Closed) => return (t, skipped),
                    // `ready()` can be followed by `Empty` (its docs): wait again.
                    Err(TryRecvError::Empty) => {}
                }
            }
            panic!("not closed after 8 batches: {t:?}");
        });
        for i in 0..2 {
            assert_eq!(publisher.publish(Payload::new(LABEL + i)), i);
        }
        // Dropping the last publisher closes the ring: the reader drains, then ends.
        drop(publisher);
        let (t, skipped) = reader.join().unwrap();
        let (_, missed) = t.verify(0, 2, |seq| LABEL + seq);
        assert!(skipped <= missed, "a skip not told: {t:?}");
        SKIPPED.lock().unwrap().push(skipped > 0);
    });
    let skipped = SKIPPED.lock().unwrap();
    assert!(skipped.contains(&true), "no execution skipped");
    assert!(skipped.contains(&false), "every execution skipped");
}

//! Model 3: a subscriber subscribes while one producer publishes and another thread calls
//! `seal_startup()`. It receives every startup event (those before the seal point) exactly
//! once, then every live event from its join point: no gap, no duplicate. And the startup
//! segment keeps exactly the events published before the seal: once the ring has lapped
//! them and their memory is reused, the live events are dropped and the startup events
//! are not.
#![cfg(herald_loom)]

use std::sync::Mutex;

use herald_loom_tests::{DropLog, Payload, RingConfig, Seen, Step, Transcript, check, ring};
use loom::thread;

const LABEL: u64 = 100;

/// `(seal point, join point)` of every execution, to show that the model explores each
/// outcome of the race.
static OUTCOMES: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

#[test]
fn subscribe_races_publish_and_seal() {
    check("subscribe_races_publish_and_seal", || {
        let log = DropLog::new(6);
        let publisher = ring::<Payload>(RingConfig {
            capacity: 2,
            startup_capacity: 4,
        });
        // Event 0 is a startup event whatever happens next.
        assert_eq!(publisher.publish(Payload::logged(LABEL, &log, 0)), 0);

        let producer = {
            let p = publisher.clone();
            let log = log.clone();
            thread::spawn(move || {
                assert_eq!(p.publish(Payload::logged(LABEL + 1, &log, 1)), 1);
            })
        };
        let sealer = {
            let p = publisher.clone();
            thread::spawn(move || p.seal_startup())
        };
        let mut sub = publisher.subscribe();
        let join = sub.cursor();
        producer.join().unwrap();
        let seal = sealer.join().unwrap();
        assert!(seal == 1 || seal == 2, "seal point {seal}");
        assert_eq!(
            publisher.seal_startup(),
            seal,
            "sealing again returns the same point"
        );

        // Event 2 is live: after the seal.
        assert_eq!(publisher.publish(Payload::logged(LABEL + 2, &log, 2)), 2);
        let mut t = Transcript::default();
        t.drain(&mut sub, Step::Empty, 8);
        assert!(!t.lagged(), "nothing can be lapped here: {t:?}");
        // Startup replay [0, seal), then live from the join point: a subscriber that
        // joined after the seal has join >= seal; one that joined before it replays
        // [0, join) with join <= seal and reads the rest live, so it gets every event.
        let expected: Vec<u64> = (0..seal).chain(join.max(seal)..3).collect();
        assert_eq!(t.seqs(), expected, "seal {seal}, join {join}");
        if join < seal {
            assert_eq!(t.seqs(), vec![0, 1, 2], "joined before the seal");
        }
        for seen in &t.seen {
            if let Seen::Value { seq, label } = *seen {
                assert_eq!(label, LABEL + seq, "payload of {seq}");
            }
        }

        // Overwrite events 1, 2 and 3 in the ring (event 0 already was, by event 2). Each
        // publish first reuses the entry the one before it overwrote (no guard is pinned):
        // a live one (nobody holds it) has its value dropped then, a startup one is kept
        // by its startup cell and the publish allocates instead.
        for seq in 3..6 {
            assert_eq!(
                publisher.publish(Payload::logged(LABEL + seq, &log, seq as usize)),
                seq
            );
        }
        let flags = log.flags();
        for (seq, dropped) in flags.iter().enumerate().take(3) {
            let startup = (seq as u64) < seal;
            assert_eq!(*dropped, !startup, "event {seq}, seal {seal}: {flags:?}");
        }
        assert!(
            !flags[3] && !flags[4] && !flags[5],
            "event 3 waits for reuse, 4 and 5 are in the ring: {flags:?}"
        );

        // A subscriber joining now replays exactly the startup segment.
        let mut late = publisher.subscribe();
        let mut t = Transcript::default();
        t.drain(&mut late, Step::Empty, 8);
        let expected: Vec<u64> = (0..seal).collect();
        assert_eq!(t.seqs(), expected, "late subscriber, seal {seal}");
        assert_eq!(publisher.stats().startup_len, seal);

        OUTCOMES.lock().unwrap().push((seal, join));
        drop((sub, late, publisher));
        assert!(
            log.flags().iter().all(|d| *d),
            "everything freed with the ring"
        );
    });
    let outcomes = OUTCOMES.lock().unwrap();
    for case in [(1, 1), (1, 2), (2, 1), (2, 2)] {
        assert!(outcomes.contains(&case), "outcome {case:?} never explored");
    }
}

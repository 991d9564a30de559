//! The node-facing bus: sequence numbers, shared encodings, hooks, counters, closing.

use std::sync::{Arc, Mutex};

use herald_core::bus::{Bus, BusConfig, BusEntryRef, BusStats, PublishHook};
use herald_core::event::{Event, EventKind};
use herald_core::ring::{EntryRef, TryRecvError};

fn hash(n: u64) -> String {
    format!("{n:064x}")
}

fn ceremony() -> Vec<Event> {
    vec![
        Event::NodeStarted {
            address: "rnode://00ff@127.0.0.1?protocol=40400&discovery=40404".into(),
        },
        Event::ApprovedBlockReceived {
            block_hash: hash(1),
        },
        Event::EnteredRunningState {
            block_hash: hash(1),
        },
    ]
}

#[test]
fn default_config_is_documented_sizes() {
    assert_eq!(
        BusConfig::default(),
        BusConfig {
            capacity: 4096,
            startup_capacity: 4096
        }
    );
    let st = Bus::default().stats();
    assert_eq!(
        st,
        BusStats {
            capacity: 4096,
            ..BusStats::default()
        }
    );
}

#[test]
fn lifecycle_is_replayed_then_live_with_the_spec_envelope() {
    let bus = Bus::new(BusConfig::default());
    for e in ceremony() {
        bus.publish(e);
    }
    assert_eq!(bus.seal_startup(), 3);
    let mut client = bus.subscribe();
    bus.publish(Event::SentApprovedBlock {
        block_hash: hash(2),
    });
    let mut kinds = Vec::new();
    while let Ok(entry) = client.try_recv() {
        assert_eq!(entry.json(), &entry.event().encode());
        kinds.push((entry.seq(), entry.kind()));
    }
    assert_eq!(
        kinds,
        vec![
            (0, EventKind::NodeStarted),
            (1, EventKind::ApprovedBlockReceived),
            (2, EventKind::EnteredRunningState),
            (3, EventKind::SentApprovedBlock),
        ]
    );
}

#[test]
fn the_encoding_is_computed_once_and_shared_by_every_subscriber() {
    let bus = Bus::new(BusConfig::default());
    bus.seal_startup();
    let mut a = bus.subscribe();
    let mut b = bus.subscribe();
    bus.publish(ceremony().remove(0));
    let (x, y) = (a.try_recv().unwrap(), b.try_recv().unwrap());
    assert!(EntryRef::ptr_eq(&x, &y), "one entry for all subscribers");
    let (jx, jy) = (x.json(), y.json());
    assert_eq!(jx.as_ptr(), jy.as_ptr(), "one encoding for all subscribers");
    assert_eq!(x.json().as_ptr(), jx.as_ptr(), "encoded once, not per call");
}

#[test]
fn json_with_seq_carries_the_global_sequence_number() {
    let bus = Bus::new(BusConfig::default());
    for e in ceremony() {
        bus.publish(e);
    }
    let mut s = bus.subscribe_from(2);
    let e = s.try_recv().unwrap();
    let text = std::str::from_utf8(e.json_with_seq()).unwrap();
    assert!(
        text.starts_with(r#"{"event":"entered-running-state","schema-version":1,"seq":2,"#),
        "{text}"
    );
    assert_eq!(e.json_with_seq(), &e.event().encode_with_seq(2));
}

/// Records what it sees.
#[derive(Default)]
struct Recorder(Mutex<Vec<(u64, EventKind)>>);
impl PublishHook for Recorder {
    fn on_publish(&self, entry: &BusEntryRef) {
        self.0.lock().unwrap().push((entry.seq(), entry.kind()));
    }
}

#[test]
fn the_hook_sees_every_event_even_when_subscribers_lag() {
    let rec = Arc::new(Recorder::default());
    let bus = Bus::with_hook(
        BusConfig {
            capacity: 4,
            startup_capacity: 0,
        },
        rec.clone(),
    );
    bus.seal_startup();
    let mut slow = bus.subscribe();
    for i in 0..100 {
        bus.publish(Event::SentApprovedBlock {
            block_hash: hash(i),
        });
    }
    let seen = rec.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 100);
    assert!(
        seen.iter()
            .enumerate()
            .all(|(i, (seq, kind))| *seq == i as u64 && *kind == EventKind::SentApprovedBlock)
    );
    assert_eq!(
        slow.try_recv().unwrap_err(),
        TryRecvError::Lagged {
            missed: 96,
            resume_seq: 96
        }
    );
}

#[test]
fn stats_follow_the_bus() {
    let bus = Bus::new(BusConfig {
        capacity: 8,
        startup_capacity: 2,
    });
    for e in ceremony() {
        bus.publish(e);
    }
    let s1 = bus.subscribe();
    let st = bus.stats();
    assert_eq!(
        (st.published, st.subscribers, st.startup_len, st.sealed),
        (3, 1, 2, false)
    );
    bus.seal_startup();
    let st = bus.tap().stats();
    assert_eq!(
        (st.startup_len, st.startup_dropped, st.sealed),
        (2, 1, true)
    );
    drop(s1);
    assert_eq!(bus.stats().subscribers, 0);
}

#[test]
fn the_bus_closes_when_the_last_clone_is_dropped_and_a_tap_does_not_keep_it_open() {
    let bus = Bus::new(BusConfig::default());
    let tap = bus.tap();
    let mut s = tap.subscribe();
    let clone = bus.clone();
    bus.publish(ceremony().remove(0));
    drop(bus);
    assert_eq!(s.try_recv().unwrap().seq(), 0);
    assert_eq!(s.try_recv().unwrap_err(), TryRecvError::Empty);
    drop(clone);
    assert_eq!(s.try_recv().unwrap_err(), TryRecvError::Closed);
    assert_eq!(tap.stats().published, 1);
}

#[test]
fn publishing_from_many_threads_gives_unique_gapless_sequence_numbers() {
    let bus = Bus::new(BusConfig::default());
    let mut handles = Vec::new();
    for t in 0..4u64 {
        let bus = bus.clone();
        handles.push(std::thread::spawn(move || {
            (0..1000)
                .map(|i| {
                    bus.publish(Event::BlockApprovalReceived {
                        block_hash: hash(t * 1000 + i),
                        sender: hash(t),
                    })
                })
                .collect::<Vec<u64>>()
        }));
    }
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..4000).collect::<Vec<u64>>());
}

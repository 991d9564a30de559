//! How many overwritten values a publishing thread keeps alive beyond the ring's own
//! capacity: its *limbo* (`core/src/sync.rs`), where overwritten entries wait out their
//! grace period before a later publish reuses them.
//!
//! A binary of its own, and its tests one at a time (`SERIAL`), so that no other test's
//! threads are pinned to the epoch while these count: an epoch advances only once every
//! pinned thread has caught up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use herald_core::ring::{self, Publisher, RingConfig};

mod common;

/// Ring capacity: small, so that nearly every publish overwrites (and retires) an entry.
const CAPACITY: usize = 64;
/// Most values beyond the ring's capacity a slow publisher may keep alive. The limbo keeps
/// up to 128 of them past their grace period (`SLOW_KEEP`) and, at most, those retired
/// during the last few checks (128 retirements each) whose grace period is not over; before
/// the fix a slow publisher kept every value until 64 markers had filled crossbeam's bag
/// (2,048 retirements) and the epoch had advanced twice more, well over 4,000.
const BOUND: usize = 1024;

/// Held by each test while it runs.
static SERIAL: Mutex<()> = Mutex::new(());

/// A value that counts itself alive.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(alive: &Arc<AtomicUsize>) -> Self {
        alive.fetch_add(1, Ordering::SeqCst);
        Counted(alive.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn sealed_ring() -> Publisher<Counted> {
    let p = ring::ring::<Counted>(RingConfig {
        capacity: CAPACITY,
        startup_capacity: 0,
    });
    p.seal_startup();
    p
}

/// What [`publish_slowly`] saw.
struct Seen {
    /// The most values alive beyond the ring's capacity after any publish.
    most_beyond: usize,
    /// The most values one publish freed.
    most_freed: usize,
}

/// Publishes `n` values slowly: a pause of 2 ms after every 64, so that each of the limbo's
/// checks (one per 128 retirements) finds the thread slow.
fn publish_slowly(p: &Publisher<Counted>, alive: &Arc<AtomicUsize>, n: usize) -> Seen {
    let mut seen = Seen {
        most_beyond: 0,
        most_freed: 0,
    };
    for i in 0..n {
        let before = alive.load(Ordering::SeqCst);
        p.publish(Counted::new(alive));
        let after = alive.load(Ordering::SeqCst);
        seen.most_freed = seen.most_freed.max((before + 1).saturating_sub(after));
        seen.most_beyond = seen.most_beyond.max(after.saturating_sub(CAPACITY));
        if i % 64 == 63 {
            thread::sleep(Duration::from_millis(2));
        }
    }
    seen
}

/// Publishes 50,000 values as fast as it can and returns how many are alive beyond the
/// ring's own: the backlog the burst left in this thread's limbo, asserted to be large
/// enough for the tests that free it to prove something.
fn burst(p: &Publisher<Counted>, alive: &Arc<AtomicUsize>) -> usize {
    for _ in 0..50_000 {
        p.publish(Counted::new(alive));
    }
    let after_burst = alive.load(Ordering::SeqCst) - CAPACITY;
    assert!(
        after_burst > 2 * BOUND,
        "the burst left only {after_burst} values beyond the ring: nothing to free"
    );
    after_burst
}

/// A node publishes a few events a second, from whichever thread: each publishing thread
/// must keep few overwritten values alive, not thousands.
#[test]
fn a_slow_publisher_keeps_few_overwritten_values_alive() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let alive = Arc::new(AtomicUsize::new(0));
    let p = sealed_ring();
    let most = publish_slowly(&p, &alive, 6_000).most_beyond;
    eprintln!("most values alive beyond the ring: {most}");
    assert!(
        most <= BOUND,
        "a slow publisher kept up to {most} overwritten values alive (bound {BOUND})"
    );
    drop(p);
    // Dropping the publisher hands the limbo to the collector; nothing is leaked.
    common::collect_until(|| alive.load(Ordering::SeqCst) == 0);
    assert_eq!(alive.load(Ordering::SeqCst), 0);
}

/// After a burst (the limbo grows to thousands of entries while markers lag), a thread that
/// goes back to publishing slowly frees what the burst left behind within a few dozen
/// checks, at most 1,024 entries per check (`TRIM_MAX`), so no one publish frees them all.
#[test]
fn a_burst_backlog_is_freed_once_the_thread_publishes_slowly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let alive = Arc::new(AtomicUsize::new(0));
    let p = sealed_ring();
    let after_burst = burst(&p, &alive);
    // Slow publishing: the backlog's grace periods end and it is trimmed, a check at a time.
    let seen = publish_slowly(&p, &alive, 2_500);
    let now = alive.load(Ordering::SeqCst) - CAPACITY;
    eprintln!(
        "beyond the ring: {after_burst} after the burst, {now} after slow publishes; \
         at most {} freed by one publish",
        seen.most_freed
    );
    assert!(
        now <= BOUND,
        "after the burst ({after_burst} beyond the ring) and 2,500 slow publishes, \
         {now} overwritten values are still alive (bound {BOUND})"
    );
    // The check's 1,024, and the value the publish's own reuse dropped.
    assert!(
        seen.most_freed <= 1_025,
        "one publish freed {} values",
        seen.most_freed
    );
}

/// A node publishes from whichever worker thread: four threads publishing slowly into one
/// ring each keep few values alive, so the total stays a small multiple of one thread's.
#[test]
fn slow_publishers_on_several_threads_each_keep_few_values_alive() {
    const THREADS: usize = 4;
    const EACH: usize = 1_500;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let alive = Arc::new(AtomicUsize::new(0));
    let p = sealed_ring();
    let most = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| s.spawn(|| publish_slowly(&p, &alive, EACH).most_beyond))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("publisher thread"))
            .max()
            .expect("threads")
    });
    eprintln!("{THREADS} slow publishers: most values alive beyond the ring {most}");
    // Before the limbo's pace check each thread kept every value it overwrote (fewer than
    // 2,048 retirements apiece never fill crossbeam's bag): about 5,900 in all.
    assert!(
        most <= THREADS * BOUND,
        "{THREADS} slow publishers kept up to {most} overwritten values alive \
         (bound {})",
        THREADS * BOUND
    );
}

/// A thread that published a burst and will publish no more frees what its limbo holds
/// when asked, without dropping its publisher; and the publisher still works after.
#[test]
fn release_retired_frees_a_burst_backlog_on_a_thread_that_stops_publishing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let alive = Arc::new(AtomicUsize::new(0));
    let p = sealed_ring();
    let after_burst = burst(&p, &alive);
    // Without the call the backlog stays as long as this thread publishes nothing: it is
    // in the thread's own queue, where no advance of the epoch reaches it.
    for _ in 0..1_000 {
        crossbeam_epoch::pin().flush();
    }
    assert_eq!(alive.load(Ordering::SeqCst) - CAPACITY, after_burst);
    p.release_retired();
    // Exactly the ring's own values are left once the grace periods are over.
    assert!(common::collect_until(
        || alive.load(Ordering::SeqCst) == CAPACITY
    ));
    // The ring and this thread's publishing are unaffected.
    let mut sub = p.subscribe();
    p.publish(Counted::new(&alive));
    assert!(sub.try_recv().is_ok());
    p.release_retired(); // empty cache: nothing to do
    drop(sub);
    drop(p);
    assert!(common::collect_until(|| alive.load(Ordering::SeqCst) == 0));
}

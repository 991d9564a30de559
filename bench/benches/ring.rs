//! herald's ring against `tokio::sync::broadcast`, same payload, same capacity.
//!
//! The payload is one realistic `block-added` event (four deploys, 64-hex hashes) built
//! once and shared as an `Arc<Event>`. What each side allocates per publish:
//!
//! * **herald** (`herald_core::ring::ring::<Arc<Event>>`): `publish(event.clone())` bumps the
//!   event's reference count and fills one ring entry (its owner count, the sequence
//!   number and the `Arc<Event>` pointer, 24 bytes): in steady state the memory of an entry
//!   this thread overwrote a few thousand publishes earlier, whose grace period is over
//!   (the publishing thread's limbo, `core/src/sync.rs`), dropping its old value there. The
//!   entry it replaces in the slot goes into that limbo. All of it is counted in the
//!   measured time.
//! * **tokio** (`broadcast::channel::<Arc<Event>>`): `send(event.clone())` bumps the same
//!   reference count; tokio's slots are allocated up front, so it allocates nothing per
//!   send. It drops the value it overwrites (a reference-count decrement) inside `send`.
//!
//! Groups (criterion ids):
//!
//! * `publish/{herald,tokio}/{subs}`: one publish with `subs` idle subscribers that never
//!   read (0, 1, 16, 1024). tokio's idle receivers lag, which costs its sender nothing.
//!   With 0 receivers tokio's `send` returns an error at once without storing the value,
//!   while herald still stores it (a later `from=` subscriber may ask for it).
//! * `fanout/{herald,tokio}/{subs}`: one producer (the benchmark thread) publishes, `subs`
//!   async subscribers on a multi-thread tokio runtime receive every event. Capacity is
//!   large enough and the producer is paced (at most [`FANOUT_WINDOW`] events ahead of the
//!   slowest subscriber) so nobody laps; the benchmark asserts no lag happened. One
//!   iteration is [`FANOUT_CHUNK`] events; throughput counts deliveries (events x
//!   subscribers). `HERALD_BENCH_WORKERS` (default 2) sets the runtime's worker threads,
//!   `HERALD_BENCH_SUBS` (default `1,4,16,64`) the subscriber counts. Subscribers call
//!   `recv()` once per event on both sides. `fanout/herald_many/{subs}` is herald with
//!   `recv_many(.., 64)`, the batched receive the WebSocket server uses (tokio's broadcast
//!   has no batched receive). `fanout/herald_with/{subs}` and `fanout/herald_each/{subs}`
//!   are the borrowing receives (`recv_with` per event, `recv_each(64, ..)` per batch):
//!   the subscriber reads the shared entry in place and takes no reference count, so subscribers write nothing to lines the others read. tokio's
//!   broadcast has no borrowing receive: its `recv()` must clone the value.
//! * `spsc/{herald,tokio}`: one producer thread, one consumer thread (blocking receive),
//!   lossless: the producer stays at most [`SPSC_WINDOW`] events ahead of the consumer.
//!   herald's `recv_blocking` looks again about ten times (spinning, then yielding) before
//!   it parks; tokio's `blocking_recv` parks at once.
//! * `mpsc/{herald,tokio}/{producers}`: 2 and 4 producer threads, one consumer thread,
//!   lossless the same way.
//! * `floor/...`: the pieces of a publish measured alone (see [`floor`]).

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herald_bench::payload::block_added;
use herald_core::event::Event;
use herald_core::ring::{self, RecvError, RingConfig, Subscriber};
use tokio::sync::broadcast;

/// Ring capacity of the publish benchmarks (herald's default), both implementations.
const PUBLISH_CAPACITY: usize = 4096;
/// Idle subscriber counts of the publish benchmarks.
const IDLE_SUBS: [usize; 4] = [0, 1, 16, 1024];

/// Events per fan-out iteration.
const FANOUT_CHUNK: u64 = 256;
/// Most events the fan-out producer may be ahead of the slowest subscriber.
const FANOUT_WINDOW: u64 = 4 * FANOUT_CHUNK;
/// Most events one `recv_many` call takes in `fanout/herald_many`.
const FANOUT_BATCH: usize = 64;
/// Fan-out capacity: twice the window, so no subscriber can be lapped.
const FANOUT_CAPACITY: usize = 2 * FANOUT_WINDOW as usize;

/// Capacity of the spsc and mpsc benchmarks.
const SPSC_CAPACITY: usize = 1024;
/// Most events the producers may be ahead of the consumer (half the capacity).
const SPSC_WINDOW: u64 = SPSC_CAPACITY as u64 / 2;
/// The consumer publishes its progress every this many events.
const PROGRESS_EVERY: u64 = 32;

fn payload() -> Arc<Event> {
    Arc::new(block_added(1_000_000, 1_700_000_000_000))
}

/// A positive integer from the environment, or `default`; exits with a message otherwise.
fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("{name}={v:?}: expected a positive integer");
                std::process::exit(2);
            }
        },
    }
}

/// A comma-separated list of positive integers from the environment, or `default`.
fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    let Ok(v) = std::env::var(name) else {
        return default.to_vec();
    };
    let parsed: Result<Vec<usize>, _> = v.split(',').map(|s| s.trim().parse::<usize>()).collect();
    match parsed {
        Ok(list) if !list.is_empty() && list.iter().all(|&n| n > 0) => list,
        _ => {
            eprintln!("{name}={v:?}: expected a comma-separated list of positive integers");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------------------
// publish: cost of one publish with idle subscribers
// ---------------------------------------------------------------------------------------

fn publish(c: &mut Criterion) {
    let event = payload();
    let mut group = c.benchmark_group("publish");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    for subs in IDLE_SUBS {
        group.bench_with_input(BenchmarkId::new("herald", subs), &subs, |b, &subs| {
            let publisher = ring::ring::<Arc<Event>>(RingConfig {
                capacity: PUBLISH_CAPACITY,
                startup_capacity: 0,
            });
            publisher.seal_startup();
            let idle: Vec<Subscriber<Arc<Event>>> =
                (0..subs).map(|_| publisher.subscribe()).collect();
            b.iter(|| publisher.publish(black_box(&event).clone()));
            assert_eq!(publisher.stats().subscribers, subs);
            drop(idle);
        });
        group.bench_with_input(BenchmarkId::new("tokio", subs), &subs, |b, &subs| {
            let (tx, first) = broadcast::channel::<Arc<Event>>(PUBLISH_CAPACITY);
            let idle: Vec<broadcast::Receiver<Arc<Event>>> =
                (0..subs).map(|_| tx.subscribe()).collect();
            drop(first);
            // With no receiver `send` returns the value back: that is tokio's cost too.
            b.iter(|| black_box(tx.send(black_box(&event).clone()).is_ok()));
            assert_eq!(tx.receiver_count(), subs);
            drop(idle);
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------
// fanout: one producer, many async subscribers
// ---------------------------------------------------------------------------------------

/// What the producer and the subscribers of one fan-out benchmark share.
struct Progress {
    /// Events received so far by each subscriber (written by that subscriber only).
    received: Vec<crossbeam_utils::CachePadded<AtomicU64>>,
    /// Total `missed` reported to any subscriber; must stay 0.
    lagged: AtomicU64,
    /// The producer, unparked when a subscriber crosses a chunk boundary.
    producer: Thread,
}

impl Progress {
    fn new(subs: usize) -> Arc<Self> {
        Arc::new(Self {
            received: (0..subs)
                .map(|_| crossbeam_utils::CachePadded::new(AtomicU64::new(0)))
                .collect(),
            lagged: AtomicU64::new(0),
            producer: thread::current(),
        })
    }

    /// Records that subscriber `i` has now received `n` events, `k` of them just now.
    fn record(&self, i: usize, n: u64, k: u64) {
        // Release: pairs with the Acquire load in `wait_all`, so the producer's view of
        // progress never runs ahead of what the subscriber has finished with.
        self.received[i].store(n, Ordering::Release);
        if n / FANOUT_CHUNK != (n - k) / FANOUT_CHUNK {
            self.producer.unpark();
        }
    }

    fn lagged(&self, missed: u64) {
        // Relaxed: a counter read after the subscribers are joined.
        self.lagged.fetch_add(missed, Ordering::Relaxed);
    }

    /// Parks the producer until every subscriber has received at least `n` events
    /// (`n` is a multiple of [`FANOUT_CHUNK`]: subscribers unpark the producer when they
    /// cross one).
    fn wait_all(&self, n: u64) {
        loop {
            // Acquire: pairs with the Release store in `record`.
            let min = self
                .received
                .iter()
                .map(|r| r.load(Ordering::Acquire))
                .min()
                .unwrap_or(n);
            if min >= n {
                return;
            }
            // A timeout only as a guard: `unpark` before `park` is not lost.
            thread::park_timeout(Duration::from_millis(50));
        }
    }
}

/// Runs `iters` fan-out iterations of [`FANOUT_CHUNK`] events through `publish`, paced so
/// that no subscriber is more than [`FANOUT_WINDOW`] behind. `sent` is the running total.
fn fanout_run(
    iters: u64,
    sent: &mut u64,
    progress: &Progress,
    mut publish: impl FnMut(),
) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let need = (*sent + FANOUT_CHUNK).saturating_sub(FANOUT_WINDOW);
        progress.wait_all(need);
        for _ in 0..FANOUT_CHUNK {
            publish();
        }
        *sent += FANOUT_CHUNK;
    }
    progress.wait_all(*sent);
    start.elapsed()
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

fn fanout(c: &mut Criterion) {
    let workers = env_usize("HERALD_BENCH_WORKERS", 2);
    let sub_counts = env_list("HERALD_BENCH_SUBS", &[1, 4, 16, 64]);
    let event = payload();
    let mut group = c.benchmark_group("fanout");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    for subs in sub_counts {
        group.throughput(Throughput::Elements(FANOUT_CHUNK * subs as u64));

        for (id, mode) in [
            ("herald", Receive::Recv),
            ("herald_many", Receive::Many(FANOUT_BATCH)),
            ("herald_with", Receive::With),
            ("herald_each", Receive::Each(FANOUT_BATCH)),
        ] {
            group.bench_with_input(BenchmarkId::new(id, subs), &subs, |b, &subs| {
                herald_fanout(b, workers, subs, &event, mode);
            });
        }

        group.bench_with_input(BenchmarkId::new("tokio", subs), &subs, |b, &subs| {
            let rt = runtime(workers);
            let progress = Progress::new(subs);
            let (tx, first) = broadcast::channel::<Arc<Event>>(FANOUT_CAPACITY);
            drop(first);
            let tasks: Vec<_> = (0..subs)
                .map(|i| {
                    let mut rx = tx.subscribe();
                    let progress = progress.clone();
                    rt.spawn(async move {
                        let mut n = 0u64;
                        loop {
                            match rx.recv().await {
                                Ok(event) => {
                                    black_box(&event);
                                    n += 1;
                                    progress.record(i, n, 1);
                                }
                                Err(broadcast::error::RecvError::Lagged(missed)) => {
                                    progress.lagged(missed);
                                }
                                Err(broadcast::error::RecvError::Closed) => return n,
                            }
                        }
                    })
                })
                .collect();
            let mut sent = 0;
            b.iter_custom(|iters| {
                fanout_run(iters, &mut sent, &progress, || {
                    tx.send(event.clone())
                        .expect("subscribers are alive while the benchmark runs");
                })
            });
            drop(tx);
            let received = rt.block_on(join_all(tasks));
            assert!(
                received.iter().all(|&n| n == sent),
                "every subscriber got all {sent}"
            );
            assert_eq!(
                progress.lagged.load(Ordering::Relaxed),
                0,
                "a subscriber lagged"
            );
        });
    }
    group.finish();
}

/// How herald's fan-out subscribers receive.
#[derive(Clone, Copy)]
enum Receive {
    /// `recv()` per event: an `EntryRef` each (a shared reference count bumped and
    /// dropped per delivery), as tokio's `recv()` clones the `Arc<Event>`.
    Recv,
    /// `recv_many(.., n)`: up to `n` `EntryRef`s per call, one epoch pin per batch.
    Many(usize),
    /// `ready()` then `try_recv_with`: one event per call, borrowed (no reference count).
    With,
    /// `ready()` then `try_recv_each(n, ..)`: up to `n` borrowed events per call; what the
    /// WebSocket server does.
    Each(usize),
}

/// herald's side of `fanout`, receiving as `mode` says.
fn herald_fanout(
    b: &mut criterion::Bencher<'_>,
    workers: usize,
    subs: usize,
    event: &Arc<Event>,
    mode: Receive,
) {
    let rt = runtime(workers);
    let progress = Progress::new(subs);
    let publisher = ring::ring::<Arc<Event>>(RingConfig {
        capacity: FANOUT_CAPACITY,
        startup_capacity: 0,
    });
    publisher.seal_startup();
    let tasks: Vec<_> = (0..subs)
        .map(|i| {
            let mut sub = publisher.subscribe();
            let progress = progress.clone();
            rt.spawn(async move {
                let mut n = 0u64;
                let mut buf = Vec::new();
                loop {
                    let got = match mode {
                        Receive::Recv => sub.recv().await.map(|entry| {
                            black_box(&entry);
                            1
                        }),
                        Receive::Many(max) => sub.recv_many(&mut buf, max).await.inspect(|_| {
                            black_box(&buf);
                            buf.clear();
                        }),
                        Receive::With => {
                            sub.recv_with(|entry| {
                                black_box(entry);
                                1
                            })
                            .await
                        }
                        Receive::Each(max) => {
                            sub.recv_each(max, |entry| {
                                black_box(entry);
                            })
                            .await
                        }
                    };
                    match got {
                        Ok(k) => {
                            n += k as u64;
                            progress.record(i, n, k as u64);
                        }
                        Err(RecvError::Lagged { missed, .. }) => progress.lagged(missed),
                        Err(RecvError::Closed) => return n,
                    }
                }
            })
        })
        .collect();
    let mut sent = 0;
    b.iter_custom(|iters| {
        fanout_run(iters, &mut sent, &progress, || {
            publisher.publish(event.clone());
        })
    });
    drop(publisher);
    let received = rt.block_on(join_all(tasks));
    assert!(
        received.iter().all(|&n| n == sent),
        "every subscriber got all {sent}"
    );
    assert_eq!(
        progress.lagged.load(Ordering::Relaxed),
        0,
        "a subscriber lagged"
    );
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<u64>>) -> Vec<u64> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.expect("subscriber task panicked"));
    }
    out
}

// ---------------------------------------------------------------------------------------
// spsc / mpsc: threads, lossless
// ---------------------------------------------------------------------------------------

/// Consumer progress, for the producers' pacing.
struct Credit {
    consumed: crossbeam_utils::CachePadded<AtomicU64>,
}

impl Credit {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            consumed: crossbeam_utils::CachePadded::new(AtomicU64::new(0)),
        })
    }

    fn set(&self, n: u64) {
        // Release: pairs with the Acquire load in `wait_until`.
        self.consumed.store(n, Ordering::Release);
    }

    /// Spins (then yields) until the consumer has consumed at least `n`.
    fn wait_until(&self, n: u64, cached: &mut u64) {
        let mut spins = 0u32;
        while *cached < n {
            // Acquire: pairs with the Release store in `set`.
            *cached = self.consumed.load(Ordering::Acquire);
            spins += 1;
            if spins > 64 {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Producer `p` of `producers` publishing `count` events with `publish`, never more than
/// [`SPSC_WINDOW`] events in flight across all producers. Producer `p`'s `k`-th event waits
/// for `consumed >= (k + 1) * producers - window`: then the producers' counts sum to at most
/// `consumed + window`.
fn produce(credit: &Credit, producers: u64, count: u64, mut publish: impl FnMut()) {
    let mut cached = 0;
    for k in 0..count {
        credit.wait_until(
            ((k + 1) * producers).saturating_sub(SPSC_WINDOW),
            &mut cached,
        );
        publish();
    }
}

/// Runs one lossless transfer of `iters` events from `producers` threads to one consumer
/// thread and returns the time from the start signal to the consumer's last event.
fn transfer<P, C>(iters: u64, producers: usize, make_producer: P, consume: C) -> Duration
where
    P: Fn() -> Box<dyn FnMut() + Send>,
    C: FnOnce(u64, &Credit) -> Instant + Send + 'static,
{
    let credit = Credit::new();
    let barrier = Arc::new(Barrier::new(producers + 2));
    let consumer = {
        let credit = credit.clone();
        let barrier = barrier.clone();
        thread::spawn(move || {
            barrier.wait();
            consume(iters, &credit)
        })
    };
    let handles: Vec<_> = (0..producers as u64)
        .map(|p| {
            let mut publish = make_producer();
            let credit = credit.clone();
            let barrier = barrier.clone();
            // Spread `iters` over the producers.
            let count = iters / producers as u64 + u64::from(p < iters % producers as u64);
            thread::spawn(move || {
                barrier.wait();
                produce(&credit, producers as u64, count, &mut publish);
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().expect("producer panicked");
    }
    let end = consumer.join().expect("consumer panicked");
    end - start
}

fn herald_transfer(iters: u64, producers: usize, event: &Arc<Event>) -> Duration {
    let publisher = ring::ring::<Arc<Event>>(RingConfig {
        capacity: SPSC_CAPACITY,
        startup_capacity: 0,
    });
    publisher.seal_startup();
    let mut sub = publisher.subscribe();
    let elapsed = transfer(
        iters,
        producers,
        || {
            let publisher = publisher.clone();
            let event = event.clone();
            Box::new(move || {
                publisher.publish(event.clone());
            })
        },
        move |iters, credit| {
            for n in 1..=iters {
                match sub.recv_blocking() {
                    Ok(entry) => {
                        black_box(&entry);
                    }
                    Err(e) => panic!("lossless transfer failed at {n}: {e}"),
                }
                if n % PROGRESS_EVERY == 0 {
                    credit.set(n);
                }
            }
            Instant::now()
        },
    );
    assert_eq!(publisher.stats().lagged, 0);
    assert_eq!(publisher.stats().published, iters);
    elapsed
}

fn tokio_transfer(iters: u64, producers: usize, event: &Arc<Event>) -> Duration {
    let (tx, mut rx) = broadcast::channel::<Arc<Event>>(SPSC_CAPACITY);
    transfer(
        iters,
        producers,
        || {
            let tx = tx.clone();
            let event = event.clone();
            Box::new(move || {
                tx.send(event.clone()).expect("the consumer is alive");
            })
        },
        move |iters, credit| {
            for n in 1..=iters {
                match rx.blocking_recv() {
                    Ok(event) => {
                        black_box(&event);
                    }
                    Err(e) => panic!("lossless transfer failed at {n}: {e}"),
                }
                if n % PROGRESS_EVERY == 0 {
                    credit.set(n);
                }
            }
            Instant::now()
        },
    )
}

fn spsc(c: &mut Criterion) {
    let event = payload();
    let mut group = c.benchmark_group("spsc");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .throughput(Throughput::Elements(1));
    group.bench_function("herald", |b| {
        b.iter_custom(|iters| herald_transfer(iters, 1, &event));
    });
    group.bench_function("tokio", |b| {
        b.iter_custom(|iters| tokio_transfer(iters, 1, &event));
    });
    group.finish();
}

fn mpsc(c: &mut Criterion) {
    let event = payload();
    let mut group = c.benchmark_group("mpsc");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .throughput(Throughput::Elements(1));
    for producers in [2usize, 4] {
        group.bench_with_input(
            BenchmarkId::new("herald", producers),
            &producers,
            |b, &producers| b.iter_custom(|iters| herald_transfer(iters, producers, &event)),
        );
        group.bench_with_input(
            BenchmarkId::new("tokio", producers),
            &producers,
            |b, &producers| b.iter_custom(|iters| tokio_transfer(iters, producers, &event)),
        );
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------
// floor: the parts a publish is made of, measured alone
// ---------------------------------------------------------------------------------------

/// What one herald publish does besides bookkeeping, each measured alone on this machine,
/// so the `publish` numbers can be read against a floor:
///
/// * `floor/fetch_add`: one `AcqRel` `fetch_add` on a private counter (herald's claim of a
///   sequence number; a locked instruction on x86).
/// * `floor/fetch_add_swap`: that plus a `SeqCst` pointer swap into a 4096-slot array
///   (the claim and the slot install; no entry behind the pointer).
/// * `floor/payload_clone_drop`: cloning and dropping the `Arc<Event>` payload, which
///   every publish of both implementations does (clone on the way in, drop when the value
///   is overwritten).
/// * `floor/entry_alloc_free`: allocating a 24-byte entry as herald's (one owner count, a
///   sequence number, the payload clone) into a 4096-slot array and freeing the one it
///   replaces (allocated 4096 iterations earlier) as herald frees an entry nobody else
///   holds (one load of the count, no read-modify-write): herald's entry lifecycle
///   without the ring and without epochs.
/// * `floor/arc_alloc_free`: the same with a 32-byte `Arc` (strong and weak counts), what
///   herald's entries were before 2026-11-27: dropping one costs two locked decrements.
fn floor(c: &mut Criterion) {
    use std::sync::atomic::AtomicPtr;
    let event = payload();
    let mut group = c.benchmark_group("floor");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    let counter = AtomicU64::new(0);
    let slots: Vec<AtomicPtr<u8>> = (0..PUBLISH_CAPACITY)
        .map(|_| AtomicPtr::new(std::ptr::null_mut()))
        .collect();
    let mask = PUBLISH_CAPACITY as u64 - 1;
    group.bench_function("fetch_add", |b| {
        // AcqRel as in herald's claim; nothing pairs with it here.
        b.iter(|| black_box(counter.fetch_add(1, Ordering::AcqRel)))
    });
    group.bench_function("fetch_add_swap", |b| {
        b.iter(|| {
            // AcqRel / SeqCst as in herald's claim and install; nothing pairs with them here.
            let seq = counter.fetch_add(1, Ordering::AcqRel);
            let p = black_box(seq as usize as *mut u8);
            black_box(slots[(seq & mask) as usize].swap(p, Ordering::SeqCst))
        })
    });
    group.bench_function("payload_clone_drop", |b| {
        b.iter(|| drop(black_box(black_box(&event).clone())))
    });
    group.bench_function("entry_alloc_free", |b| {
        /// Stand-in for herald's `Entry`: an owner count, a sequence number, the payload.
        struct FakeEntry {
            refs: AtomicU64,
            _seq: u64,
            _value: Arc<Event>,
        }
        /// As herald's `Entry::release` for an entry whose only owner is the caller.
        fn release(entry: Box<FakeEntry>) {
            // Acquire: as herald's (nothing else owns these; the load is the cost).
            assert_eq!(entry.refs.load(Ordering::Acquire), 1);
            drop(entry);
        }
        let mut entries: Vec<Option<Box<FakeEntry>>> =
            (0..PUBLISH_CAPACITY).map(|_| None).collect();
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let entry = Box::new(FakeEntry {
                refs: AtomicU64::new(1),
                _seq: i,
                _value: black_box(&event).clone(),
            });
            if let Some(old) = entries[(i & mask) as usize].replace(black_box(entry)) {
                release(old);
            }
        })
    });
    group.bench_function("arc_alloc_free", |b| {
        /// herald's earlier `Entry`: a sequence number and the payload, in an `Arc`.
        type FakeEntry = Arc<(u64, Arc<Event>)>;
        let mut entries: Vec<Option<FakeEntry>> = vec![None; PUBLISH_CAPACITY];
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let entry = Arc::new((i, black_box(&event).clone()));
            black_box(entries[(i & mask) as usize].replace(entry))
        })
    });
    group.finish();
}

criterion_group!(benches, publish, floor, fanout, spsc, mpsc);
criterion_main!(benches);

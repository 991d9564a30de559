//! The one door through which herald-core reaches atomics, `Arc`, threads and memory
//! reclamation.
//!
//! In a normal build these are `std`'s types and `crossbeam-epoch`. When the crate is built
//! with `RUSTFLAGS="--cfg herald_loom"` (see the `loom-tests` crate) they are loom's, so
//! that loom model-checks *this very code* rather than a copy of it. A crate-specific cfg is
//! used on purpose: `--cfg loom` would also switch tokio into its own loom mode.
//!
//! Two pieces cannot be modelled by loom as they are, and are swapped for loom-visible
//! equivalents under `herald_loom`:
//!
//! * **Reclamation.** `crossbeam-epoch`'s global collector is a process-wide static that
//!   loom cannot reset between executions. Under loom, [`Reclaimer`] is a small
//!   reader-counting scheme built on loom's `Mutex`: a retired pointer becomes reusable
//!   at once if no guard is alive, else when the last live guard is dropped, and the ring
//!   frees what is left when it goes. It gives the ring the same contract (a pointer
//!   retired while a guard is alive is not reused or freed before that guard is
//!   dropped), so the models check how the ring *uses* reclamation, not
//!   crossbeam-epoch's internals (which crossbeam model-checks itself), nor the normal
//!   build's per-thread limbo and its markers (unit tests in `core/tests/ring.rs` check
//!   those). The stand-in recycles as the limbo does, so the models do check how an
//!   entry's memory is reused: `Release::reclaim` and the new entry written into it.
//! * **`SeqCst` accesses.** loom treats `SeqCst` loads and read-modify-writes as `AcqRel`
//!   (loom issue #180), which would make the publisher's lost-wakeup check look broken.
//!   [`loom_seqcst_fence`] is a `SeqCst` fence under loom and nothing otherwise; under the
//!   C++20 memory model it is redundant between two `SeqCst` operations, so adding it
//!   changes nothing that a real build relies on.

#[cfg(not(herald_loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(herald_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, fence};

#[cfg(herald_loom)]
pub(crate) use loom::sync::Arc;
#[cfg(herald_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, fence};

pub(crate) use std::sync::atomic::Ordering;

/// A busy-wait hint: a pause instruction normally, a yield to the other threads under
/// loom (which otherwise could not make progress past a bounded number of preemptions).
#[cfg(herald_loom)]
pub(crate) use loom::hint::spin_loop;
#[cfg(not(herald_loom))]
pub(crate) use std::hint::spin_loop;

/// Threads: `current`, `park` and `yield_now`, loom's under `herald_loom`.
pub(crate) mod thread {
    #[cfg(herald_loom)]
    pub(crate) use loom::thread::{Thread, ThreadId, current, park, yield_now};
    #[cfg(not(herald_loom))]
    pub(crate) use std::thread::{Thread, ThreadId, current, park, yield_now};
}

/// A `SeqCst` fence under loom, nothing in a normal build. See the module docs.
#[inline(always)]
pub(crate) fn loom_seqcst_fence() {
    #[cfg(herald_loom)]
    fence(Ordering::SeqCst);
}

/// `UnsafeCell` with loom's closure-based API, so that loom can check every access.
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(
    #[cfg(not(herald_loom))] std::cell::UnsafeCell<T>,
    #[cfg(herald_loom)] loom::cell::UnsafeCell<T>,
);

impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        #[cfg(not(herald_loom))]
        return Self(std::cell::UnsafeCell::new(value));
        #[cfg(herald_loom)]
        return Self(loom::cell::UnsafeCell::new(value));
    }

    /// Runs `f` with a mutable pointer to the contents. The caller upholds exclusivity.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        #[cfg(not(herald_loom))]
        return f(self.0.get());
        #[cfg(herald_loom)]
        return self.0.with_mut(f);
    }
}

pub(crate) use reclaim::{Guard, Reclaimer, flush_retired};

/// What a [`Reclaimer`] can retire: a shared object whose owners each hold a count.
pub(crate) trait Release: Send + Sync + 'static {
    /// Gives up one count of `this`, freeing it with the last.
    ///
    /// # Safety
    /// The caller owns a count of `this` and does not use `this` afterwards.
    unsafe fn release(this: *const Self);

    /// For recycling: if the caller's count of `this` is the only one, drops the contents
    /// in place and returns `true`, leaving the caller the memory (uninitialised, as
    /// allocated for a `Box<Self>`); otherwise gives up the count as
    /// [`release`](Self::release) does and returns `false`.
    ///
    /// # Safety
    /// As `release`, and `this` is unreachable from shared memory and its grace period is
    /// over: no guard can load it and no new count can be taken but from an existing one.
    unsafe fn reclaim(this: *const Self) -> bool;
}

#[cfg(not(herald_loom))]
mod reclaim {
    use std::any::TypeId;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::ptr::NonNull;
    use std::time::{Duration, Instant};

    use super::{Arc, AtomicU64, Ordering, Release};

    /// Epoch-based reclamation on crossbeam-epoch's global collector, with the memory of
    /// what it reclaims recycled on the thread that retired it. Zero-sized.
    ///
    /// Readers pin a guard around every access to a slot. Publishers never read an entry
    /// they do not own, so they need no guard: an entry they take out of a slot is
    /// *retired* into this thread's *limbo*, a FIFO queue, and is reused by a later publish
    /// on the same thread once its grace period is over. That keeps both the allocator and
    /// a deferred closure per 32 retired entries (run later on a cold batch) off the
    /// publish path: a quarter of a publish's time (`bench/RESULTS.md`). The queue holds one
    /// type at a time; a thread that also publishes values of another type hands those
    /// entries to the collector 32 at a time, to be freed, as before recycling.
    ///
    /// **Grace periods by marker.** Every [`BATCH`]-th retirement on a thread defers one
    /// *marker* to crossbeam-epoch: a closure that records its number in the thread's
    /// `done` word. Each entry in limbo carries the number of the first marker deferred
    /// after it was retired. crossbeam runs a closure only once every guard pinned before
    /// it was deferred is gone, and an entry's unlink (the slot swap) happens before its
    /// retirement, which happens before that marker's defer. So once `done` reaches an
    /// entry's marker, no guard that could have loaded it from its slot is left, and no
    /// guard pinned later can reach it: it is unreachable but for counts that subscribers
    /// took earlier ([`Release::reclaim`] checks those).
    ///
    /// **What waits in limbo.** Entries retired since this thread's last marker (up to
    /// `BATCH - 1`), and those whose marker has not run yet. crossbeam keeps up to 64
    /// deferred closures per thread before it seals them for collection, and collects
    /// sealed ones only as epochs advance, so one thread publishing flat out holds about
    /// 10,000 overwritten entries (and their values) in limbo (measured with a 4096-slot
    /// ring); before recycling, crossbeam held about 2,000 in the thread's bag plus the
    /// sealed batches not yet collected. A publish takes one entry out and puts one in, so
    /// the queue keeps the length it grew to.
    ///
    /// **Slow threads keep little.** A node publishes a few events a second, from whichever
    /// thread; waiting for 64 markers would keep thousands of values alive per thread for
    /// minutes. So every `CHECK_EVERY`-th marker a thread reads the clock: if its last
    /// `CHECK_EVERY × BATCH` retirements took at least [`SLOW`] it publishes slowly, and it
    /// flushes its bag to the collector (its markers then run as soon as the epoch has
    /// advanced twice) and frees the entries past their grace period beyond the first
    /// [`SLOW_KEEP`], at most [`TRIM_MAX`] per check. Measured (`core/tests/limbo.rs`,
    /// 64-slot ring): a slow publisher keeps at most 256 values beyond the ring (5,936
    /// before this check), and the 10,272 a burst left behind are down to 256 after 2,500
    /// slow publishes, no publish freeing more than 1,025. A fast thread is left alone: it
    /// reads the clock once per 128 publishes and flushes at most once a millisecond.
    ///
    /// Entries in limbo are reused by this thread's next publishes, handed to the collector
    /// when a `Publisher` is dropped on this thread or `Publisher::release_retired` is
    /// called on it ([`flush_retired`]), or at thread exit; a thread that stops publishing
    /// otherwise keeps what its limbo held then.
    #[derive(Debug, Default)]
    pub(crate) struct Reclaimer;

    /// While a `Guard` lives, no entry unlinked after it was pinned is freed. Held, never
    /// read: its `Drop` unpins.
    pub(crate) struct Guard<'a>(
        #[allow(dead_code)] crossbeam_epoch::Guard,
        std::marker::PhantomData<&'a ()>,
    );

    /// Retirements per marker (and the size of a batch handed to the collector).
    const BATCH: u64 = 32;
    /// Markers between two checks of how fast this thread retires.
    const CHECK_EVERY: u64 = 4;
    /// A thread whose last `CHECK_EVERY × BATCH` retirements took at least this long
    /// publishes *slowly* (fewer than 128,000 a second).
    const SLOW: Duration = Duration::from_millis(1);
    /// Entries past their grace period that a slowly publishing thread keeps in limbo for
    /// reuse; it frees the rest at each check.
    const SLOW_KEEP: usize = 4 * BATCH as usize;
    /// Most entries one check frees, so that the publish that runs it stays short (each
    /// freed entry drops its value): a burst's backlog of thousands goes over a few checks.
    const TRIM_MAX: usize = 1024;

    /// A retired object and the function that releases it.
    type Retired = (usize, unsafe fn(usize));

    /// Releases one count of the `R` at address `addr`.
    ///
    /// # Safety
    /// As [`Release::release`] for `addr as *const R`.
    unsafe fn release<R: Release>(addr: usize) {
        // SAFETY: as the function's contract says.
        unsafe { R::release(addr as *const R) }
    }

    /// This thread's limbo.
    struct Limbo {
        /// The type of the objects in `queue`, and the function that gives up one count
        /// of one of them: only an `R` is recycled as an `R`. Set by a retirement into an
        /// empty queue.
        kind: Option<(TypeId, unsafe fn(usize))>,
        /// `(address, marker)` of each retired object of type `kind`, oldest first, each
        /// owning one count of its object. `marker` is the first marker deferred after the
        /// retirement; the object's grace period is over once `done` has reached it.
        /// Markers never decrease from front to back.
        queue: VecDeque<(usize, u64)>,
        /// Objects of another type than `kind` (a thread that publishes into rings of two
        /// value types): these are not recycled but handed to the collector `BATCH` at a
        /// time, to be freed.
        foreign: Vec<Retired>,
        /// The marker that will cover what is retired from now on (the first is 1).
        next_marker: u64,
        /// Objects retired (into `queue` or `foreign`) since the last marker was deferred
        /// (below `BATCH`).
        since_marker: u64,
        /// The highest marker whose closure has run (0: none yet); written only by the
        /// markers' closures, on whatever thread crossbeam runs them. `None` until this
        /// thread defers its first marker. Closures may run out of order; that is fine,
        /// since marker `m` was deferred after every earlier one, so when it runs every
        /// guard that an earlier marker waits for is gone too.
        done: Option<Arc<AtomicU64>>,
        /// When this thread last checked how fast it retires (every `CHECK_EVERY`-th
        /// marker); `None` before the first check.
        checked: Option<Instant>,
    }

    impl Limbo {
        /// Takes the oldest entry out of the queue if its grace period is over (`done`, the
        /// highest marker run, reached the marker that followed it).
        #[inline]
        fn pop_expired(&mut self, done: u64) -> Option<usize> {
            match self.queue.front() {
                Some(&(addr, marker)) if marker <= done => {
                    self.queue.pop_front();
                    Some(addr)
                }
                _ => None,
            }
        }

        /// At every `CHECK_EVERY`-th marker: if this thread publishes slowly, takes the
        /// entries past their grace period beyond the first `SLOW_KEEP` (at most
        /// `TRIM_MAX` of them) out of the queue, for the caller to free, and returns `true`:
        /// the caller then flushes this thread's deferred markers to the collector instead
        /// of letting them wait until 64 have filled crossbeam's bag. A fast thread needs
        /// its long queue: its markers run in bags, thousands of entries at a time.
        fn check_pace(&mut self, marker: u64, trimmed: &mut Vec<Retired>) -> bool {
            if !marker.is_multiple_of(CHECK_EVERY) {
                return false;
            }
            let now = Instant::now();
            let slow = self
                .checked
                .is_none_or(|then| now.duration_since(then) >= SLOW);
            self.checked = Some(now);
            let (Some((_, release)), Some(done), true) = (self.kind, &self.done, slow) else {
                return slow;
            };
            // Acquire: pairs with the Release `fetch_max` of the markers' closures (see
            // `defer_marker`).
            let done = done.load(Ordering::Acquire);
            while self.queue.len() > SLOW_KEEP && trimmed.len() < TRIM_MAX {
                let Some(addr) = self.pop_expired(done) else {
                    break;
                };
                trimmed.push((addr, release));
            }
            true
        }

        /// Everything in limbo, for the collector.
        fn take_all(&mut self) -> Vec<Retired> {
            self.since_marker = 0;
            let mut all = std::mem::take(&mut self.foreign);
            if let Some((_, release)) = self.kind {
                all.extend(self.queue.drain(..).map(|(addr, _)| (addr, release)));
            }
            all
        }
    }

    struct LimboCell(RefCell<Limbo>);

    impl Drop for LimboCell {
        fn drop(&mut self) {
            // The thread is exiting: the collector takes everything, after its grace period.
            defer_all(self.0.get_mut().take_all());
        }
    }

    thread_local! {
        static LIMBO: LimboCell = const {
            LimboCell(RefCell::new(Limbo {
                kind: None,
                queue: VecDeque::new(),
                foreign: Vec::new(),
                next_marker: 1,
                since_marker: 0,
                done: None,
                checked: None,
            }))
        };
    }

    /// Hands `batch` to the collector: released once every guard pinned now is gone.
    fn defer_all(batch: Vec<Retired>) {
        if batch.is_empty() {
            return;
        }
        let guard = crossbeam_epoch::pin();
        // SAFETY: every object in `batch` was unlinked from shared memory before it was
        // retired, so only guards pinned before now can hold it; `defer_unchecked` runs
        // the closure after all of those are dropped. The objects are `Send + Sync`
        // (`retire`'s bound), so releasing them on another thread is sound.
        unsafe {
            guard.defer_unchecked(move || {
                for (addr, release) in batch {
                    release(addr);
                }
            });
        }
    }

    /// What a retirement hands to crossbeam, or frees, once the limbo's borrow has ended
    /// (pinning may run deferred closures, and freeing drops values, whose drop may
    /// publish on this thread).
    #[derive(Default)]
    struct Deferral {
        /// A marker to defer: `done`, its number, and whether to flush the bag after it.
        marker: Option<(Arc<AtomicU64>, u64, bool)>,
        /// Objects of another type than the queue's, to be freed after a grace period.
        batch: Vec<Retired>,
        /// Entries past their grace period that a slow thread does not keep.
        trimmed: Vec<Retired>,
    }

    impl Deferral {
        /// Once per `BATCH` retirements: out of the publish path's way.
        #[inline(never)]
        fn run(self) {
            for (addr, release) in self.trimmed {
                // SAFETY: limbo's count, grace period over (`done` reached the entry's
                // marker), unreachable from shared memory.
                unsafe { release(addr) };
            }
            if let Some((done, marker, flush)) = self.marker {
                defer_marker(done, marker, flush);
            }
            defer_all(self.batch);
        }
    }

    /// Defers marker `marker`: once it runs, `done` holds at least `marker`. With `flush`,
    /// hands this thread's bag of deferred closures to the collector now (and lets it
    /// collect), so that the marker runs after the next epoch advances rather than after
    /// 64 closures have filled the bag.
    fn defer_marker(done: Arc<AtomicU64>, marker: u64, flush: bool) {
        let guard = crossbeam_epoch::pin();
        // SAFETY: the closure only writes an atomic it owns a count of (it is `Send`
        // and `'static`), so running it on any thread, at any later time, is sound.
        unsafe {
            guard.defer_unchecked(move || {
                // Release: pairs with the Acquire load in `Reclaimer::reuse`, which thereby
                // happens after every guard this marker waited for was dropped.
                done.fetch_max(marker, Ordering::Release);
            });
        }
        if flush {
            guard.flush();
        }
    }

    impl Reclaimer {
        pub(crate) fn new() -> Self {
            Reclaimer
        }

        #[inline]
        pub(crate) fn pin(&self) -> Guard<'_> {
            Guard(crossbeam_epoch::pin(), std::marker::PhantomData)
        }

        /// Releases a count of `ptr` once every guard that might have seen it is gone (or
        /// recycles it: [`reuse`](Self::reuse)).
        ///
        /// # Safety
        /// The caller owns a count of `ptr` and gives it up here, and `ptr` is no longer
        /// reachable from shared memory, so no guard pinned from now on can load it.
        #[inline]
        pub(crate) unsafe fn retire<R: Release>(&self, ptr: *const R) {
            let item: Retired = (ptr as usize, release::<R>);
            // What to hand to crossbeam (a marker, a batch of foreign objects) is decided
            // under the borrow and handed over after it is released, since pinning may
            // run deferred closures that drop values whose drop publishes.
            let deferral = LIMBO.try_with(|l| {
                let mut l = l.0.borrow_mut();
                let kind = TypeId::of::<R>();
                if l.queue.is_empty() {
                    l.kind = Some((kind, item.1));
                }
                let mut batch = None;
                if l.kind.map(|(k, _)| k) == Some(kind) {
                    let marker = l.next_marker;
                    l.queue.push_back((item.0, marker));
                } else {
                    l.foreign.push(item);
                    if l.foreign.len() >= BATCH as usize {
                        batch = Some(std::mem::take(&mut l.foreign));
                    }
                }
                // Counting every retirement, foreign ones too, so that the queue's newest
                // entries get their marker even when this thread now retires only
                // another type (and the queue can empty and take that type).
                l.since_marker += 1;
                if l.since_marker < BATCH {
                    return batch.map(|batch| Deferral {
                        batch,
                        ..Deferral::default()
                    });
                }
                l.since_marker = 0;
                let marker = l.next_marker;
                l.next_marker += 1;
                let mut trimmed = Vec::new();
                let flush = l.check_pace(marker, &mut trimmed);
                let done = l.done.get_or_insert_with(|| Arc::new(AtomicU64::new(0)));
                Some(Deferral {
                    marker: Some((done.clone(), marker, flush)),
                    batch: batch.unwrap_or_default(),
                    trimmed,
                })
            });
            match deferral {
                Ok(None) => {}
                Ok(Some(deferral)) => deferral.run(),
                // The thread is exiting and its limbo is gone: defer this one alone.
                Err(_) => defer_all(vec![item]),
            }
        }

        /// Memory for a new `R`: the oldest `R` in this thread's limbo, if its grace period
        /// is over and it was the caller's alone ([`Release::reclaim`] dropped its contents).
        /// The memory is uninitialised, allocated as a `Box<R>`, and the caller's. `None`
        /// if there is no such `R` now; then allocate.
        #[inline]
        pub(crate) fn reuse<R: Release>(&self) -> Option<NonNull<R>> {
            let (addr, release) = LIMBO
                .try_with(|l| {
                    let mut l = l.0.borrow_mut();
                    let (kind, release) = l.kind?;
                    // Acquire: pairs with the Release `fetch_max` of the markers' closures
                    // (see `defer_marker`).
                    let done = l.done.as_ref()?.load(Ordering::Acquire);
                    let addr = l.pop_expired(done)?;
                    Some((addr, (kind != TypeId::of::<R>()).then_some(release)))
                })
                .ok()
                .flatten()?;
            // Outside the borrow: releasing or reclaiming may drop a value, and a value's
            // drop may publish on this thread.
            if let Some(release) = release {
                // Another type's (this thread now publishes `R`s): freed, one per call, so
                // that the queue empties and takes `R`s. SAFETY: limbo's count, grace
                // period over, unreachable.
                unsafe { release(addr) };
                return None;
            }
            let ptr = addr as *const R;
            // SAFETY: we own a count of `ptr` (limbo's), its grace period is over (`done`
            // reached its marker) and it is unreachable from shared memory.
            if unsafe { R::reclaim(ptr) } {
                // SAFETY: from a non-null address; `reclaim` made it ours.
                Some(unsafe { NonNull::new_unchecked(ptr as *mut R) })
            } else {
                None
            }
        }
    }

    /// Hands this thread's limbo to the collector now.
    pub(crate) fn flush_retired() {
        let all = LIMBO
            .try_with(|l| l.0.borrow_mut().take_all())
            .unwrap_or_default();
        defer_all(all);
    }
}

#[cfg(herald_loom)]
mod reclaim {
    use std::any::TypeId;
    use std::collections::VecDeque;
    use std::ptr::NonNull;

    use super::{AtomicUsize, Ordering, Release};
    use loom::sync::Mutex;

    /// A retired object: its address (owning one count), its type, and the function that
    /// gives up that count.
    struct Held {
        addr: usize,
        kind: TypeId,
        release: unsafe fn(usize),
    }
    // SAFETY: only `Release` objects, which are `Send + Sync`, are held.
    unsafe impl Send for Held {}

    /// Releases one count of the `R` at address `addr`.
    ///
    /// # Safety
    /// As [`Release::release`] for `addr as *const R`.
    unsafe fn release<R: Release>(addr: usize) {
        // SAFETY: as the function's contract says.
        unsafe { R::release(addr as *const R) }
    }

    #[derive(Default)]
    struct State {
        /// Live guards.
        active: usize,
        /// Retired while a guard was live: not reusable before the guards are all gone.
        pending: Vec<Held>,
        /// Grace period over: reusable (or released with the reclaimer).
        ready: VecDeque<Held>,
    }

    /// Loom-visible stand-in for epochs and the normal build's limbo: counts live guards;
    /// what is retired becomes reusable the moment the count is zero (at once if it is
    /// zero already), and `reuse` hands it out as the limbo does, so the models check the
    /// recycling too (`Release::reclaim` and the write of a new entry into reused memory).
    ///
    /// `reuse` looks at `ready_len` before it takes the lock, so that a publish with nothing
    /// to reuse takes no lock: loom's `Mutex` forgets a pending `unpark` of a thread that
    /// blocks on it (its `set_runnable`), which would turn a subscriber contending with a
    /// publisher here into a false deadlock in the parking models. (No real mutex consumes
    /// park tokens; the normal build takes no lock at all.)
    #[derive(Default)]
    pub(crate) struct Reclaimer {
        state: Mutex<State>,
        /// `state.ready.len()`, written under the lock.
        ready_len: AtomicUsize,
    }

    impl std::fmt::Debug for Reclaimer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Reclaimer(loom)")
        }
    }

    pub(crate) struct Guard<'a>(&'a Reclaimer);

    impl Reclaimer {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        pub(crate) fn pin(&self) -> Guard<'_> {
            self.state.lock().unwrap().active += 1;
            Guard(self)
        }

        /// See the normal build's `Reclaimer::retire`. Reusable at once if no guard is
        /// alive (a guard pinned after this lock is ordered after the caller's unlink, so
        /// it cannot load `ptr`), else when the last live guard is dropped.
        ///
        /// # Safety
        /// As there.
        pub(crate) unsafe fn retire<R: Release>(&self, ptr: *const R) {
            let held = Held {
                addr: ptr as usize,
                kind: TypeId::of::<R>(),
                release: release::<R>,
            };
            let mut state = self.state.lock().unwrap();
            if state.active == 0 {
                state.ready.push_back(held);
                // Release: pairs with the Acquire load in `reuse` (only a hint: the lock
                // orders the list itself).
                self.ready_len.store(state.ready.len(), Ordering::Release);
            } else {
                state.pending.push(held);
            }
        }

        /// See the normal build's `Reclaimer::reuse`: the oldest reusable `R`, if it was
        /// the caller's alone.
        pub(crate) fn reuse<R: Release>(&self) -> Option<NonNull<R>> {
            // Acquire: pairs with the Release stores under the lock; 0 may be stale, which
            // only means no reuse this time.
            if self.ready_len.load(Ordering::Acquire) == 0 {
                return None;
            }
            let held = {
                let mut state = self.state.lock().unwrap();
                let at = state
                    .ready
                    .iter()
                    .position(|h| h.kind == TypeId::of::<R>())?;
                let held = state.ready.remove(at)?;
                // Release: as in `retire`.
                self.ready_len.store(state.ready.len(), Ordering::Release);
                held
            };
            let ptr = held.addr as *const R;
            // SAFETY: we own a count of `ptr` (the reclaimer's), its grace period is over
            // (it is ready) and it is unreachable from shared memory.
            if unsafe { R::reclaim(ptr) } {
                // SAFETY: from a non-null address; `reclaim` made it ours.
                Some(unsafe { NonNull::new_unchecked(ptr as *mut R) })
            } else {
                None
            }
        }
    }

    /// The normal build hands its per-thread limbo to the collector here; under loom
    /// what is retired stays with its ring's reclaimer.
    pub(crate) fn flush_retired() {}

    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            let mut state = self.0.state.lock().unwrap();
            state.active -= 1;
            if state.active == 0 && !state.pending.is_empty() {
                let pending = std::mem::take(&mut state.pending);
                state.ready.extend(pending);
                // Release: as in `retire`.
                self.0.ready_len.store(state.ready.len(), Ordering::Release);
            }
        }
    }

    impl Drop for Reclaimer {
        fn drop(&mut self) {
            let state = self.state.get_mut().unwrap();
            let held: Vec<Held> = state
                .pending
                .drain(..)
                .chain(state.ready.drain(..))
                .collect();
            for h in held {
                // SAFETY: the reclaimer's count; the ring is being dropped, so no guard
                // is alive and nothing can reach `h.addr` any more.
                unsafe { (h.release)(h.addr) };
            }
        }
    }
}

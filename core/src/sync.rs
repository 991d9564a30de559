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
//!   reader-counting scheme (a retired pointer is freed at once if no guard is alive, else
//!   when the last live guard is dropped) built on loom's `Mutex`. It gives the ring the
//!   same contract (a pointer retired while a guard is alive is not freed before that
//!   guard is dropped), so the models check how the ring *uses* reclamation, not
//!   crossbeam-epoch's internals (which crossbeam model-checks itself), nor the per-thread
//!   batching of the normal build (which only delays the hand-over to the collector).
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
}

#[cfg(not(herald_loom))]
mod reclaim {
    use std::cell::RefCell;

    use super::Release;

    /// Epoch-based reclamation on crossbeam-epoch's global collector. Zero-sized.
    ///
    /// Readers pin a guard around every access to a slot. Publishers never read an entry
    /// they do not own, so they need no guard: an entry they take out of a slot goes into
    /// a small per-thread batch, and each full batch is handed to the collector with *one*
    /// `defer`. Deferring later than the unlink is always safe (a guard pinned before the
    /// unlink is also pinned before the defer), and it keeps the publish path free of
    /// epoch pins and of per-entry deferred closures. The price: up to `BATCH - 1`
    /// overwritten entries per publishing thread wait in the batch until that thread
    /// retires more, drops a `Publisher`, or exits; and crossbeam-epoch itself keeps up to
    /// 64 deferred batches per thread before it seals them for collection, so up to about
    /// 2,048 overwritten entries per publishing thread may await freeing (bounded; it shows
    /// as a sawtooth in RSS).
    #[derive(Debug, Default)]
    pub(crate) struct Reclaimer;

    /// While a `Guard` lives, no entry unlinked after it was pinned is freed. Held, never
    /// read: its `Drop` unpins.
    pub(crate) struct Guard<'a>(
        #[allow(dead_code)] crossbeam_epoch::Guard,
        std::marker::PhantomData<&'a ()>,
    );

    /// Entries retired per `defer`.
    const BATCH: usize = 32;

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

    /// This thread's batch; flushed when full, by `flush_retired` and at thread exit.
    struct Batch(RefCell<Vec<Retired>>);

    impl Drop for Batch {
        fn drop(&mut self) {
            defer_all(std::mem::take(self.0.get_mut()));
        }
    }

    thread_local! {
        static BATCH_OF_THIS_THREAD: Batch = const { Batch(RefCell::new(Vec::new())) };
    }

    /// Hands `batch` to the collector: released once every guard pinned now is gone.
    fn defer_all(batch: Vec<Retired>) {
        if batch.is_empty() {
            return;
        }
        let guard = crossbeam_epoch::pin();
        // SAFETY: every entry in `batch` was unlinked from shared memory before it was
        // retired, so only guards pinned before now can hold it; `defer_unchecked` runs
        // the closure after all of those are dropped. The entries are `Send + Sync`
        // (`retire`'s bound), so releasing them on another thread is sound.
        unsafe {
            guard.defer_unchecked(move || {
                for (addr, release) in batch {
                    release(addr);
                }
            });
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

        /// Releases a count of `ptr` once every guard that might have seen it is gone.
        ///
        /// # Safety
        /// The caller owns a count of `ptr` and gives it up here, and `ptr` is no longer
        /// reachable from shared memory, so no guard pinned from now on can load it.
        #[inline]
        pub(crate) unsafe fn retire<R: Release>(&self, ptr: *const R) {
            let item: Retired = (ptr as usize, release::<R>);
            let full = BATCH_OF_THIS_THREAD.try_with(|b| {
                let mut b = b.0.borrow_mut();
                b.push(item);
                (b.len() >= BATCH).then(|| std::mem::replace(&mut *b, Vec::with_capacity(BATCH)))
            });
            match full {
                Ok(Some(batch)) => defer_all(batch),
                Ok(None) => {}
                // The thread is exiting and its batch is gone: defer this one alone.
                Err(_) => defer_all(vec![item]),
            }
        }
    }

    /// Hands this thread's partial batch to the collector now.
    pub(crate) fn flush_retired() {
        let batch = BATCH_OF_THIS_THREAD
            .try_with(|b| std::mem::take(&mut *b.0.borrow_mut()))
            .unwrap_or_default();
        defer_all(batch);
    }
}

#[cfg(herald_loom)]
mod reclaim {
    use super::Release;
    use loom::sync::Mutex;

    struct Retired(Box<dyn FnOnce()>);
    // SAFETY: only releases of `Release` objects, which are `Send + Sync`, are retired.
    unsafe impl Send for Retired {}

    #[derive(Default)]
    struct State {
        active: usize,
        retired: Vec<Retired>,
    }

    /// Loom-visible stand-in for epochs: counts live guards and frees what was retired
    /// the moment the count drops to zero.
    #[derive(Default)]
    pub(crate) struct Reclaimer {
        state: Mutex<State>,
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

        /// See the normal build's `Reclaimer::retire`. Frees at once if no guard is
        /// alive (a guard pinned after this lock is ordered after the caller's unlink, so
        /// it cannot load `ptr`), else when the last live guard is dropped.
        ///
        /// # Safety
        /// As there.
        pub(crate) unsafe fn retire<R: Release>(&self, ptr: *const R) {
            let ptr = ptr as usize;
            let free = move || {
                // SAFETY: the caller gave up this count to us.
                unsafe { R::release(ptr as *const R) }
            };
            let mut state = self.state.lock().unwrap();
            if state.active == 0 {
                drop(state);
                free();
            } else {
                state.retired.push(Retired(Box::new(free)));
            }
        }
    }

    /// The normal build hands its per-thread batch to the collector here; under loom
    /// nothing is batched.
    pub(crate) fn flush_retired() {}

    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            let freed = {
                let mut state = self.0.state.lock().unwrap();
                state.active -= 1;
                if state.active == 0 {
                    std::mem::take(&mut state.retired)
                } else {
                    Vec::new()
                }
            };
            for Retired(f) in freed {
                f();
            }
        }
    }

    impl Drop for Reclaimer {
        fn drop(&mut self) {
            let retired = std::mem::take(&mut self.state.lock().unwrap().retired);
            for Retired(f) in retired {
                f();
            }
        }
    }
}

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
//!   reader-counting scheme (retired pointers are freed once no guard is active) built on
//!   loom's `Mutex`. It gives the ring the same contract (a pointer retired while a guard is
//!   alive is not freed before that guard is dropped), so the models check how the ring
//!   *uses* reclamation, not crossbeam-epoch's internals (which crossbeam model-checks
//!   itself).
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

/// Threads: `current`, `park` and `yield_now`, loom's under `herald_loom`.
pub(crate) mod thread {
    #[cfg(herald_loom)]
    pub(crate) use loom::thread::{Thread, current, park, yield_now};
    #[cfg(not(herald_loom))]
    pub(crate) use std::thread::{Thread, current, park, yield_now};
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

pub(crate) use reclaim::{Guard, Reclaimer};

#[cfg(not(herald_loom))]
mod reclaim {
    use super::Arc;

    /// Epoch-based reclamation on crossbeam-epoch's global collector. Zero-sized.
    #[derive(Debug, Default)]
    pub(crate) struct Reclaimer;

    /// While a `Guard` lives, no pointer retired after it was created is freed.
    pub(crate) struct Guard<'a>(crossbeam_epoch::Guard, std::marker::PhantomData<&'a ()>);

    impl Reclaimer {
        pub(crate) fn new() -> Self {
            Reclaimer
        }

        #[inline]
        pub(crate) fn pin(&self) -> Guard<'_> {
            Guard(crossbeam_epoch::pin(), std::marker::PhantomData)
        }
    }

    impl Guard<'_> {
        /// Drops the `Arc` behind `ptr` once every guard that might have seen it is gone.
        ///
        /// # Safety
        /// `ptr` came from `Arc::into_raw`, its strong reference is owned by the caller and
        /// given up here, and it is no longer reachable from shared memory, so no guard
        /// created from now on can load it.
        #[inline]
        pub(crate) unsafe fn retire<T: Send + Sync + 'static>(&self, ptr: *const T) {
            let ptr = ptr as usize;
            // SAFETY: the caller's contract above is exactly what `defer_unchecked` needs:
            // the closure runs after every guard pinned before the unlink has been dropped.
            unsafe {
                self.0
                    .defer_unchecked(move || drop(Arc::from_raw(ptr as *const T)));
            }
        }
    }
}

#[cfg(herald_loom)]
mod reclaim {
    use super::Arc;
    use loom::sync::Mutex;

    struct Retired(Box<dyn FnOnce()>);
    // SAFETY: only `Arc<T>` drops with `T: Send + Sync` are retired (see `retire`).
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
    }

    impl Guard<'_> {
        /// See the normal build's `Guard::retire`.
        ///
        /// # Safety
        /// As there.
        pub(crate) unsafe fn retire<T: Send + Sync + 'static>(&self, ptr: *const T) {
            let ptr = ptr as usize;
            self.0
                .state
                .lock()
                .unwrap()
                .retired
                .push(Retired(Box::new(move || {
                    // SAFETY: the caller gave up this strong reference to us.
                    drop(unsafe { Arc::from_raw(ptr as *const T) })
                })));
        }
    }

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

//! Parking for subscribers: a per-subscriber [`AtomicWaker`] and a lock-free stack of
//! parked subscribers that a publisher takes whole with one `swap`.
//!
//! The protocol that makes wakeups impossible to lose is described in the header of
//! `ring.rs` ("Wakeups"); this file holds the two building blocks.

use std::ptr;
use std::task::Waker;

use crate::sync::{Arc, AtomicBool, AtomicPtr, AtomicUsize, Ordering, UnsafeCell};

/// A slot holding one `Waker`, registered by its single owner and taken by any thread.
///
/// The algorithm is the well-known one of `futures::task::AtomicWaker`, written against
/// our `sync` shim so that loom checks it too. `state` is a tiny lock: `REGISTERING` is
/// held by the owner while it writes `waker`, `WAKING` by a thread taking it.
pub(crate) struct AtomicWaker {
    /// `WAITING`, `REGISTERING`, `WAKING` or `REGISTERING | WAKING`.
    state: AtomicUsize,
    /// Written only by the holder of `REGISTERING`, taken only by the holder of `WAKING`
    /// while `REGISTERING` is clear.
    waker: UnsafeCell<Option<Waker>>,
}

const WAITING: usize = 0;
const REGISTERING: usize = 0b01;
const WAKING: usize = 0b10;

// SAFETY: `waker` is only touched under the `state` protocol above, which gives one thread
// at a time exclusive access; `Waker` is `Send + Sync`.
unsafe impl Send for AtomicWaker {}
// SAFETY: as above.
unsafe impl Sync for AtomicWaker {}

impl AtomicWaker {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicUsize::new(WAITING),
            waker: UnsafeCell::new(None),
        }
    }

    /// Stores `waker`, to be woken by the next [`wake`](Self::wake). Only the owning
    /// subscriber calls this (never two threads at once).
    pub(crate) fn register(&self, waker: &Waker) {
        // Acquire: pairs with the Release that ended the previous REGISTERING or WAKING,
        // so the `waker` written there is visible.
        match self
            .state
            .compare_exchange(WAITING, REGISTERING, Ordering::Acquire, Ordering::Acquire)
            .unwrap_or_else(|x| x)
        {
            WAITING => {
                self.waker.with_mut(|w| {
                    // SAFETY: we hold REGISTERING, so no other thread touches `waker`.
                    let w = unsafe { &mut *w };
                    if !w.as_ref().is_some_and(|old| old.will_wake(waker)) {
                        *w = Some(waker.clone());
                    }
                });
                // AcqRel: Release publishes the new waker to the next `take`; Acquire pairs
                // with a concurrent `take`'s fetch_or when it set WAKING meanwhile.
                let res = self.state.compare_exchange(
                    REGISTERING,
                    WAITING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if res.is_err() {
                    // A `take` ran while we were registering and left the wake to us.
                    // SAFETY: we still hold REGISTERING; the taker saw it and backed off.
                    let w = self.waker.with_mut(|w| unsafe { (*w).take() });
                    // AcqRel: ends both our REGISTERING and the taker's WAKING; pairs with
                    // the next register's Acquire.
                    self.state.swap(WAITING, Ordering::AcqRel);
                    if let Some(w) = w {
                        w.wake();
                    }
                }
            }
            WAKING => {
                // A `take` is in progress right now: wake the new waker directly.
                waker.wake_by_ref();
                // The task is re-polled at once and may land here again until the taker
                // clears WAKING: a spin, so hint it (as futures' and tokio's AtomicWaker
                // do). Under loom this yields, so the taker gets to run.
                crate::sync::spin_loop();
            }
            _ => {
                // REGISTERING: a concurrent `register`, which our single owner never does.
                debug_assert!(false, "AtomicWaker::register called concurrently");
            }
        }
    }

    /// Takes the registered waker, if any, and wakes it.
    pub(crate) fn wake(&self) {
        if let Some(w) = self.take() {
            w.wake();
        }
    }

    /// Takes the registered waker, if any, without waking it: what a subscriber that goes
    /// away does, so that its task is not kept alive by a node still on a parked stack.
    pub(crate) fn clear(&self) {
        drop(self.take());
    }

    /// Takes the registered waker, unless a `register` or another `take` is running (the
    /// register then sees `WAKING` and wakes the new waker itself).
    fn take(&self) -> Option<Waker> {
        // AcqRel: Acquire pairs with register's Release (the waker it stored is visible);
        // Release orders our earlier writes before the woken task runs.
        match self.state.fetch_or(WAKING, Ordering::AcqRel) {
            WAITING => {
                // SAFETY: we hold WAKING and REGISTERING is clear: exclusive access.
                let w = self.waker.with_mut(|w| unsafe { (*w).take() });
                // Release: pairs with register's Acquire on `state`.
                self.state.fetch_and(!WAKING, Ordering::Release);
                w
            }
            _ => None,
        }
    }
}

/// One per subscriber: what a publisher needs to wake it.
pub(crate) struct WaitNode {
    pub(crate) waker: AtomicWaker,
    /// Next node in the parked stack. Written by the owner before it pushes the node (while
    /// `queued` is true and the node is not yet reachable), read by the publisher that took
    /// the stack, before it clears `queued`.
    next: AtomicPtr<WaitNode>,
    /// True from the moment the owner claims a push until a publisher that took the stack
    /// has read `next`. A node is in at most one stack at a time.
    queued: AtomicBool,
}

impl WaitNode {
    pub(crate) fn new() -> Self {
        Self {
            waker: AtomicWaker::new(),
            next: AtomicPtr::new(ptr::null_mut()),
            queued: AtomicBool::new(false),
        }
    }

    /// Whether the node is on a stack no publisher has taken yet. A hint: it may change
    /// the moment after.
    pub(crate) fn is_queued(&self) -> bool {
        // Relaxed: only a hint (what `Drop for Subscriber` counts); nothing is read on the
        // strength of it.
        self.queued.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(herald_loom)))]
impl WaitStack {
    /// Nodes on the stack now; only meaningful while nobody pushes or takes.
    pub(crate) fn len(&self) -> usize {
        let mut n = 0;
        // Acquire: pairs with push's Release CAS, so `next` is visible.
        let mut p = self.head.load(Ordering::Acquire);
        while !p.is_null() {
            n += 1;
            // SAFETY: nodes on the stack are kept alive by the count the stack owns.
            // Relaxed: each `next` was written before its node's push, which the Acquire
            // load of `head` above (of the last push) happens after.
            p = unsafe { (*p).next.load(Ordering::Relaxed) };
        }
        n
    }
}

/// Treiber stack of parked subscribers. Only pushes and take-all: no ABA.
pub(crate) struct WaitStack {
    /// Top of the stack; each pointer owns one strong count of its `Arc<WaitNode>`.
    head: AtomicPtr<WaitNode>,
    /// Nodes left on the stack by subscribers dropped while parked, since the last sweep
    /// (an upper bound: a publisher's `wake_all` frees such nodes without counting them).
    /// On a ring nobody publishes to, nothing else would ever free those nodes. Kept here,
    /// in the stack's own padded line, so the ring's shared state keeps its layout.
    stale: AtomicUsize,
}

impl WaitStack {
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
            stale: AtomicUsize::new(0),
        }
    }

    /// Counts one node left behind by a subscriber dropped while parked. True when the
    /// count reached `threshold` and this caller reset it: the caller then sweeps the stack
    /// (`wake_all`).
    pub(crate) fn note_stale(&self, threshold: usize) -> bool {
        // Relaxed (both): a heuristic count; nothing is published through it, and the
        // sweep's own `wake_all` is what synchronizes with the nodes' owners.
        let stale = self.stale.fetch_add(1, Ordering::Relaxed) + 1;
        stale >= threshold
            && self
                .stale
                .compare_exchange(stale, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Puts `node` on the stack unless it is there already. The caller registered its
    /// waker first; after this it must issue a `SeqCst` fence and re-check for events.
    pub(crate) fn push(&self, node: &Arc<WaitNode>) {
        // Acquire: pairs with the Release in `wake_all` that cleared `queued`, which comes
        // after that thread's read of `next`, so our write of `next` below cannot race it.
        if node.queued.swap(true, Ordering::Acquire) {
            return; // still in a stack that a publisher will wake
        }
        let raw = Arc::into_raw(node.clone()) as *mut WaitNode;
        // Relaxed: only used as the expected value of the CAS below.
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // Relaxed: published by the Release of the CAS below.
            node.next.store(head, Ordering::Relaxed);
            // SeqCst (Release at least): pairs with the Acquire swap in `wake_all`, which
            // then sees `next`; SeqCst so that, with the fence the caller issues next, the
            // publisher's SeqCst check of `head` and our re-check cannot both miss.
            match self
                .head
                .compare_exchange_weak(head, raw, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }

    /// Whether anyone may be parked. A `SeqCst` load that pairs with the `SeqCst` fence a
    /// subscriber issues after `push` (see `ring.rs`, "Wakeups").
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.head.load(Ordering::SeqCst).is_null()
    }

    /// Takes every parked node and wakes it.
    ///
    /// # Panics
    ///
    /// If a waker panics: after waking every other node taken, with the first panic. The
    /// nodes are off the stack by then, so this call is the only one that can reach them;
    /// stopping at the panic would leave their subscribers parked for good.
    pub(crate) fn wake_all(&self) {
        let mut panicked = None;
        self.take_all(|node| {
            // Unwind safety: a panic leaves nothing half-done here; `take` released the
            // waker's state before calling it.
            let wake = std::panic::AssertUnwindSafe(|| node.waker.wake());
            if let Err(panic) = std::panic::catch_unwind(wake) {
                panicked.get_or_insert(panic);
            }
        });
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
    }

    /// Takes every parked node off the stack and hands each to `then` once it is out (its
    /// `queued` flag cleared).
    #[inline]
    fn take_all(&self, mut then: impl FnMut(&WaitNode)) {
        // Acquire: pairs with push's Release CAS, so each node's `next` is visible.
        let mut p = self.head.swap(ptr::null_mut(), Ordering::Acquire);
        while !p.is_null() {
            // SAFETY: every pointer in the stack came from `Arc::into_raw` in `push` and
            // owns that strong count; having swapped the stack out, we own it now.
            let node = unsafe { Arc::from_raw(p) };
            // Relaxed: ordered after the push by the Acquire swap above.
            p = node.next.load(Ordering::Relaxed);
            // Release: pairs with push's Acquire swap; our read of `next` happens before
            // the owner can overwrite it in its next push. A swap rather than a store: the
            // same effect here (nobody reads what it returns), but loom 0.7 lets a later
            // RMW read past a plain store that races with an earlier RMW (tokio-rs/loom
            // #254), which made the owner's `queued.swap(true)` see a stale `true` in the
            // models and never push again; an RMW keeps loom's modification order exact.
            node.queued.swap(false, Ordering::Release);
            then(&node);
        }
    }

    /// `wake_all` without the wakes: the bug `loom-tests/mutants.sh` plants in the sweep.
    #[cfg(herald_mutant = "sweep_forgets_wake")]
    pub(crate) fn take_all_without_waking(&self) {
        self.take_all(|_| {});
    }
}

impl Drop for WaitStack {
    fn drop(&mut self) {
        // Relaxed (here and below): `&mut self`, no other thread can reach the stack; the
        // ring's last `Arc` drop already synchronised with every earlier push.
        let mut p = self.head.load(Ordering::Relaxed);
        while !p.is_null() {
            // SAFETY: as in `wake_all`; `&mut self` means nobody else can reach the stack.
            let node = unsafe { Arc::from_raw(p) };
            p = node.next.load(Ordering::Relaxed);
        }
    }
}

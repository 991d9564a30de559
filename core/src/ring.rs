//! A lock-free broadcast ring with an atomically sealed startup segment.
//!
//! Every value published gets a global sequence number (0 for the first). Every
//! [`Subscriber`] sees every value exactly once, in sequence order, or is told precisely how
//! many it missed. Values published before [`Publisher::seal_startup`] also go into a
//! bounded, append-only *startup segment* of the same sequence space, which every new
//! subscriber replays first.
//!
//! ```
//! use herald_core::ring::{self, RingConfig, TryRecvError};
//!
//! let publisher = ring::ring::<&str>(RingConfig { capacity: 4, startup_capacity: 8 });
//! publisher.publish("node-started");
//! publisher.seal_startup();                 // one atomic step: startup is over
//! let mut late = publisher.subscribe();     // joins after the seal...
//! publisher.publish("block-1");
//!
//! let first = late.try_recv().unwrap();     // ...but replays the startup segment first
//! assert_eq!((first.seq(), **first), (0, "node-started"));
//! assert_eq!(**late.try_recv().unwrap(), "block-1");
//! assert_eq!(late.try_recv().unwrap_err(), TryRecvError::Empty);
//!
//! for i in 0..10 { publisher.publish("flood"); }  // laps the 4-slot ring
//! assert_eq!(late.try_recv().unwrap_err(), TryRecvError::Lagged { missed: 6, resume_seq: 8 });
//! assert_eq!(late.try_recv().unwrap().seq(), 8);
//! ```
//!
//! # Protocol
//!
//! **Sequence numbers and the seal word.** `tail` is one `AtomicU64`: bits 0..62 hold the
//! next sequence number, bit 62 is `CLOSED`, bit 63 is `SEALED`. A publisher claims its
//! sequence number with `tail.fetch_add(1)`; the value it gets back also says whether the
//! startup segment was still open at that instant. [`Publisher::seal_startup`] is a single
//! `tail.fetch_or(SEALED)`: in `tail`'s modification order every claim before it is a
//! startup event and every claim after it is live, with no third case. The sealing call
//! then stores the seal point (the sequence number it saw) in `seal_point`, for
//! subscribers that join afterwards.
//!
//! **Slots and stamps.** The ring has `capacity` (a power of two) slots; value `s` goes to
//! slot `s & mask`. A slot is one `AtomicPtr` to an [`Entry`], a reference-counted
//! allocation that carries the value *and its sequence number*, so the pointer and its
//! stamp change in one atomic step and a reader can never see a torn pair. A publisher
//! installs its entry with a `swap` and owns what comes out: normally the previous lap,
//! which it retires. If a publisher that claimed `s` is so slow that `s + capacity` was
//! installed first, the swap hands it that newer entry, and it swaps it back (repeating
//! until what comes out is older than what went in), so the newest entry always ends up in
//! the slot and `s` is counted as missed by readers that needed it. A reader at cursor `c`
//! loads the slot: stamp `== c` is its value; stamp `< c` (or null) means `c` is not
//! written yet; stamp `> c` means `c` was overwritten, and it skips to `tail - capacity`,
//! the oldest value that can still be in the ring, reporting `Lagged { missed }` for
//! exactly the skipped range. While publishers keep going, that oldest value is the next
//! one overwritten, so a subscriber can be lapped again before it reads it and get a second
//! `Lagged` at once; every report is exact, and a consumer that tells a person (the
//! WebSocket server) sums back-to-back reports into one. A subscriber that is lapped
//! again before it has read half a ring past the point its last lap moved it to is
//! evidently slower than the publishers: it resumes half a ring past the oldest value
//! instead, so that it reads half a ring before the next lap rather than one value (with
//! a fast publisher and many slow readers that is the difference between a turn that
//! delivers a batch and one that delivers a lag notice). The first lap, and a `from=`
//! point no longer retained, resume at the oldest value.
//!
//! **The startup segment.** A publisher whose claim saw the segment open, and whose
//! sequence number is below `startup_capacity`, also stores its entry (with a count of its
//! own) into `startup[seq]`, a write-once cell. A subscriber reads `tail` once when it is
//! created, at join point `j`. If the segment was open it replays `startup[0..j)` (every
//! one of those claims came before the seal) and then reads the ring from `j`; if sealed at
//! seal point `S`, it replays `startup[0..S)` and reads the ring from `j >= S` (both ranges
//! cut at `startup_capacity`, see below). Replay and live meet at a sequence number, never
//! overlap, and are never compared by content. Startup events past `startup_capacity` are
//! not kept; a replaying subscriber gets one `Lagged { missed }` with their count after
//! the replay.
//!
//! **Reclamation.** An entry taken out of a slot may still be read by a subscriber that
//! loaded the pointer just before. Subscribers therefore read slots under an epoch guard
//! (crossbeam-epoch), and a publisher *retires* what it takes out: the slot's count is
//! released only once every guard that could have seen it is gone. Publishers never read
//! an entry they do not own (the swap above), so they pin no guard. A retired entry waits
//! in its publishing thread's *limbo* (`sync.rs`), a queue that defers one marker to the
//! collector per 32 entries; once the marker that follows an entry has run, its grace
//! period is over, and the thread's next publish reuses the entry's memory for the new
//! value (dropping the old one) if its count is the slot's alone. So a steady publisher
//! neither allocates nor frees, and hands the collector one closure per 32 publishes. Epochs
//! were chosen over arc-swap because a publisher then does O(1) work whatever the number
//! of threads and subscribers (arc-swap's writer scans every thread's debt list), and over
//! hazard slots because those make publish cost grow with the number of readers. The
//! startup segment is never overwritten and needs no reclamation: it is freed with the
//! ring.
//!
//! **Counts.** An entry counts its owners in one word (`Entry::refs`): its slot, its
//! startup cell and each [`EntryRef`] a subscriber took. There are no weak counts, and a
//! count is only taken from a live owner or from a slot read under a guard. So when a
//! retired entry's count reads 1 after the grace period, it is the slot's alone and the
//! entry is reused (or freed) with no read-modify-write: an entry no subscriber took a
//! count on (every entry, when subscribers only borrow) costs its publisher no locked
//! instruction to recycle. An entry a subscriber still holds is left to its last owner.
//!
//! **Wakeups.** A subscriber with nothing to read registers its waker in its own
//! `WaitNode` (`ring/wait.rs`), pushes the node on the `waiters` stack (a `SeqCst` CAS),
//! issues a `SeqCst` fence and looks for a value once more before it sleeps. A publisher
//! writes its slot with a `SeqCst` swap (and a startup cell, which a replaying subscriber
//! may be waiting on, with a `SeqCst` store) and then loads `waiters` with `SeqCst`: in the
//! single total order of `SeqCst` operations either the publisher's load comes after the
//! push and it wakes the subscriber, or the subscriber's re-check comes after the write and
//! finds the value. When nobody is parked the publisher does one load and no syscall.
//! Taking the whole stack is one `swap`; each node carries an `AtomicWaker` and a `queued`
//! flag so it sits in at most one stack. A subscriber dropped while parked leaves its node there
//! (without its waker) until the next publish takes the stack; so that a ring nobody
//! publishes to does not collect them, every `max(64, live subscribers)`-th such drop
//! takes the stack itself, exactly as a publisher would, and parked subscribers get a
//! spurious wakeup and park again.
//!
//! Every wakeup costs the publisher (an executor's wake is a queue push, often a futex
//! call), and a subscriber faster than the publishers would park after every value: each
//! publish would then wake every subscriber to read one value. So an async receive that
//! finds nothing first *yields* once at that cursor position (wakes its own task and
//! returns `Pending` without touching the stack); only if the next poll still finds
//! nothing does it park. Meanwhile the executor ran its other tasks and the publishers
//! published more, so the look that follows usually reads a batch. A yield is only an
//! early poll: it cannot lose a wakeup, since the protocol above still runs before any
//! subscriber sleeps. (The loom models build without it; see `yield_first`.)
//!
//! **Receiving.** [`Subscriber::try_recv`], [`recv`](Subscriber::recv) and
//! [`recv_many`](Subscriber::recv_many) hand out [`EntryRef`]s: one reference count taken
//! (and later dropped) per value on a line every subscriber of that value shares.
//! [`try_recv_with`](Subscriber::try_recv_with), [`recv_with`](Subscriber::recv_with),
//! [`try_recv_each`](Subscriber::try_recv_each) and [`recv_each`](Subscriber::recv_each)
//! instead *lend* `&Entry` to a closure while the epoch guard is pinned, so subscribers
//! write nothing the others read; [`ready`](Subscriber::ready) waits without consuming, for
//! `select!` loops that read with a borrowing call afterwards.
//!
//! **Closing.** Publishers are counted; when the last [`Publisher`] is dropped (no publish
//! can be in flight then) it sets `CLOSED` in `tail` and wakes everyone. Subscribers drain
//! what is left, then get [`RecvError::Closed`].

mod wait;

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::{self, NonNull};
use std::task::{Context, Poll, Waker};

use crossbeam_utils::CachePadded;

use crate::sync::{
    self, Arc, AtomicPtr, AtomicU64, AtomicUsize, Guard, Ordering, Reclaimer, fence, thread,
};
use wait::{WaitNode, WaitStack};

const SEALED: u64 = 1 << 63;
const CLOSED: u64 = 1 << 62;
const SEQ_MASK: u64 = CLOSED - 1;
/// `seal_point` before the seal.
const UNSEALED: u64 = u64::MAX;
/// Fewest dropped-while-parked subscribers whose nodes a dropping subscriber sweeps off the
/// `waiters` stack (`Drop for Subscriber`); 1 under loom, so the models check the sweep.
const STALE_SWEEP: usize = if cfg!(herald_loom) { 1 } else { 64 };

/// Sizes of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Number of live values retained; rounded up to a power of two (at least 2).
    pub capacity: usize,
    /// Most startup events kept for replay (0 keeps none).
    pub startup_capacity: usize,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            capacity: 4096,
            startup_capacity: 4096,
        }
    }
}

/// A published value with its sequence number. Subscribers share one `Entry` per value
/// (one allocation, made or recycled by the publish); nothing is copied per subscriber.
/// Borrowing receives lend `&Entry`; owning ones hand out an [`EntryRef`].
pub struct Entry<T> {
    /// Owners of this allocation: the slot that holds it (until a publisher has taken it
    /// out and its retirement has ended), its startup cell (until the ring is dropped) and
    /// each [`EntryRef`]. The last owner frees it. A count is only ever taken from a live
    /// owner (`EntryRef::clone`) or from a slot or cell read under an epoch guard, never
    /// from 0, and there are no weak counts.
    refs: AtomicUsize,
    /// Set once, before the entry becomes reachable (published by the slot swap).
    seq: AtomicU64,
    value: T,
}

impl<T> Entry<T> {
    /// An entry holding `value` with one count (the caller's); its sequence number is set
    /// when it is published.
    fn fresh(value: T) -> Self {
        Entry {
            refs: AtomicUsize::new(1),
            seq: AtomicU64::new(0),
            value,
        }
    }

    /// A new allocation of [`fresh`](Self::fresh)`(value)`.
    fn new(value: T) -> NonNull<Self> {
        NonNull::from(Box::leak(Box::new(Self::fresh(value))))
    }

    /// Takes one more count on `this`.
    ///
    /// # Safety
    /// `this` is alive: the caller owns a count, or read it from a slot or cell under an
    /// epoch guard that is still pinned.
    #[inline]
    unsafe fn acquire(this: *const Self) {
        // Relaxed, as `Arc::clone`: the new count is handed over by whatever hands over
        // the `EntryRef` (or used on this thread); the entry's contents were published by
        // the Release swap or store that made it reachable, which the caller acquired.
        // SAFETY: alive, as the contract says.
        let old = unsafe { (*this).refs.fetch_add(1, Ordering::Relaxed) };
        if old > isize::MAX as usize {
            // As `Arc`: only reachable by leaking counts (`mem::forget`) in a loop.
            std::process::abort();
        }
    }

    /// Gives up one count on `this`; the last count frees it.
    ///
    /// # Safety
    /// The caller owns a count of `this` and does not use `this` afterwards.
    #[inline]
    unsafe fn release(this: *const Self) {
        // SAFETY: the caller's count keeps it alive until we give that count up.
        let refs = unsafe { &(*this).refs };
        // Acquire: pairs with the Release decrements below by the other owners. The
        // decrements form one chain of read-modify-writes, so reading 1 (the value the
        // last of them left) synchronizes with every one, and all their uses of the entry
        // happen before the free. 1 means ours is the only count, and no other can appear:
        // a count is taken only from a live owner (there is none but us) or from a slot
        // read under a guard, and the slot's own count is released only after every guard
        // that could have read it is gone. So the entry is ours alone and freeing it needs
        // no read-modify-write: the common case, an entry no subscriber took a count on,
        // costs one load instead of two locked decrements (`Arc`'s strong and weak).
        #[cfg(not(herald_mutant = "relaxed_release"))]
        let (load, decrement) = (Ordering::Acquire, Ordering::Release);
        // Deliberate bug for loom-tests/mutants.sh: the count no longer carries the other
        // owners' uses of the entry to the one that frees it.
        #[cfg(herald_mutant = "relaxed_release")]
        let (load, decrement) = (Ordering::Relaxed, Ordering::Relaxed);
        if refs.load(load) != 1 {
            // Release: pairs with the Acquire load above or the fence below, in whichever
            // owner frees the entry.
            if refs.fetch_sub(1, decrement) != 1 {
                return;
            }
            // Acquire: pairs with the Release decrements of the other owners, as above.
            #[cfg(not(herald_mutant = "relaxed_release"))]
            fence(Ordering::Acquire);
        }
        // SAFETY: the last count: made by `Entry::new` from a `Box` (or written into the
        // memory of one by `Shared::entry`), unreachable from any slot, cell or owner.
        drop(unsafe { Box::from_raw(this as *mut Self) });
    }

    /// The global sequence number (0 is the first value ever published).
    #[inline]
    pub fn seq(&self) -> u64 {
        // Relaxed: written before the Release swap / store that made this entry reachable,
        // which the reader's Acquire load of the pointer pairs with.
        self.seq.load(Ordering::Relaxed)
    }

    /// The value.
    #[inline]
    pub fn value(&self) -> &T {
        &self.value
    }
}

impl<T: Send + Sync + 'static> sync::Release for Entry<T> {
    unsafe fn release(this: *const Self) {
        // SAFETY: the reclaimer's contract is this one's.
        unsafe { Entry::release(this) }
    }

    unsafe fn reclaim(this: *const Self) -> bool {
        // SAFETY: the caller's count keeps it alive until we give that count up.
        let refs = unsafe { &(*this).refs };
        // Acquire: as in `Entry::release`, pairs with the other owners' Release
        // decrements; 1 means the caller's count is the only one and, since the entry is
        // unreachable and its grace period over, no other can appear.
        #[cfg(not(herald_mutant = "relaxed_reclaim"))]
        let load = Ordering::Acquire;
        // Deliberate bug for loom-tests/mutants.sh: the last other owner's reads of the
        // entry need not happen before we drop its value and write a new one in its place.
        #[cfg(herald_mutant = "relaxed_reclaim")]
        let load = Ordering::Relaxed;
        if refs.load(load) != 1 {
            // SAFETY: the caller's count, given up.
            unsafe { Entry::release(this) };
            return false;
        }
        // SAFETY: ours alone (above); dropping in place leaves the `Box` allocation to
        // the caller, as the trait says.
        unsafe { ptr::drop_in_place(this as *mut Self) };
        true
    }
}

/// An owned reference to an [`Entry`], what the owning receives (`try_recv`, `recv`,
/// `recv_many`, ...) hand out: like an `Arc<Entry<T>>` with a single count and no weak
/// count. Cloning takes a count on the shared entry, dropping gives it up, and the last
/// owner frees the entry. Derefs to the [`Entry`] (and from there to the value).
pub struct EntryRef<T> {
    /// Owns one count of the entry.
    ptr: NonNull<Entry<T>>,
    _owns: PhantomData<Entry<T>>,
}

// SAFETY: as `Arc<Entry<T>>`: the entry is shared between threads and dropped on whichever
// releases the last count, which `T: Send + Sync` makes sound.
unsafe impl<T: Send + Sync> Send for EntryRef<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for EntryRef<T> {}

impl<T> EntryRef<T> {
    /// Wraps a count the caller owns.
    ///
    /// # Safety
    /// The caller owns a count of `ptr` and hands it over.
    unsafe fn from_owned(ptr: NonNull<Entry<T>>) -> Self {
        Self {
            ptr,
            _owns: PhantomData,
        }
    }

    /// Whether `a` and `b` refer to the same entry (as `Arc::ptr_eq`).
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        a.ptr == b.ptr
    }

    /// How many owners the entry has now: the ring's slot and startup cell while they hold
    /// it, and every `EntryRef`. Another thread may change it at any moment; for tests and
    /// diagnostics (as `Arc::strong_count`).
    pub fn ref_count(this: &Self) -> usize {
        // Relaxed: a snapshot, as `Arc::strong_count`.
        this.refs.load(Ordering::Relaxed)
    }
}

impl<T> Clone for EntryRef<T> {
    fn clone(&self) -> Self {
        share(self)
    }
}

impl<T> Drop for EntryRef<T> {
    fn drop(&mut self) {
        // SAFETY: we own a count and this is its last use.
        unsafe { Entry::release(self.ptr.as_ptr()) }
    }
}

impl<T> std::ops::Deref for EntryRef<T> {
    type Target = Entry<T>;
    fn deref(&self) -> &Entry<T> {
        // SAFETY: our count keeps the entry alive while `self` is borrowed.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: fmt::Debug> fmt::Debug for EntryRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T> std::ops::Deref for Entry<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Entry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("seq", &self.seq())
            .field("value", &self.value)
            .finish()
    }
}

/// Why [`Subscriber::try_recv`] returned no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing to read yet.
    Empty,
    /// `missed` values were skipped for this subscriber; the next value it receives has
    /// sequence number `resume_seq`.
    Lagged { missed: u64, resume_seq: u64 },
    /// Every publisher is gone and everything was read.
    Closed,
}

/// Why [`Subscriber::recv`] returned no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// As [`TryRecvError::Lagged`]. The subscriber continues at `resume_seq`.
    Lagged { missed: u64, resume_seq: u64 },
    /// Every publisher is gone and everything was read.
    Closed,
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("no value ready"),
            TryRecvError::Lagged { missed, resume_seq } => {
                write!(
                    f,
                    "lagged: missed {missed} values, resuming at {resume_seq}"
                )
            }
            TryRecvError::Closed => f.write_str("ring closed"),
        }
    }
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Lagged { missed, resume_seq } => {
                write!(
                    f,
                    "lagged: missed {missed} values, resuming at {resume_seq}"
                )
            }
            RecvError::Closed => f.write_str("ring closed"),
        }
    }
}

impl std::error::Error for TryRecvError {}
impl std::error::Error for RecvError {}

/// A point-in-time snapshot of a ring's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingStats {
    /// Values published so far (the next sequence number).
    pub published: u64,
    /// Live [`Subscriber`]s.
    pub subscribers: usize,
    /// Sum of every `missed` reported to any subscriber.
    pub lagged: u64,
    /// Startup events kept for replay (so far, if not sealed yet).
    pub startup_len: u64,
    /// Startup events published beyond `startup_capacity` and not kept.
    pub startup_dropped: u64,
    /// Whether [`Publisher::seal_startup`] has run.
    pub sealed: bool,
    /// Slots in the ring.
    pub capacity: usize,
}

/// State shared by every handle of one ring.
struct Shared<T> {
    /// Next sequence number | `SEALED` | `CLOSED`. The only word publishers contend on.
    tail: CachePadded<AtomicU64>,
    /// `capacity` slots; slot `i` holds null or an entry (owning one count) whose seq is
    /// `≡ i (mod capacity)`. Its seq grows, except for the moment a publisher lapped before
    /// its swap puts its older entry in and takes the newer one out to put back (`install`).
    slots: Box<[AtomicPtr<Entry<T>>]>,
    /// `capacity - 1`.
    mask: u64,
    /// Write-once cells: `startup[s]` is null or the entry of startup event `s`.
    startup: Box<[AtomicPtr<Entry<T>>]>,
    /// `UNSEALED`, or the seal point stored by the one call that set `SEALED`.
    seal_point: AtomicU64,
    /// Parked subscribers.
    waiters: CachePadded<WaitStack>,
    /// Live `Publisher` handles.
    publishers: AtomicUsize,
    /// Live `Subscriber`s (statistics, and the threshold of the wait stack's sweep).
    subscribers: AtomicUsize,
    /// Sum of reported `missed` (statistics only).
    lagged: AtomicU64,
    reclaim: Reclaimer,
}

// SAFETY: the raw pointers each own a count of their entry, which is shared across threads
// as an `EntryRef` is; `T: Send + Sync` makes that sound.
unsafe impl<T: Send + Sync> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for Shared<T> {}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // `&mut self`: no other handle exists, no guard is alive.
        for cell in self.slots.iter().chain(self.startup.iter()) {
            // Relaxed: exclusive access.
            let p = cell.load(Ordering::Relaxed);
            if !p.is_null() {
                // SAFETY: every non-null cell owns one count, given up here.
                unsafe { Entry::release(p) };
            }
        }
    }
}

/// Creates a ring and returns its first publisher.
///
/// # Panics
///
/// If `config.capacity` rounded up to a power of two does not fit in a `usize`, or the
/// slots or startup cells (one pointer each) cannot be allocated, as `Vec` would.
pub fn ring<T: Send + Sync + 'static>(config: RingConfig) -> Publisher<T> {
    let capacity = config
        .capacity
        .max(2)
        .checked_next_power_of_two()
        .unwrap_or_else(|| panic!("ring capacity {} is too large", config.capacity));
    let cells = |n: usize| {
        (0..n)
            .map(|_| AtomicPtr::new(ptr::null_mut()))
            .collect::<Vec<_>>()
            .into_boxed_slice()
    };
    Publisher {
        shared: Arc::new(Shared {
            tail: CachePadded::new(AtomicU64::new(0)),
            slots: cells(capacity),
            mask: capacity as u64 - 1,
            startup: cells(config.startup_capacity),
            seal_point: AtomicU64::new(UNSEALED),
            waiters: CachePadded::new(WaitStack::new()),
            publishers: AtomicUsize::new(1),
            subscribers: AtomicUsize::new(0),
            lagged: AtomicU64::new(0),
            reclaim: Reclaimer::new(),
        }),
    }
}

impl<T: Send + Sync + 'static> Shared<T> {
    /// A new entry holding `value`, with one count (the caller's): in the memory of an
    /// entry this thread retired earlier if the reclaimer has one ready, else allocated.
    #[inline]
    fn entry(&self, value: T) -> NonNull<Entry<T>> {
        match self.reclaim.reuse::<Entry<T>>() {
            Some(memory) => {
                // SAFETY: `reuse` hands us uninitialised memory for an `Entry<T>`,
                // allocated as a `Box`, that nobody else can reach.
                unsafe { memory.as_ptr().write(Entry::fresh(value)) };
                memory
            }
            None => Entry::new(value),
        }
    }

    /// Claims a sequence number for `entry`, records it in the startup segment if the
    /// segment was open, installs it in its slot and wakes parked subscribers.
    #[inline]
    fn publish(&self, entry: NonNull<Entry<T>>) -> u64 {
        // AcqRel, pairing with the seal's AcqRel fetch_or, though what the protocol rests on
        // is atomicity: the claim and the seal are read-modify-writes of one word, so a
        // claim after the seal in `tail`'s modification order sees SEALED whatever the
        // ordering. The entry itself is published by the slot swap (and the startup
        // cell's store), not by this. (On x86 every ordering is the same `lock xadd`.)
        let prev = self.tail.fetch_add(1, Ordering::AcqRel);
        let seq = prev & SEQ_MASK;
        debug_assert!(prev & CLOSED == 0, "publish on a closed ring");
        // SAFETY: we own `entry`'s count and nobody else can reach it yet.
        let e = unsafe { entry.as_ref() };
        // Relaxed: published by the Release store / swap below that makes `entry` reachable.
        e.seq.store(seq, Ordering::Relaxed);

        #[cfg(not(herald_mutant = "seal_ignored"))]
        let startup_open = prev & SEALED == 0;
        #[cfg(herald_mutant = "seal_ignored")]
        let startup_open = true;
        // Compared as u64: `seq as usize` would wrap on a 32-bit target.
        if startup_open && seq < self.startup.len() as u64 {
            // The cell's own count. SAFETY: we own a count.
            unsafe { Entry::acquire(entry.as_ptr()) };
            // Release: pairs with the Acquire load in `Position::next_replay`. SeqCst: a
            // subscriber parked on this cell (its replay found it null) re-reads it after
            // its SeqCst fence, and only a SeqCst store is sure to be seen there once our
            // `waiters` load in `notify` missed its push (module docs, "Wakeups"). Startup
            // events only, so the cost is bounded.
            self.startup[seq as usize].store(entry.as_ptr(), Ordering::SeqCst);
        }

        self.install(seq, entry.as_ptr());
        self.notify();
        seq
    }

    /// Puts `new` (which owns a count and has sequence number `seq`) into its slot.
    ///
    /// A `swap` rather than a compare-and-swap: the publisher never reads an entry it does
    /// not own, so it needs no epoch guard. What comes out of the slot is ours. Normally it
    /// is the previous lap, which we retire. If it is *newer* (we were lapped between our
    /// claim and this swap), we put it back and take out what is there now, until what
    /// comes out is older than what went in. Each round the entry we hold has a larger
    /// sequence number, so the loop ends, and the newest entry always ends up in the slot.
    /// Meanwhile a reader may briefly see our older entry: at its own cursor it delivers
    /// it (in order), below its cursor it waits and is woken by our `notify`.
    #[inline]
    fn install(&self, seq: u64, new: *mut Entry<T>) {
        let slot = &self.slots[(seq & self.mask) as usize];
        let (mut holding, mut holding_seq) = (new, seq);
        loop {
            // SeqCst: Release pairs with readers' Acquire load of the slot (they see the
            // entry's fields); Acquire pairs with the swap that installed what we take
            // out (we read its seq); SeqCst puts the write in the single total order with
            // the `waiters` load in `notify` and a parking subscriber's fence (module docs,
            // "Wakeups").
            #[cfg(not(herald_mutant = "relaxed_publish"))]
            let order = Ordering::SeqCst;
            #[cfg(herald_mutant = "relaxed_publish")]
            let order = Ordering::Relaxed;
            let out = slot.swap(holding, order);
            if out.is_null() {
                return;
            }
            // SAFETY: the swap moved the slot's count of `out` to us; it stays alive at
            // least until we give that count up.
            let out_seq = unsafe { (*out).seq() };
            if out_seq < holding_seq {
                #[cfg(not(herald_mutant = "eager_free"))]
                {
                    // SAFETY: we own `out`'s count and it is no longer reachable from the
                    // slot; readers that loaded it earlier hold an epoch guard.
                    unsafe { self.reclaim.retire(out as *const Entry<T>) };
                }
                // Deliberate bug for loom-tests/mutants.sh: releases `out` at once,
                // ignoring readers that loaded it just before the swap.
                #[cfg(herald_mutant = "eager_free")]
                {
                    // SAFETY: none; this is the use-after-free the models must catch.
                    unsafe { Entry::release(out) };
                }
                return;
            }
            // Lapped: `out` is newer than what we just put in. Put it back.
            (holding, holding_seq) = (out, out_seq);
        }
    }

    /// Wakes parked subscribers, if any. One `SeqCst` load when nobody is parked.
    #[inline]
    fn notify(&self) {
        sync::loom_seqcst_fence();
        // `is_empty` is a SeqCst load: pairs with the fence of a parking subscriber.
        if !self.waiters.is_empty() {
            self.waiters.wake_all();
        }
    }

    fn seal(&self) -> u64 {
        // AcqRel: pairs with publishers' fetch_add; the claims before this in `tail`'s
        // modification order are exactly the startup events.
        let prev = self.tail.fetch_or(SEALED, Ordering::AcqRel);
        if prev & SEALED == 0 {
            let point = prev & SEQ_MASK;
            // Release: pairs with the Acquire load in `seal_point()`.
            self.seal_point.store(point, Ordering::Release);
            point
        } else {
            self.seal_point()
        }
    }

    /// The seal point, once `SEALED` has been seen. The sealing call stores it right after
    /// setting the bit; in that short window this yields to it.
    fn seal_point(&self) -> u64 {
        loop {
            // Acquire: pairs with the Release store in `seal`.
            let point = self.seal_point.load(Ordering::Acquire);
            if point != UNSEALED {
                return point;
            }
            thread::yield_now();
        }
    }

    // An associated function, not a `self: &Arc<Self>` method: under `herald_loom`
    // `Arc` is loom's, which cannot be a receiver type.
    fn subscriber(this: &Arc<Self>, from: Option<u64>) -> Subscriber<T> {
        // Acquire: pairs with publishers' fetch_add and the seal's fetch_or.
        let tail = this.tail.load(Ordering::Acquire);
        let join = tail & SEQ_MASK;
        let boundary = if tail & SEALED != 0 {
            this.seal_point()
        } else {
            join
        };
        let kept = boundary.min(this.startup.len() as u64);
        let (replay_next, pending_missed, cursor) = match from {
            // Replay everything kept, report what was not, then live from the join point.
            None => (0, boundary - kept, join),
            // Everything retained from `seq` on: the ring itself reports what it no
            // longer holds when the cursor is read.
            Some(seq) => (seq.min(kept), 0, seq.max(kept)),
        };
        // Relaxed: statistics only.
        this.subscribers.fetch_add(1, Ordering::Relaxed);
        Subscriber {
            shared: this.clone(),
            pos: Position {
                replay_next,
                replay_end: kept,
                pending_missed,
                cursor,
                last_resume: NEVER_LAPPED,
            },
            node: Arc::new(WaitNode::new()),
            thread_waker: None,
            yielded_at: u64::MAX,
            join_point: join,
        }
    }

    /// Counts a lag the moment it is handed to the caller.
    fn reported(&self, e: TryRecvError) -> TryRecvError {
        if let TryRecvError::Lagged { missed, .. } = e {
            // Relaxed: statistics only.
            self.lagged.fetch_add(missed, Ordering::Relaxed);
        }
        e
    }

    fn stats(&self) -> RingStats {
        // Acquire: pairs with publishers' fetch_add and the seal's fetch_or.
        let tail = self.tail.load(Ordering::Acquire);
        let sealed = tail & SEALED != 0;
        let boundary = if sealed {
            self.seal_point()
        } else {
            tail & SEQ_MASK
        };
        let kept = boundary.min(self.startup.len() as u64);
        RingStats {
            published: tail & SEQ_MASK,
            // Relaxed: statistics only.
            subscribers: self.subscribers.load(Ordering::Relaxed),
            // Relaxed: statistics only.
            lagged: self.lagged.load(Ordering::Relaxed),
            startup_len: kept,
            startup_dropped: boundary - kept,
            sealed,
            capacity: self.slots.len(),
        }
    }
}

/// The publishing side of a ring. Cloning it makes another publisher; when the last one is
/// dropped the ring closes.
pub struct Publisher<T: Send + Sync + 'static> {
    shared: Arc<Shared<T>>,
}

impl<T: Send + Sync + 'static> Publisher<T> {
    /// Publishes `value` and returns its sequence number. Lock-free: never waits for a
    /// subscriber; wakes parked subscribers, if any.
    ///
    /// # Panics
    ///
    /// If a parked subscriber's `Waker` panics (a bug in its executor): the panic reaches
    /// the caller after `value` is published and every other parked subscriber is woken.
    #[inline]
    pub fn publish(&self, value: T) -> u64 {
        self.shared.publish(self.shared.entry(value))
    }

    /// As [`publish`](Self::publish), and then calls `observe` on the publishing thread
    /// with the shared entry (already visible to subscribers; `observe` may clone the
    /// [`EntryRef`] to keep it). Costs one extra reference count on the entry.
    #[inline]
    pub fn publish_observed(&self, value: T, observe: impl FnOnce(&EntryRef<T>)) -> u64 {
        let entry = self.shared.entry(value);
        // SAFETY: `entry` gave us its count, which keeps it alive here.
        let observed = share(unsafe { entry.as_ref() });
        let seq = self.shared.publish(entry);
        observe(&observed);
        seq
    }

    /// Frees, once no subscriber can still be reading them, the overwritten entries (and
    /// their values) that this thread keeps for reuse by its next publishes.
    ///
    /// A thread that publishes fast keeps about 10,000 of them after a burst (a publish
    /// reuses one and retires one, so the count stays); one that publishes slowly trims
    /// them to a few hundred as it goes. A thread that stops publishing keeps them until a
    /// `Publisher` is dropped on it or it exits: call this on a thread that published a
    /// burst (a replay, a catch-up) and will not publish again for a long time. The next
    /// publishes on this thread allocate until the cache refills. Cheap when the cache is
    /// empty.
    pub fn release_retired(&self) {
        sync::flush_retired();
    }

    /// Closes the startup segment in one atomic step and returns the seal point: the number
    /// of events published before it. Idempotent; every call returns the same point.
    pub fn seal_startup(&self) -> u64 {
        self.shared.seal()
    }

    /// A subscriber that replays the startup segment, then reads live values from now on.
    pub fn subscribe(&self) -> Subscriber<T> {
        Shared::subscriber(&self.shared, None)
    }

    /// A subscriber that receives every still-retained value with sequence `>= seq`
    /// (startup segment included), then live values. Values no longer retained are
    /// reported with one `Lagged` first.
    pub fn subscribe_from(&self, seq: u64) -> Subscriber<T> {
        Shared::subscriber(&self.shared, Some(seq))
    }

    /// A handle that can subscribe and read statistics but does not keep the ring open.
    pub fn tap(&self) -> Tap<T> {
        Tap {
            shared: self.shared.clone(),
        }
    }

    /// Current counters.
    pub fn stats(&self) -> RingStats {
        self.shared.stats()
    }
}

impl<T: Send + Sync + 'static> Clone for Publisher<T> {
    fn clone(&self) -> Self {
        // Relaxed: an existing publisher keeps the count above zero; nothing is published
        // by this increment (as in `Arc::clone`).
        self.shared.publishers.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> Drop for Publisher<T> {
    fn drop(&mut self) {
        // Entries this thread overwrote wait in its limbo for reuse (see `sync`); hand
        // them to the collector now rather than keep their values until this thread
        // publishes again or exits.
        sync::flush_retired();
        // AcqRel: the last publisher acquires every other publisher's release, so all
        // their slot writes happen before the CLOSED flag below.
        if self.shared.publishers.fetch_sub(1, Ordering::AcqRel) == 1 {
            // SeqCst: Release pairs with subscribers' Acquire loads of `tail` (everything
            // published is visible once CLOSED is); SeqCst for the wakeup protocol, as the
            // slot swap in `install`.
            self.shared.tail.fetch_or(CLOSED, Ordering::SeqCst);
            self.shared.notify();
        }
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Subscribes without publishing: holding a `Tap` does not keep the ring open.
pub struct Tap<T: Send + Sync + 'static> {
    shared: Arc<Shared<T>>,
}

impl<T: Send + Sync + 'static> Clone for Tap<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> Tap<T> {
    /// As [`Publisher::subscribe`].
    pub fn subscribe(&self) -> Subscriber<T> {
        Shared::subscriber(&self.shared, None)
    }

    /// As [`Publisher::subscribe_from`].
    pub fn subscribe_from(&self, seq: u64) -> Subscriber<T> {
        Shared::subscriber(&self.shared, Some(seq))
    }

    /// Current counters.
    pub fn stats(&self) -> RingStats {
        self.shared.stats()
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for Tap<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tap").field("stats", &self.stats()).finish()
    }
}

/// One reader of the ring with its own cursor. Replays the startup segment, then reads
/// live values.
pub struct Subscriber<T: Send + Sync + 'static> {
    shared: Arc<Shared<T>>,
    /// Where this subscriber is in the sequence.
    pos: Position,
    /// Where publishers find this subscriber's waker.
    node: Arc<WaitNode>,
    /// The waker `recv_blocking` last parked with, and its thread: reused while the
    /// subscriber stays on that thread, so parking allocates nothing.
    thread_waker: Option<(thread::ThreadId, Waker)>,
    /// The cursor at which an async receive last yielded instead of parking (`u64::MAX`
    /// before the first): it yields once per cursor position, then parks.
    yielded_at: u64,
    /// The next sequence number when this subscriber was created: values from here on
    /// were published after it joined.
    join_point: u64,
}

/// A subscriber's place in the sequence space, kept apart from its `shared` handle so an
/// epoch guard can borrow the ring while the position is updated.
#[derive(Debug, Clone, Copy)]
struct Position {
    /// Next startup cell to replay; replay is done when it reaches `replay_end`.
    replay_next: u64,
    /// End of the part of the startup segment this subscriber replays.
    replay_end: u64,
    /// Values skipped and not yet reported; reported (with `resume_seq == cursor`) before
    /// the next live value.
    pending_missed: u64,
    /// Next live sequence number to read from the ring.
    cursor: u64,
    /// Where the last lap moved `cursor` to ([`NEVER_LAPPED`] before the first): a
    /// subscriber lapped again less than half a ring past it resumes with headroom.
    last_resume: u64,
}

/// `Position::last_resume` of a subscriber never lapped.
const NEVER_LAPPED: u64 = u64::MAX;

impl<T: Send + Sync + 'static> Subscriber<T> {
    /// The next value, without waiting.
    pub fn try_recv(&mut self) -> Result<EntryRef<T>, TryRecvError> {
        self.try_recv_with(share)
    }

    /// The next value, lent to `f` without taking a reference count on it, without
    /// waiting. Returns what `f` returns.
    ///
    /// Every subscriber of a value shares one [`Entry`]; [`try_recv`](Self::try_recv)
    /// increments its reference count (and the caller later decrements it), which makes
    /// the entry's cache line travel between the cores of all its readers. A subscriber
    /// that only needs to look at the value (copy a field, clone a `Bytes` out of it)
    /// reads it here in place, writing nothing the other subscribers read.
    ///
    /// `f` runs while this thread holds an epoch guard: keep it short (no blocking, no
    /// waiting on other threads), since no retired entry of any ring in the process can be
    /// freed until it returns. If `f` panics, the value counts as received.
    pub fn try_recv_with<R>(&mut self, f: impl FnOnce(&Entry<T>) -> R) -> Result<R, TryRecvError> {
        let guard = self.shared.reclaim.pin();
        match self.pos.next(&self.shared, &guard) {
            Ok(entry) => Ok(f(entry)),
            Err(e) => Err(self.shared.reported(e)),
        }
    }

    /// Appends up to `max` ready values to `out` under one epoch guard. Returns how many it
    /// appended (at least one; 0 only when `max` is 0), or an error when none was ready. A
    /// lag found after some values is reported by the next call.
    pub fn try_recv_many(
        &mut self,
        out: &mut Vec<EntryRef<T>>,
        max: usize,
    ) -> Result<usize, TryRecvError> {
        self.try_recv_each(max, |entry| out.push(share(entry)))
    }

    /// Lends up to `max` ready values to `f`, in order, under one epoch guard and without
    /// taking reference counts (see [`try_recv_with`](Self::try_recv_with), also for what
    /// `f` may do). Returns how many it lent (at least one; 0 only when `max` is 0), or an
    /// error when none was ready. A lag found after some values is reported by the next
    /// call.
    ///
    /// ```
    /// use herald_core::ring::{self, RingConfig, TryRecvError};
    ///
    /// let publisher = ring::ring::<u32>(RingConfig { capacity: 8, startup_capacity: 0 });
    /// let mut sub = publisher.subscribe();
    /// for v in [10, 20, 30] { publisher.publish(v); }
    /// let mut sum = 0;
    /// assert_eq!(sub.try_recv_each(2, |entry| sum += **entry), Ok(2));
    /// assert_eq!(sub.try_recv_each(2, |entry| sum += **entry), Ok(1));
    /// assert_eq!(sum, 60);
    /// assert_eq!(sub.try_recv_each(2, |_| {}), Err(TryRecvError::Empty));
    /// ```
    pub fn try_recv_each(
        &mut self,
        max: usize,
        mut f: impl FnMut(&Entry<T>),
    ) -> Result<usize, TryRecvError> {
        let guard = self.shared.reclaim.pin();
        let n = self.pos.fill(&self.shared, &guard, max, &mut f);
        if n > 0 || max == 0 {
            return Ok(n);
        }
        match self.pos.next(&self.shared, &guard) {
            Ok(entry) => {
                f(entry);
                Ok(1)
            }
            Err(e) => Err(self.shared.reported(e)),
        }
    }

    /// The next value, lent to `f` (see [`try_recv_with`](Self::try_recv_with)), waiting
    /// (without spinning) until there is one. `f` runs inside the future's `poll`, once.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use herald_core::ring::{self, RingConfig};
    ///
    /// let publisher = ring::ring::<String>(RingConfig { capacity: 8, startup_capacity: 0 });
    /// let mut sub = publisher.subscribe();
    /// publisher.publish("block-added".to_string());
    /// let len = sub.recv_with(|entry| entry.len()).await;
    /// assert_eq!(len, Ok(11));
    /// # });
    /// ```
    pub fn recv_with<R, F: FnOnce(&Entry<T>) -> R>(&mut self, f: F) -> RecvWith<'_, T, F> {
        RecvWith {
            sub: self,
            f: Some(f),
        }
    }

    /// Waits (without spinning) for at least one value, then lends up to `max` ready ones
    /// to `f` (see [`try_recv_each`](Self::try_recv_each)). Returns how many it lent; a
    /// `max` of 0 is taken as 1.
    pub fn recv_each<F: FnMut(&Entry<T>)>(&mut self, max: usize, f: F) -> RecvEach<'_, T, F> {
        RecvEach { sub: self, max, f }
    }

    /// Lends the next value to the closure in `f`, taking it out only if there is a value.
    fn try_lend<R, F: FnOnce(&Entry<T>) -> R>(
        &mut self,
        f: &mut Option<F>,
    ) -> Result<R, TryRecvError> {
        let guard = self.shared.reclaim.pin();
        match self.pos.next(&self.shared, &guard) {
            Ok(entry) => Ok((f.take().expect("`RecvWith` polled after it completed"))(
                entry,
            )),
            Err(e) => Err(self.shared.reported(e)),
        }
    }

    /// Waits (without spinning) until a value, a lag or the close is ready, so that the next
    /// `try_recv*` call on this subscriber does not return [`TryRecvError::Empty`] (with one
    /// exception: a publisher lapped between its claim and its swap may put its older entry
    /// back into the slot for a moment, and a lag seen then can read as `Empty` again;
    /// nothing is lost, the next `ready` waits again). Consumes nothing, so it is
    /// cancel-safe. Useful with `tokio::select!`, where the code that handles the values
    /// needs borrows the waiting future must not hold:
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use herald_core::ring::{self, RingConfig};
    ///
    /// let publisher = ring::ring::<u32>(RingConfig { capacity: 8, startup_capacity: 0 });
    /// let mut sub = publisher.subscribe();
    /// let mut seen = Vec::new();
    /// publisher.publish(7);
    /// sub.ready().await;
    /// sub.try_recv_each(64, |entry| seen.push(**entry)).unwrap();
    /// assert_eq!(seen, [7]);
    /// # });
    /// ```
    pub fn ready(&mut self) -> Ready<'_, T> {
        Ready { sub: self }
    }

    /// Whether a value, a lag or the close is ready (see [`ready`](Self::ready)).
    fn is_ready(&self) -> bool {
        let guard = self.shared.reclaim.pin();
        self.pos.is_ready(&self.shared, &guard)
    }

    /// The next value, waiting (without spinning) until there is one.
    pub fn recv(&mut self) -> Recv<'_, T> {
        Recv { sub: self }
    }

    /// Waits for at least one value, then appends up to `max` ready ones to `out`.
    pub fn recv_many<'a>(
        &'a mut self,
        out: &'a mut Vec<EntryRef<T>>,
        max: usize,
    ) -> RecvMany<'a, T> {
        RecvMany {
            sub: self,
            out,
            max,
        }
    }

    /// The next value, parking the calling thread until there is one. For plain threads;
    /// inside an async runtime use [`recv`](Self::recv).
    ///
    /// While publishers are busy the next value usually comes within microseconds, so an
    /// empty ring is looked at again a few times first (spinning, then yielding the CPU:
    /// crossbeam's `Backoff`, about ten looks) before the thread registers a waker and
    /// parks, which costs a publisher a futex wake.
    pub fn recv_blocking(&mut self) -> Result<EntryRef<T>, RecvError> {
        // Not under loom: its models check the parking path below; the extra looks are
        // plain `try_recv`s, and loom cannot see `Backoff`'s spins and yields.
        #[cfg(not(herald_loom))]
        let backoff = crossbeam_utils::Backoff::new();
        loop {
            match self.try_recv() {
                Ok(entry) => return Ok(entry),
                Err(TryRecvError::Lagged { missed, resume_seq }) => {
                    return Err(RecvError::Lagged { missed, resume_seq });
                }
                Err(TryRecvError::Closed) => return Err(RecvError::Closed),
                Err(TryRecvError::Empty) => {}
            }
            #[cfg(not(herald_loom))]
            if !backoff.is_completed() {
                backoff.snooze();
                continue;
            }
            let me = thread::current();
            let waker = match &self.thread_waker {
                Some((id, waker)) if *id == me.id() => waker.clone(),
                _ => {
                    let id = me.id();
                    let waker = Waker::from(std::sync::Arc::new(ThreadWaker(me)));
                    self.thread_waker = Some((id, waker.clone()));
                    waker
                }
            };
            match self.park(&waker) {
                Some(Ok(entry)) => return Ok(entry),
                Some(Err(TryRecvError::Lagged { missed, resume_seq })) => {
                    return Err(RecvError::Lagged { missed, resume_seq });
                }
                Some(Err(_)) => return Err(RecvError::Closed),
                None => thread::park(),
            }
        }
    }

    /// Called by an async receive that found nothing, before it parks: the first time at
    /// this cursor position it wakes its own task and says so (the caller returns
    /// `Pending` without parking); after that it says park. The executor runs its other
    /// ready tasks first, publishers meanwhile publish more, and the look that follows
    /// finds a batch where parking would have cost the publisher a wakeup per value
    /// (module docs, "Wakeups").
    ///
    /// Compiled out under loom: a yield touches no shared state (a wake of our own task
    /// and a `Pending`), so it adds no state the protocol could get wrong, while every
    /// extra poll multiplies the interleavings the models explore (m5: 156,319 executions
    /// without it, 771,298 with it).
    fn yield_first(&mut self, cx: &mut Context<'_>) -> bool {
        if cfg!(herald_loom) || self.yielded_at == self.pos.cursor {
            return false;
        }
        self.yielded_at = self.pos.cursor;
        cx.waker().wake_by_ref();
        true
    }

    /// Registers `waker`, then checks once more. `None`: still empty, safe to sleep.
    fn park(&mut self, waker: &Waker) -> Option<Result<EntryRef<T>, TryRecvError>> {
        self.park_then(waker, Self::try_recv)
    }

    /// Registers `waker`, then runs `recheck` once more and returns what it found, or
    /// `None` if it found nothing (`Empty`): then it is safe to sleep.
    fn park_then<R>(
        &mut self,
        waker: &Waker,
        recheck: impl FnOnce(&mut Self) -> Result<R, TryRecvError>,
    ) -> Option<Result<R, TryRecvError>> {
        self.node.waker.register(waker);
        self.shared.waiters.push(&self.node);
        // SeqCst: pairs with the publisher's SeqCst slot swap and SeqCst load of `waiters`
        // (module docs, "Wakeups").
        #[cfg(not(herald_mutant = "no_recheck"))]
        {
            sync::fence(Ordering::SeqCst);
            match recheck(self) {
                Err(TryRecvError::Empty) => None,
                other => Some(other),
            }
        }
        #[cfg(herald_mutant = "no_recheck")]
        {
            let _ = recheck;
            None
        }
    }

    /// The sequence number of the next live value this subscriber will read from the ring.
    pub fn cursor(&self) -> u64 {
        self.pos.cursor
    }

    /// Startup events still to replay.
    pub fn replay_remaining(&self) -> u64 {
        self.pos.replay_end - self.pos.replay_next
    }

    /// The next sequence number at the moment this subscriber was created: the values it
    /// reads from here on were published after it joined. Equal to the first
    /// [`cursor`](Self::cursor) of a [`subscribe`](Publisher::subscribe)d subscriber; for
    /// one made by [`subscribe_from`](Publisher::subscribe_from) it tells where catching
    /// up ends (and a `seq` past it asked for values not published yet).
    pub fn join_point(&self) -> u64 {
        self.join_point
    }

    /// Caps how far behind the publishers this subscriber may be: if more than
    /// `max_behind` values were claimed past its cursor, it skips ahead so that the newest
    /// `max_behind / 2` (at least one) are left to read, and returns how many it skipped.
    /// The skip is reported like a lap: the next receive returns
    /// [`TryRecvError::Lagged`] with the exact count and the new cursor as `resume_seq`.
    /// Returns 0, and does nothing, while the startup replay is unfinished, while a lag is
    /// still to be reported (a lap a batch stopped at, or startup events not kept), so
    /// that every reported lag is one cause, or when `max_behind` is 0.
    ///
    /// The ring's capacity bounds both how far back a subscriber can start
    /// ([`Publisher::subscribe_from`]) and how stale a slow one's values get; calling this
    /// before each batch keeps the second bound small without shrinking the first. It
    /// costs one load of the shared tail.
    ///
    /// ```
    /// use herald_core::ring::{self, RingConfig, TryRecvError};
    ///
    /// let publisher = ring::ring::<u32>(RingConfig { capacity: 64, startup_capacity: 0 });
    /// let mut sub = publisher.subscribe();
    /// for v in 0..20 { publisher.publish(v); }
    /// assert_eq!(sub.skip_behind(8), 16); // 20 behind, more than 8: keep the newest 4
    /// let told = TryRecvError::Lagged { missed: 16, resume_seq: 16 };
    /// assert_eq!(sub.try_recv().unwrap_err(), told);
    /// assert_eq!(**sub.try_recv().unwrap(), 16);
    /// assert_eq!(sub.skip_behind(8), 0); // 3 behind
    /// ```
    pub fn skip_behind(&mut self, max_behind: u64) -> u64 {
        if max_behind == 0 || self.replay_remaining() > 0 || self.pos.pending_missed > 0 {
            return 0;
        }
        // Acquire: pairs with publishers' fetch_add, as every reader of `tail` does; only
        // the count matters here (a skipped-to value not yet installed is waited for).
        let tail = self.shared.tail.load(Ordering::Acquire) & SEQ_MASK;
        let behind = tail.saturating_sub(self.pos.cursor);
        if behind <= max_behind {
            return 0;
        }
        let resume_seq = tail - (max_behind / 2).max(1);
        let skipped = resume_seq - self.pos.cursor;
        self.pos.cursor = resume_seq;
        self.pos.last_resume = resume_seq;
        self.pos.pending_missed += skipped;
        skipped
    }
}

impl Position {
    /// Lends up to `max` ready values to `f`; stops at the first non-value, keeping a lag
    /// for the next call (uncounted until then).
    fn fill<T: Send + Sync + 'static>(
        &mut self,
        shared: &Shared<T>,
        guard: &Guard<'_>,
        max: usize,
        f: &mut impl FnMut(&Entry<T>),
    ) -> usize {
        let mut n = 0;
        while n < max {
            match self.next(shared, guard) {
                Ok(entry) => {
                    f(entry);
                    n += 1;
                }
                Err(TryRecvError::Lagged { missed, .. }) => {
                    // Deliberate bug for loom-tests/mutants.sh: forgets a lag met mid-batch.
                    #[cfg(herald_mutant = "fill_forgets_lag")]
                    let missed = missed - missed;
                    // `cursor` already moved to the resume point; `next` reports it.
                    self.pending_missed += missed;
                    break;
                }
                Err(_) => break,
            }
        }
        n
    }

    /// Whether `next` would return something other than `Empty`: `next` itself, run on a
    /// copy of this position. `next` only reads the ring, so throwing the copy away undoes
    /// everything it did.
    fn is_ready<T: Send + Sync + 'static>(&self, shared: &Shared<T>, guard: &Guard<'_>) -> bool {
        let mut probe = *self;
        !matches!(probe.next(shared, guard), Err(TryRecvError::Empty))
    }

    /// The next value, borrowed: valid while `guard` is pinned (live values) or while the
    /// ring exists (startup values).
    fn next<'g, T: Send + Sync + 'static>(
        &mut self,
        shared: &'g Shared<T>,
        guard: &'g Guard<'_>,
    ) -> Result<&'g Entry<T>, TryRecvError> {
        if self.replay_next < self.replay_end {
            return self.next_replay(shared);
        }
        if self.pending_missed > 0 {
            let missed = std::mem::take(&mut self.pending_missed);
            return Err(TryRecvError::Lagged {
                missed,
                resume_seq: self.cursor,
            });
        }
        self.next_live(shared, guard)
    }

    fn next_replay<'g, T: Send + Sync + 'static>(
        &mut self,
        shared: &'g Shared<T>,
    ) -> Result<&'g Entry<T>, TryRecvError> {
        let cell = &shared.startup[self.replay_next as usize];
        // Acquire: pairs with the publisher's Release store into the startup cell.
        let p = cell.load(Ordering::Acquire);
        if p.is_null() {
            // Claimed before our join point but its publisher has not stored it yet; it
            // will, and will wake us.
            return Err(TryRecvError::Empty);
        }
        self.replay_next += 1;
        // SAFETY: startup cells are written once and own a strong count until the ring
        // (borrowed for 'g) is dropped.
        Ok(unsafe { &*p })
    }

    fn next_live<'g, T: Send + Sync + 'static>(
        &mut self,
        shared: &'g Shared<T>,
        _guard: &'g Guard<'_>,
    ) -> Result<&'g Entry<T>, TryRecvError> {
        let slot = &shared.slots[(self.cursor & shared.mask) as usize];
        loop {
            // Acquire: pairs with the publisher's SeqCst (Release) swap in `install`.
            let p = slot.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: `p` was reachable from the slot while `guard` is pinned, so even
                // if it is retired now it is not freed before `guard` is dropped.
                let seq = unsafe { (*p).seq() };
                if seq == self.cursor {
                    self.cursor += 1;
                    // SAFETY: as above: alive while the guard, borrowed for 'g, is pinned.
                    return Ok(unsafe { &*p });
                }
                if seq > self.cursor {
                    // Overwritten: skip to the oldest value that can still be retained, or
                    // half a ring past it if we were lapped again less than half a ring
                    // after the last lap (module docs, "Slots and stamps").
                    // Acquire, pairing with publishers' fetch_add; but `tail > seq` here is
                    // coherence: the slot load synchronized with the swap of `seq`'s entry,
                    // whose claim came before it, so this load reads that claim or later.
                    let tail = shared.tail.load(Ordering::Acquire) & SEQ_MASK;
                    let oldest = tail - shared.mask - 1;
                    let half = shared.mask / 2 + 1; // capacity / 2
                    let again =
                        self.last_resume != NEVER_LAPPED && self.cursor - self.last_resume < half;
                    let resume_seq = if again { oldest + half } else { oldest };
                    debug_assert!(resume_seq > self.cursor && resume_seq < tail);
                    let missed = resume_seq - self.cursor;
                    self.cursor = resume_seq;
                    self.last_resume = resume_seq;
                    return Err(TryRecvError::Lagged { missed, resume_seq });
                }
            }
            // Not written yet. Acquire: pairs with the last publisher's CLOSED fetch_or,
            // after which every publish is complete and visible.
            let tail = shared.tail.load(Ordering::Acquire);
            // Deliberate bug for loom-tests/mutants.sh: trusts CLOSED alone and drops the
            // values still to drain.
            #[cfg(herald_mutant = "close_no_drain")]
            if tail & CLOSED != 0 {
                return Err(TryRecvError::Closed);
            }
            if tail & CLOSED == 0 {
                return Err(TryRecvError::Empty);
            }
            if self.cursor >= tail & SEQ_MASK {
                return Err(TryRecvError::Closed);
            }
            // Closed with values left: the slot is written by now; read it again.
        }
    }
}

impl<T: Send + Sync + 'static> Drop for Subscriber<T> {
    fn drop(&mut self) {
        // Our node may still be on the `waiters` stack until the next publish; it must not
        // keep our (possibly large) task alive until then, only its own few bytes.
        self.node.waker.clear();
        // Relaxed: a count for statistics and the threshold below; nothing is published
        // through it.
        let live = self.shared.subscribers.fetch_sub(1, Ordering::Relaxed) - 1;
        // Left on the stack, our node waits for the next publish to be freed; with
        // connections coming and going on a quiet node those nodes pile up. Every
        // `max(STALE_SWEEP, live)` such drops, the dropping subscriber takes the stack
        // itself, as a publisher would: dead nodes are freed, parked subscribers get a
        // spurious wakeup (at most one per drop, amortized) and park again.
        if self.node.is_queued() && self.shared.waiters.note_stale(STALE_SWEEP.max(live)) {
            #[cfg(not(herald_mutant = "sweep_forgets_wake"))]
            self.shared.waiters.wake_all();
            // Deliberate bug for loom-tests/mutants.sh: takes the stack and frees the nodes
            // without waking the live subscribers among them.
            #[cfg(herald_mutant = "sweep_forgets_wake")]
            self.shared.waiters.take_all_without_waking();
        }
    }
}

impl<T: Send + Sync + 'static> fmt::Debug for Subscriber<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("cursor", &self.pos.cursor)
            .field("replay_remaining", &self.replay_remaining())
            .finish()
    }
}

/// A new count on `entry`, as an owned reference: for entries the ring lends out, for
/// clones of an `EntryRef`, and for the publisher's own.
fn share<T>(entry: &Entry<T>) -> EntryRef<T> {
    let p = NonNull::from(entry);
    // SAFETY: every entry was made by `Entry::new`, and some owner holds a count while the
    // borrow lasts (its slot or cell, under the lender's epoch guard; the `EntryRef`
    // cloned; the publisher's own); the new count is handed to the `EntryRef`.
    unsafe {
        Entry::acquire(p.as_ptr());
        EntryRef::from_owned(p)
    }
}

/// Wakes a thread parked in [`Subscriber::recv_blocking`].
struct ThreadWaker(thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// Future of [`Subscriber::recv`]. Cancel-safe: dropping it loses nothing.
pub struct Recv<'a, T: Send + Sync + 'static> {
    sub: &'a mut Subscriber<T>,
}

fn to_recv_error(e: TryRecvError) -> RecvError {
    match e {
        TryRecvError::Lagged { missed, resume_seq } => RecvError::Lagged { missed, resume_seq },
        _ => RecvError::Closed,
    }
}

impl<T: Send + Sync + 'static> Future for Recv<'_, T> {
    type Output = Result<EntryRef<T>, RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let sub = &mut *self.sub;
        match sub.try_recv() {
            Ok(entry) => return Poll::Ready(Ok(entry)),
            Err(TryRecvError::Empty) => {}
            Err(e) => return Poll::Ready(Err(to_recv_error(e))),
        }
        if sub.yield_first(cx) {
            return Poll::Pending;
        }
        match sub.park(cx.waker()) {
            None => Poll::Pending,
            Some(Ok(entry)) => Poll::Ready(Ok(entry)),
            Some(Err(e)) => Poll::Ready(Err(to_recv_error(e))),
        }
    }
}

/// Future of [`Subscriber::recv_many`]. Cancel-safe: dropping it loses nothing.
pub struct RecvMany<'a, T: Send + Sync + 'static> {
    sub: &'a mut Subscriber<T>,
    out: &'a mut Vec<EntryRef<T>>,
    max: usize,
}

impl<T: Send + Sync + 'static> Future for RecvMany<'_, T> {
    type Output = Result<usize, RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let max = this.max.max(1);
        match this.sub.try_recv_many(this.out, max) {
            Ok(n) => return Poll::Ready(Ok(n)),
            Err(TryRecvError::Empty) => {}
            Err(e) => return Poll::Ready(Err(to_recv_error(e))),
        }
        if this.sub.yield_first(cx) {
            return Poll::Pending;
        }
        match this.sub.park(cx.waker()) {
            None => Poll::Pending,
            Some(Ok(entry)) => {
                this.out.push(entry);
                let sub = &mut *this.sub;
                let guard = sub.shared.reclaim.pin();
                let out = &mut *this.out;
                let more = sub
                    .pos
                    .fill(&sub.shared, &guard, max - 1, &mut |e| out.push(share(e)));
                Poll::Ready(Ok(1 + more))
            }
            Some(Err(e)) => Poll::Ready(Err(to_recv_error(e))),
        }
    }
}

/// Future of [`Subscriber::ready`]. Cancel-safe: it consumes nothing.
pub struct Ready<'a, T: Send + Sync + 'static> {
    sub: &'a mut Subscriber<T>,
}

impl<T: Send + Sync + 'static> Future for Ready<'_, T> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let sub = &mut *self.sub;
        if sub.is_ready() {
            return Poll::Ready(());
        }
        if sub.yield_first(cx) {
            return Poll::Pending;
        }
        let ready = |sub: &mut Subscriber<T>| {
            if sub.is_ready() {
                Ok(())
            } else {
                Err(TryRecvError::Empty)
            }
        };
        match sub.park_then(cx.waker(), ready) {
            None => Poll::Pending,
            Some(_) => Poll::Ready(()),
        }
    }
}

/// Future of [`Subscriber::recv_with`]. Cancel-safe: dropping it loses nothing.
pub struct RecvWith<'a, T: Send + Sync + 'static, F> {
    sub: &'a mut Subscriber<T>,
    /// Taken when a value is lent.
    f: Option<F>,
}

// `f` is never pinned: it is moved out and called, never polled in place.
impl<T: Send + Sync + 'static, F> Unpin for RecvWith<'_, T, F> {}

impl<T: Send + Sync + 'static, R, F: FnOnce(&Entry<T>) -> R> Future for RecvWith<'_, T, F> {
    type Output = Result<R, RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match this.sub.try_lend(&mut this.f) {
            Ok(r) => return Poll::Ready(Ok(r)),
            Err(TryRecvError::Empty) => {}
            Err(e) => return Poll::Ready(Err(to_recv_error(e))),
        }
        if this.sub.yield_first(cx) {
            return Poll::Pending;
        }
        let f = &mut this.f;
        match this.sub.park_then(cx.waker(), |sub| sub.try_lend(f)) {
            None => Poll::Pending,
            Some(Ok(r)) => Poll::Ready(Ok(r)),
            Some(Err(e)) => Poll::Ready(Err(to_recv_error(e))),
        }
    }
}

/// Future of [`Subscriber::recv_each`]. Cancel-safe: dropping it loses nothing.
pub struct RecvEach<'a, T: Send + Sync + 'static, F> {
    sub: &'a mut Subscriber<T>,
    max: usize,
    f: F,
}

// `f` is never pinned: it is only called through `&mut`.
impl<T: Send + Sync + 'static, F> Unpin for RecvEach<'_, T, F> {}

impl<T: Send + Sync + 'static, F: FnMut(&Entry<T>)> Future for RecvEach<'_, T, F> {
    type Output = Result<usize, RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let max = this.max.max(1);
        match this.sub.try_recv_each(max, &mut this.f) {
            Ok(n) => return Poll::Ready(Ok(n)),
            Err(TryRecvError::Empty) => {}
            Err(e) => return Poll::Ready(Err(to_recv_error(e))),
        }
        if this.sub.yield_first(cx) {
            return Poll::Pending;
        }
        let f = &mut this.f;
        match this
            .sub
            .park_then(cx.waker(), |sub| sub.try_recv_each(max, &mut *f))
        {
            None => Poll::Pending,
            Some(Ok(n)) => Poll::Ready(Ok(n)),
            Some(Err(e)) => Poll::Ready(Err(to_recv_error(e))),
        }
    }
}

#[cfg(all(test, not(herald_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize as Count;

    /// Counts its wakeups.
    struct CountingWaker(Count);

    impl std::task::Wake for CountingWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            // SeqCst: a test counter, read on the test's thread after the wake; nothing
            // else is published through it.
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls a `recv` until it parks with `waker` (nothing to read): the first poll at a
    /// cursor position only yields, and wakes the waker it is given (a no-op one here).
    fn park<T: Send + Sync + 'static>(sub: &mut Subscriber<T>, waker: &Waker) {
        let mut recv = sub.recv();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut recv).poll(&mut cx).is_pending());
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut recv).poll(&mut cx).is_pending());
    }

    /// An 8-slot ring past its seal, and a waker that counts its wakeups.
    fn sealed_ring_and_counting_waker() -> (Publisher<u64>, std::sync::Arc<CountingWaker>, Waker) {
        let publisher = ring::<u64>(RingConfig {
            capacity: 8,
            startup_capacity: 0,
        });
        publisher.seal_startup();
        let wakes = std::sync::Arc::new(CountingWaker(Count::new(0)));
        let waker = Waker::from(wakes.clone());
        (publisher, wakes, waker)
    }

    #[test]
    fn an_async_receive_yields_once_per_position_before_it_parks() {
        let (publisher, wakes, waker) = sealed_ring_and_counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut sub = publisher.subscribe();
        // SeqCst: pairs with the counter's increments, made on this thread.
        let count = || wakes.0.load(Ordering::SeqCst);
        for round in 0..3u64 {
            let base = count();
            let mut recv = sub.recv();
            // Nothing to read: the first poll wakes its own task and does not park...
            assert!(Pin::new(&mut recv).poll(&mut cx).is_pending());
            assert_eq!((count(), publisher.shared.waiters.len()), (base + 1, 0));
            // ...the second, at the same position, parks; a publish wakes it.
            assert!(Pin::new(&mut recv).poll(&mut cx).is_pending());
            assert_eq!((count(), publisher.shared.waiters.len()), (base + 1, 1));
            publisher.publish(round);
            assert_eq!((count(), publisher.shared.waiters.len()), (base + 2, 0));
            match Pin::new(&mut recv).poll(&mut cx) {
                Poll::Ready(Ok(entry)) => assert_eq!(entry.seq(), 2 * round),
                other => panic!("expected a value, got {:?}", other.map(|r| r.is_ok())),
            }
            // A value ready when polled: returned at once, no yield.
            publisher.publish(round);
            let mut recv = sub.recv();
            assert!(matches!(
                Pin::new(&mut recv).poll(&mut cx),
                Poll::Ready(Ok(_))
            ));
            assert_eq!(count(), base + 2);
        }
    }

    /// A buggy waker.
    struct PanickingWaker;

    impl std::task::Wake for PanickingWaker {
        fn wake(self: std::sync::Arc<Self>) {
            panic!("waker bug");
        }
    }

    #[test]
    fn a_panicking_waker_does_not_strand_the_other_parked_subscribers() {
        let (publisher, wakes, waker) = sealed_ring_and_counting_waker();
        // SeqCst: pairs with the counter's increments, made on this thread.
        let count = || wakes.0.load(Ordering::SeqCst);
        // The stack is last in, first out: one good waker is woken before the bad one, one
        // after it.
        let mut first = publisher.subscribe();
        park(&mut first, &waker);
        let mut bad = publisher.subscribe();
        park(&mut bad, &Waker::from(std::sync::Arc::new(PanickingWaker)));
        let mut last = publisher.subscribe();
        park(&mut last, &waker);
        assert_eq!((count(), publisher.shared.waiters.len()), (0, 3));

        let publish = std::panic::AssertUnwindSafe(|| publisher.publish(1));
        let panic = std::panic::catch_unwind(publish).expect_err("the waker's panic is told");
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"waker bug"));
        // Both good subscribers were woken, and the value was published before the wakes.
        assert_eq!((count(), publisher.shared.waiters.len()), (2, 0));
        for sub in [&mut first, &mut bad, &mut last] {
            assert_eq!(**sub.try_recv().unwrap(), 1);
        }
        // Nobody is left marked as queued: each parks again and is woken by the next value.
        park(&mut first, &waker);
        park(&mut last, &waker);
        publisher.publish(2);
        assert_eq!((count(), publisher.shared.waiters.len()), (4, 0));
    }

    #[test]
    fn subscribers_dropped_while_parked_do_not_pile_up_on_a_quiet_ring() {
        let (publisher, wakes, waker) = sealed_ring_and_counting_waker();
        let mut live = publisher.subscribe();
        park(&mut live, &waker);
        let mut most = 0;
        for _ in 0..1000 {
            let mut gone = publisher.subscribe();
            park(&mut gone, Waker::noop());
            drop(gone);
            most = most.max(publisher.shared.waiters.len());
        }
        // The live node and up to `STALE_SWEEP - 1` dead ones between drops. Without the
        // sweep: 1001 nodes, one per subscriber that ever parked.
        assert_eq!(most, STALE_SWEEP, "most nodes on the stack after a drop");
        // The first sweep woke the live subscriber (spuriously) and took its node off the
        // stack; not polled since, it was not on the stack for the later sweeps. It parks
        // again and is woken by, and receives, the next value.
        // SeqCst (here and below): pairs with the counter's increments, made on this thread.
        let spurious = wakes.0.load(Ordering::SeqCst);
        assert_eq!(spurious, 1);
        park(&mut live, &waker);
        publisher.publish(7);
        assert_eq!(wakes.0.load(Ordering::SeqCst), spurious + 1);
        assert_eq!(**live.try_recv().unwrap(), 7);
        assert_eq!(live.try_recv().unwrap_err(), TryRecvError::Empty);
    }
}

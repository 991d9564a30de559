//! What the models share. Built only under `--cfg herald_loom`.

use std::sync::atomic::Ordering;

use herald_core::ring::{Entry, EntryRef, Subscriber, TryRecvError};
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::AtomicBool;

pub use herald_core::ring::{Publisher, RecvError, RingConfig, ring};

/// A ring of `capacity` slots with no startup segment, so every value is live: what most
/// models start from.
pub fn live_ring(capacity: usize) -> Publisher<Payload> {
    ring::<Payload>(RingConfig {
        capacity,
        startup_capacity: 0,
    })
}

/// Runs `model` under loom in every interleaving with at most [`PREEMPTION_BOUND`]
/// preemptions (or `LOOM_MAX_PREEMPTIONS`, when set). Returns how many executions loom
/// explored (also printed, with `--nocapture`).
///
/// [`PREEMPTION_BOUND`]: crate::PREEMPTION_BOUND
pub fn check<F>(name: &str, model: F) -> usize
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    let bound = *builder
        .preemption_bound
        .get_or_insert(crate::PREEMPTION_BOUND);
    // Counted outside loom (a std atomic): loom runs `model` once per execution.
    let executions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = executions.clone();
    builder.check(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        model();
    });
    let n = executions.load(Ordering::Relaxed);
    println!("model {name}: {n} executions, preemption bound {bound}");
    n
}

/// Records which payloads have been dropped, in loom atomics.
pub struct DropLog {
    dropped: Vec<AtomicBool>,
}

impl DropLog {
    /// A log for payloads `0..n`, none dropped.
    pub fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            dropped: (0..n).map(|_| AtomicBool::new(false)).collect(),
        })
    }

    fn mark(&self, index: usize) {
        // AcqRel: Release pairs with the Acquire load in `is_dropped`, so a thread that
        // sees the flag also sees the drop; Acquire orders a second drop after the first.
        let was = self.dropped[index].swap(true, Ordering::AcqRel);
        assert!(!was, "payload {index} dropped twice");
    }

    /// Whether payload `index` has been dropped.
    pub fn is_dropped(&self, index: usize) -> bool {
        // Acquire: pairs with the Release swap in `mark`.
        self.dropped[index].load(Ordering::Acquire)
    }

    /// The drop flag of every payload, in index order.
    pub fn flags(&self) -> Vec<bool> {
        (0..self.dropped.len())
            .map(|i| self.is_dropped(i))
            .collect()
    }
}

/// A published value whose body loom tracks. `label` is plain data; `body` is a loom
/// `UnsafeCell` written once, when the payload is created on the publishing thread, and
/// read by subscribers through [`read`](Self::read): loom reports a causality violation if
/// a subscriber reads it without a happens-before edge from that write (e.g. a slot write
/// too weak to publish the entry). A payload made by [`logged`](Self::logged) records its
/// drop in a [`DropLog`] (and holds a loom `Arc` of it, so loom's leak check fires if the
/// ring leaks the payload).
pub struct Payload {
    label: u64,
    body: UnsafeCell<u64>,
    log: Option<(Arc<DropLog>, usize)>,
}

// SAFETY: `body` is written only when the payload is created, before it is shared, and only
// read (`UnsafeCell::with`) afterwards; concurrent reads are sound, and loom checks that
// every read happens after the write.
unsafe impl Sync for Payload {}

impl Payload {
    /// A payload whose body is `label`.
    pub fn new(label: u64) -> Self {
        Self {
            label,
            body: UnsafeCell::new(label),
            log: None,
        }
    }

    /// As [`new`](Self::new); its drop is recorded as `log[index]`.
    pub fn logged(label: u64, log: &Arc<DropLog>, index: usize) -> Self {
        Self {
            label,
            body: UnsafeCell::new(label),
            log: Some((log.clone(), index)),
        }
    }

    /// Reads the body through loom and checks it is whole (equals `label`) and that the
    /// payload has not been dropped. Returns the label.
    pub fn read(&self) -> u64 {
        // SAFETY: see `unsafe impl Sync`: nobody writes `body` after creation.
        let body = self.body.with(|p| unsafe { *p });
        assert_eq!(body, self.label, "torn payload");
        if let Some((log, index)) = &self.log {
            assert!(
                !log.is_dropped(*index),
                "payload {index} was dropped while a subscriber holds it"
            );
        }
        self.label
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        // A write loom checks against every read of the body: a subscriber's read that
        // does not happen before the drop (an entry freed while lent, or a release whose
        // ordering does not carry the readers' uses to the thread that frees) is reported.
        self.body.with_mut(|p| {
            // SAFETY: `&mut self`: no one else can reach the payload any more, or loom
            // reports the access that could.
            unsafe { *p = u64::MAX }
        });
        if let Some((log, index)) = &self.log {
            log.mark(*index);
        }
    }
}

/// What a subscriber was told, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A value: its sequence number and its payload's label.
    Value { seq: u64, label: u64 },
    /// `Lagged { missed, resume_seq }`.
    Lagged { missed: u64, resume_seq: u64 },
}

/// One step of a subscriber, recorded in a [`Transcript`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Value,
    Lagged,
    Empty,
    Closed,
}

/// Everything one subscriber received, checked as a whole by [`verify`](Self::verify).
#[derive(Debug, Default, Clone)]
pub struct Transcript {
    pub seen: Vec<Seen>,
}

impl Transcript {
    /// Records a `try_recv` result. A value's payload is read (loom-checked) while the
    /// entry is held.
    pub fn record(&mut self, r: Result<EntryRef<Payload>, TryRecvError>) -> Step {
        match r {
            Ok(entry) => {
                self.value(&entry);
                Step::Value
            }
            Err(TryRecvError::Lagged { missed, resume_seq }) => {
                self.seen.push(Seen::Lagged { missed, resume_seq });
                Step::Lagged
            }
            Err(TryRecvError::Empty) => Step::Empty,
            Err(TryRecvError::Closed) => Step::Closed,
        }
    }

    /// Records a `recv` / `recv_blocking` result.
    pub fn record_recv(&mut self, r: Result<EntryRef<Payload>, RecvError>) -> Step {
        self.record(r.map_err(|e| match e {
            RecvError::Lagged { missed, resume_seq } => TryRecvError::Lagged { missed, resume_seq },
            RecvError::Closed => TryRecvError::Closed,
        }))
    }

    /// Records a received entry (reading its payload while it is held).
    pub fn value(&mut self, entry: &Entry<Payload>) {
        let label = entry.value().read();
        self.seen.push(Seen::Value {
            seq: entry.seq(),
            label,
        });
    }

    /// Calls `try_recv` until it answers `until` (`Empty` or `Closed`), at most `max`
    /// times; panics if it does not get there.
    pub fn drain(&mut self, sub: &mut Subscriber<Payload>, until: Step, max: usize) {
        for _ in 0..max {
            let step = self.record(sub.try_recv());
            if step == until {
                return;
            }
            assert!(
                step == Step::Value || step == Step::Lagged,
                "drain expected {until:?}, got {step:?}"
            );
        }
        panic!("no {until:?} after {max} try_recv calls: {:?}", self.seen);
    }

    /// Checks the whole transcript against what was published: values in sequence order
    /// from `from`, each with the label `label_of(seq)` it was published with, none twice;
    /// every gap announced by a `Lagged` whose `missed` is exactly the gap and whose
    /// `resume_seq` is the next sequence number; and everything up to `end` accounted
    /// for. Returns `(received, missed)`, whose sum is `end - from`.
    pub fn verify(&self, from: u64, end: u64, label_of: impl Fn(u64) -> u64) -> (u64, u64) {
        let (mut next, mut received, mut missed) = (from, 0, 0);
        for seen in &self.seen {
            match *seen {
                Seen::Value { seq, label } => {
                    assert_eq!(seq, next, "value out of order or duplicated: {self:?}");
                    assert_eq!(label, label_of(seq), "wrong payload at {seq}: {self:?}");
                    next += 1;
                    received += 1;
                }
                Seen::Lagged {
                    missed: m,
                    resume_seq,
                } => {
                    assert!(m > 0, "empty lag: {self:?}");
                    assert_eq!(resume_seq, next + m, "inexact lag count: {self:?}");
                    next = resume_seq;
                    missed += m;
                }
            }
        }
        assert_eq!(next, end, "values missing at the end: {self:?}");
        assert_eq!(
            received + missed,
            end - from,
            "received + missed != published"
        );
        (received, missed)
    }

    /// The sequence numbers of the values received, in order.
    pub fn seqs(&self) -> Vec<u64> {
        self.seen
            .iter()
            .filter_map(|s| match s {
                Seen::Value { seq, .. } => Some(*seq),
                Seen::Lagged { .. } => None,
            })
            .collect()
    }

    /// Whether any `Lagged` was received.
    pub fn lagged(&self) -> bool {
        self.seen.iter().any(|s| matches!(s, Seen::Lagged { .. }))
    }
}

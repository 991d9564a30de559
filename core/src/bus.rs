//! The node-facing event bus: what the node calls instead of its old broadcast channel.
//!
//! [`Bus::publish`] gives every [`Event`] its global sequence number and puts it in the
//! [ring]; [`Bus::seal_startup`] ends the startup segment (call it right after
//! publishing `entered-running-state`); [`Bus::subscribe`] yields the startup replay, then
//! live events, each as a shared [`BusEntry`] whose JSON encoding is computed at most once,
//! by whichever consumer needs it first, and then shared by all.
//!
//! ```
//! use herald_core::bus::{Bus, BusConfig};
//! use herald_core::event::Event;
//!
//! let bus = Bus::new(BusConfig::default());
//! bus.publish(Event::NodeStarted { address: "rnode://ab@127.0.0.1?protocol=40400&discovery=40404".into() });
//! bus.publish(Event::EnteredRunningState { block_hash: "ab".repeat(32) });
//! assert_eq!(bus.seal_startup(), 2);
//!
//! let mut client = bus.subscribe();
//! let first = client.try_recv().unwrap();
//! assert_eq!(first.seq(), 0);
//! assert!(first.json().starts_with(br#"{"event":"node-started","schema-version":1,"#));
//! ```

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::event::{Event, EventKind};
use crate::ring::{self, Entry, EntryRef, Publisher, RingConfig, Subscriber, Tap};

/// Sizes of a bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusConfig {
    /// Live events retained for slow subscribers; rounded up to a power of two. A
    /// subscriber further behind than this is told how many it missed.
    pub capacity: usize,
    /// Most startup events kept for replay. Startup events past it are not kept, and each
    /// replaying subscriber is told their count.
    pub startup_capacity: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            capacity: 4096,
            startup_capacity: 4096,
        }
    }
}

/// An event as published: the event and its lazily computed, shared encodings.
#[derive(Debug)]
pub struct Published {
    event: Event,
    json: OnceLock<Bytes>,
    json_seq: OnceLock<Bytes>,
}

impl Published {
    fn new(event: Event) -> Self {
        Self {
            event,
            json: OnceLock::new(),
            json_seq: OnceLock::new(),
        }
    }
}

/// What subscribers receive: one shared allocation per event, whatever their number.
pub type BusEntry = Entry<Published>;

/// An owned reference to a [`BusEntry`] (what `try_recv` and `recv` hand out, and what a
/// [`PublishHook`] may keep).
pub type BusEntryRef = EntryRef<Published>;

impl Entry<Published> {
    /// The event.
    pub fn event(&self) -> &Event {
        &self.value().event
    }

    /// Its type.
    pub fn kind(&self) -> EventKind {
        self.value().event.kind()
    }

    /// The SPEC envelope, encoded on first use and shared afterwards.
    pub fn json(&self) -> &Bytes {
        self.value()
            .json
            .get_or_init(|| self.value().event.encode())
    }

    /// The envelope with `"seq"` (the `seq=true` extension), encoded on first use.
    pub fn json_with_seq(&self) -> &Bytes {
        self.value()
            .json_seq
            .get_or_init(|| self.value().event.encode_with_seq(self.seq()))
    }
}

/// A subscriber of the bus: startup replay, then live events.
pub type BusSubscriber = Subscriber<Published>;

/// Called on the publishing thread for every event, once it has its sequence number and
/// is visible to subscribers. Must not block: it runs on the node's publish path.
pub trait PublishHook: Send + Sync + 'static {
    /// Sees one published event.
    fn on_publish(&self, entry: &BusEntryRef);
}

/// The event bus. Cloning it is cheap; every clone publishes into the same ring, and the
/// bus closes (subscribers drain, then see `Closed`) when the last clone is dropped.
#[derive(Clone)]
pub struct Bus {
    publisher: Publisher<Published>,
    hook: Option<Arc<dyn PublishHook>>,
}

/// A bus handle that can subscribe but does not keep the bus open (for servers).
#[derive(Clone, Debug)]
pub struct BusTap {
    tap: Tap<Published>,
}

/// A snapshot of the bus's counters: the ring's (published, live subscribers, reported
/// lag, startup segment, sealed, capacity).
pub type BusStats = ring::RingStats;

impl Bus {
    /// A new, open bus.
    pub fn new(config: BusConfig) -> Self {
        Self {
            publisher: ring::ring(RingConfig {
                capacity: config.capacity,
                startup_capacity: config.startup_capacity,
            }),
            hook: None,
        }
    }

    /// A new bus that calls `hook` for every published event (e.g. the transfer
    /// extractor, which must see every `block-finalised` even when subscribers lag).
    pub fn with_hook(config: BusConfig, hook: Arc<dyn PublishHook>) -> Self {
        Self {
            hook: Some(hook),
            ..Self::new(config)
        }
    }

    /// Another handle of the same bus that does not call the hook: its publishes skip it,
    /// and it does not keep the hook alive. It keeps the bus open like any handle.
    ///
    /// For the hook's own consumer (the transfer extractor), which publishes into the bus
    /// it is fed from: holding this instead of a clone, it does not keep its own hook (and
    /// the channel the hook feeds) alive, so that channel closes when the node drops its
    /// last handle.
    pub(crate) fn without_hook(&self) -> Bus {
        Self {
            publisher: self.publisher.clone(),
            hook: None,
        }
    }

    /// Publishes `event` from any thread and returns its sequence number. Lock-free; never
    /// waits for a subscriber.
    #[inline]
    pub fn publish(&self, event: Event) -> u64 {
        match &self.hook {
            None => self.publisher.publish(Published::new(event)),
            Some(hook) => self
                .publisher
                .publish_observed(Published::new(event), |entry| hook.on_publish(entry)),
        }
    }

    /// Frees, once no subscriber can still be reading them, the overwritten events this
    /// thread keeps for reuse by its next publishes: for a thread that published a burst
    /// and will not publish again for a long time. See [`Publisher::release_retired`].
    ///
    /// [`Publisher::release_retired`]: crate::ring::Publisher::release_retired
    pub fn release_retired(&self) {
        self.publisher.release_retired();
    }

    /// Seals the startup segment in one atomic step; returns how many events it holds
    /// (published before the seal, kept or not). Idempotent.
    pub fn seal_startup(&self) -> u64 {
        self.publisher.seal_startup()
    }

    /// Startup replay, then live events from now on.
    pub fn subscribe(&self) -> BusSubscriber {
        self.publisher.subscribe()
    }

    /// Every retained event with sequence `>= seq`, then live events (SPEC 4, `from=`).
    pub fn subscribe_from(&self, seq: u64) -> BusSubscriber {
        self.publisher.subscribe_from(seq)
    }

    /// A handle for servers: subscribes without keeping the bus open.
    pub fn tap(&self) -> BusTap {
        BusTap {
            tap: self.publisher.tap(),
        }
    }

    /// Current counters.
    pub fn stats(&self) -> BusStats {
        self.publisher.stats()
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self::new(BusConfig::default())
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("stats", &self.stats())
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl BusTap {
    /// As [`Bus::subscribe`].
    pub fn subscribe(&self) -> BusSubscriber {
        self.tap.subscribe()
    }

    /// As [`Bus::subscribe_from`].
    pub fn subscribe_from(&self, seq: u64) -> BusSubscriber {
        self.tap.subscribe_from(seq)
    }

    /// Current counters.
    pub fn stats(&self) -> BusStats {
        self.tap.stats()
    }
}

//! The simulated node of SPEC section 6: what `herald serve` publishes so that the stream can
//! be run and measured with no blockchain behind it.
//!
//! A [`Simulator`] generates a node's life deterministically from a seed: `node-started`, the
//! genesis ceremony of its [`Role`], `entered-running-state`, then blocks. [`Simulator::run`]
//! publishes that life into a [`Bus`]: the startup events at once, then the seal
//! ([`Bus::seal_startup`], right after `entered-running-state`), then block events paced by
//! [`Rate`].
//!
//! | role | ceremony | events per block |
//! |---|---|---|
//! | [`Role::Boot`] | `sent-unapproved-block`, one `block-approval-received` per validator, `sent-approved-block` | `block-created`, `block-added`, `block-finalised` |
//! | [`Role::Validator`] | `approved-block-received` | `block-created`, `block-added`, `block-finalised` |
//! | [`Role::Readonly`] | `approved-block-received` | `block-added`, `block-finalised` (+ `transfers-available`, see below) |
//!
//! # Transfers on the read-only role
//!
//! The simulator never emits `transfers-available` itself: on a real node those come from a
//! separate extraction step that replays each finalised block. The place for that step is the
//! [`Bus`] handed to [`Simulator::run`]: whoever builds the bus for a read-only node (the
//! `herald` binary's `serve`, with `herald_core::transfers::node_bus`) builds it with
//! [`Bus::with_hook`] and an extractor that sees every `block-finalised` and publishes the
//! matching `transfers-available` into the same bus.
//! Pacing counts every event on the bus by sequence number, so those events count against
//! `--rate` as SPEC 6 requires, with no change here.
//!
//! # Cost
//!
//! `--rate max` is a load-test source, so generation is cheap: keys (validators, deployers)
//! are generated once and cloned, hashes and signatures are written straight from the RNG
//! into a pre-sized string with a lookup table, and one block's payload is built once and
//! cloned into its two or three events.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::bus::Bus;
use herald_core::event::{BlockInfo, DeployInfo, Event};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

/// Which kind of node is simulated (`--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The bootstrap node: runs the genesis ceremony and proposes blocks.
    Boot,
    /// A validator: receives the approved genesis and proposes blocks.
    Validator,
    /// A read-only node: receives the approved genesis, adds and finalises the validators'
    /// blocks, and (once an extractor is attached to its bus, see the module docs) publishes
    /// their transfers.
    Readonly,
}

impl Role {
    /// The name used on the command line.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Boot => "boot",
            Role::Validator => "validator",
            Role::Readonly => "readonly",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--role` that is not `boot`, `validator` or `readonly`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseRoleError(pub String);

impl fmt::Display for ParseRoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown role `{}`; valid roles: boot, validator, readonly",
            self.0
        )
    }
}

impl std::error::Error for ParseRoleError {}

impl FromStr for Role {
    type Err = ParseRoleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "boot" => Ok(Role::Boot),
            "validator" => Ok(Role::Validator),
            "readonly" => Ok(Role::Readonly),
            _ => Err(ParseRoleError(s.to_owned())),
        }
    }
}

/// How fast blocks are published (`--rate`), counted in events of every type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rate {
    /// This many events per second (at least 1; [`Rate::from_str`] rejects 0).
    PerSecond(u32),
    /// As fast as the node can, on a dedicated thread.
    Max,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::PerSecond(n) => write!(f, "{n}"),
            Rate::Max => f.write_str("max"),
        }
    }
}

/// A `--rate` that is neither a positive integer nor `max`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseRateError(pub String);

impl fmt::Display for ParseRateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid rate `{}`; expected events per second as an integer from 1 to {}, or `max`",
            self.0,
            u32::MAX
        )
    }
}

impl std::error::Error for ParseRateError {}

impl FromStr for Rate {
    type Err = ParseRateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "max" {
            return Ok(Rate::Max);
        }
        match s.parse::<u32>() {
            Ok(n) if n > 0 => Ok(Rate::PerSecond(n)),
            _ => Err(ParseRateError(s.to_owned())),
        }
    }
}

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// The node's role.
    pub role: Role,
    /// Events per second, every type counted.
    pub rate: Rate,
    /// Validators in the network (at least 1): one approval each in the boot ceremony, one
    /// justification each per block.
    pub validators: usize,
    /// Deploys per block.
    pub deploys: usize,
    /// Seed of the generator: equal configs (and start times) give equal events.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            role: Role::Validator,
            rate: Rate::PerSecond(10),
            validators: 3,
            deploys: 4,
            seed: 0,
        }
    }
}

/// Live counters of a simulator, shared with whoever holds [`Simulator::counters`].
#[derive(Debug, Default)]
pub struct SimCounters {
    published: AtomicU64,
    blocks: AtomicU64,
}

impl SimCounters {
    /// Events the simulator has published into the bus (startup events included).
    pub fn published(&self) -> u64 {
        // Relaxed: a statistic; no other memory is published through it. Pairs with the
        // Relaxed `fetch_add` in `Simulator::publish`; a reader that needs the final count
        // reads after `run` returned, which joins the publisher.
        self.published.load(Ordering::Relaxed)
    }

    /// Blocks the simulator has generated.
    pub fn blocks(&self) -> u64 {
        // Relaxed: a statistic; pairs with the Relaxed `fetch_add` in `next_block_events`.
        self.blocks.load(Ordering::Relaxed)
    }
}

/// A deployer of the pre-generated pool.
#[derive(Debug, Clone)]
struct Deployer {
    /// Public key, 130 hex (uncompressed secp256k1: `04` + 64 bytes).
    key: String,
    /// Hex length of this deployer's deploy signatures: 128 (ed25519) or 144 (DER secp256k1).
    sig_hex_len: usize,
}

/// Deployers in the pool; deploys pick one at random.
const DEPLOYERS: usize = 64;
/// Share of deploys whose execution fails.
const ERRORED_SHARE: f64 = 0.1;
/// Pacing never sleeps less than this; faster rates publish several events per wake-up.
const MIN_TICK: Duration = Duration::from_millis(1);

/// The simulated node's event generator. See the module docs.
#[derive(Debug)]
pub struct Simulator {
    config: SimConfig,
    rng: SmallRng,
    node_id: String,
    genesis_hash: String,
    /// Validator public keys (130 hex); on boot and validator nodes `[0]` is this node's.
    validators: Vec<String>,
    /// Hash of the latest block of each validator (genesis until it proposes).
    latest: Vec<String>,
    /// Sequence number of the latest block of each validator.
    seq_nums: Vec<u64>,
    deployers: Vec<Deployer>,
    parent_hash: String,
    next_number: u64,
    next_creator: usize,
    start_ms: u64,
    block_interval_ms: u64,
    counters: Arc<SimCounters>,
}

impl Simulator {
    /// A simulator whose first block is stamped with the current time.
    ///
    /// # Panics
    ///
    /// If `config.validators` is 0 (the CLI rejects it).
    #[must_use]
    pub fn new(config: SimConfig) -> Self {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self::with_start_time(config, now_ms)
    }

    /// A simulator whose block timestamps start at `start_ms` (ms since the Unix epoch);
    /// fully deterministic given `config` and `start_ms`.
    ///
    /// # Panics
    ///
    /// If `config.validators` is 0 (the CLI rejects it).
    #[must_use]
    pub fn with_start_time(config: SimConfig, start_ms: u64) -> Self {
        assert!(
            config.validators > 0,
            "a network needs at least one validator"
        );
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let node_id = hex(&mut rng, 40);
        let genesis_hash = hex(&mut rng, 64);
        let validators: Vec<String> = (0..config.validators)
            .map(|_| public_key(&mut rng))
            .collect();
        let deployers = (0..DEPLOYERS)
            .map(|_| Deployer {
                key: public_key(&mut rng),
                sig_hex_len: if rng.random_bool(0.5) { 144 } else { 128 },
            })
            .collect();
        let events_per_block = match config.role {
            Role::Boot | Role::Validator => 3,
            Role::Readonly => 2,
        };
        // Timestamps advance by the simulated block time, so that a paced stream carries
        // plausible wall-clock stamps; at `max` blocks are 1 ms apart.
        let block_interval_ms = match config.rate {
            Rate::PerSecond(n) => (1000 * events_per_block / u64::from(n)).max(1),
            Rate::Max => 1,
        };
        Self {
            latest: vec![genesis_hash.clone(); validators.len()],
            seq_nums: vec![0; validators.len()],
            parent_hash: genesis_hash.clone(),
            config,
            rng,
            node_id,
            genesis_hash,
            validators,
            deployers,
            next_number: 1,
            next_creator: 0,
            start_ms,
            block_interval_ms,
            counters: Arc::new(SimCounters::default()),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Shared counters, readable while [`Simulator::run`] runs.
    #[must_use]
    pub fn counters(&self) -> Arc<SimCounters> {
        Arc::clone(&self.counters)
    }

    /// The node's address, as `node-started` carries it.
    #[must_use]
    pub fn address(&self) -> String {
        format!(
            "rnode://{}@127.0.0.1?protocol=40400&discovery=40404",
            self.node_id
        )
    }

    /// Hash of the genesis block, which the ceremony and `entered-running-state` carry.
    #[must_use]
    pub fn genesis_hash(&self) -> &str {
        &self.genesis_hash
    }

    /// Validator public keys; on boot and validator nodes the first is this node's.
    #[must_use]
    pub fn validators(&self) -> &[String] {
        &self.validators
    }

    /// The startup segment: `node-started`, the ceremony of the role, and
    /// `entered-running-state` last (the bus is sealed right after it).
    pub fn startup_events(&mut self) -> Vec<Event> {
        let mut events = Vec::with_capacity(self.validators.len() + 4);
        events.push(Event::NodeStarted {
            address: self.address(),
        });
        let genesis = &self.genesis_hash;
        match self.config.role {
            Role::Boot => {
                events.push(Event::SentUnapprovedBlock {
                    block_hash: genesis.clone(),
                });
                events.extend(
                    self.validators
                        .iter()
                        .map(|sender| Event::BlockApprovalReceived {
                            block_hash: genesis.clone(),
                            sender: sender.clone(),
                        }),
                );
                events.push(Event::SentApprovedBlock {
                    block_hash: genesis.clone(),
                });
            }
            Role::Validator | Role::Readonly => events.push(Event::ApprovedBlockReceived {
                block_hash: genesis.clone(),
            }),
        }
        events.push(Event::EnteredRunningState {
            block_hash: genesis.clone(),
        });
        events
    }

    /// The events of the next block: created, added, finalised on boot and validator nodes;
    /// added, finalised on read-only nodes. One payload, cloned into each.
    pub fn next_block_events(&mut self) -> Vec<Event> {
        let block = self.next_block();
        match self.config.role {
            Role::Boot | Role::Validator => vec![
                Event::BlockCreated(block.clone()),
                Event::BlockAdded(block.clone()),
                Event::BlockFinalised(block),
            ],
            Role::Readonly => vec![
                Event::BlockAdded(block.clone()),
                Event::BlockFinalised(block),
            ],
        }
    }

    /// How many events [`Simulator::next_block_events`] returns.
    #[must_use]
    pub fn events_per_block(&self) -> usize {
        match self.config.role {
            Role::Boot | Role::Validator => 3,
            Role::Readonly => 2,
        }
    }

    fn next_block(&mut self) -> BlockInfo {
        let number = self.next_number;
        self.next_number += 1;
        // Boot and validator nodes stream the blocks they propose; a read-only node sees
        // every validator's blocks, in turn.
        let creator = match self.config.role {
            Role::Boot | Role::Validator => 0,
            Role::Readonly => {
                let c = self.next_creator;
                self.next_creator = (c + 1) % self.validators.len();
                c
            }
        };
        let block_hash = hex(&mut self.rng, 64);
        let justification_hashes = self
            .validators
            .iter()
            .zip(&self.latest)
            .map(|(v, h)| (v.clone(), h.clone()))
            .collect();
        let deploys = (0..self.config.deploys)
            .map(|_| {
                let deployer = &self.deployers[self.rng.random_range(0..self.deployers.len())];
                DeployInfo {
                    id: hex(&mut self.rng, deployer.sig_hex_len),
                    cost: self.rng.random_range(1_000..2_000_000),
                    deployer: deployer.key.clone(),
                    errored: self.rng.random_bool(ERRORED_SHARE),
                    transfers: None,
                }
            })
            .collect();
        self.seq_nums[creator] += 1;
        let parent = std::mem::replace(&mut self.parent_hash, block_hash.clone());
        self.latest[creator].clone_from(&block_hash);
        // Relaxed: a statistic; pairs with the Relaxed load in `SimCounters::blocks`.
        self.counters.blocks.fetch_add(1, Ordering::Relaxed);
        BlockInfo {
            block_hash,
            block_number: number,
            timestamp: self.start_ms + (number - 1) * self.block_interval_ms,
            parent_hashes: vec![parent],
            justification_hashes,
            deploys,
            creator: self.validators[creator].clone(),
            seq_num: self.seq_nums[creator],
        }
    }

    /// Publishes one event; returns its sequence number on the bus.
    fn publish(&self, bus: &Bus, event: Event) -> u64 {
        let seq = bus.publish(event);
        // Relaxed: a statistic; pairs with the Relaxed load in `SimCounters::published`.
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        seq
    }

    /// Runs the node: publishes the startup events, seals the startup segment, then publishes
    /// blocks at the configured rate until `shutdown` completes. Returns once publishing has
    /// stopped; dropping `bus` then closes it if this was its last handle.
    ///
    /// At [`Rate::PerSecond`] the pacing runs on this task: event `k` after the seal is due
    /// `k / rate` seconds after it, deadlines are absolute (no drift), and a wake-up
    /// publishes every event due by then, so rates above 1000/s go out in small batches
    /// every millisecond. A publisher more than a second behind (the process was stopped)
    /// skips ahead instead of bursting. At [`Rate::Max`] blocks are published from a
    /// dedicated thread, so the runtime serving clients is never starved.
    pub async fn run<F>(mut self, bus: Bus, shutdown: F)
    where
        F: Future<Output = ()> + Send,
    {
        for event in self.startup_events() {
            self.publish(&bus, event);
        }
        let sealed = bus.seal_startup();
        tracing::info!(
            role = %self.config.role,
            startup_events = sealed,
            "simulated node entered running state"
        );
        match self.config.rate {
            Rate::PerSecond(rate) => self.run_paced(&bus, rate, shutdown).await,
            Rate::Max => self.run_max(bus, shutdown).await,
        }
    }

    async fn run_paced<F>(&mut self, bus: &Bus, rate: u32, shutdown: F)
    where
        F: Future<Output = ()> + Send,
    {
        use tokio::time::Instant;

        let rate = u128::from(rate);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut pending = std::collections::VecDeque::new();
        let mut start = Instant::now();
        // The sequence number of the first event paced here: every event on the bus from it
        // on counts against the rate, whoever published it (see the module docs).
        let mut base: Option<u64> = None;
        // Events counted against the rate so far.
        let mut sent: u64 = 0;
        loop {
            let now = Instant::now();
            // Event k is due at start + k / rate: k = 0 at once.
            let mut due =
                (now.duration_since(start).as_nanos() * rate / 1_000_000_000).saturating_add(1);
            if due > u128::from(sent) + rate {
                // More than a second behind: restart the schedule from now.
                tracing::warn!("simulated node fell behind its rate; skipping ahead");
                start = now - nanos(u128::from(sent) * 1_000_000_000 / rate);
                due = u128::from(sent) + 1;
            }
            while u128::from(sent) < due {
                if pending.is_empty() {
                    pending.extend(self.next_block_events());
                }
                let Some(event) = pending.pop_front() else {
                    break;
                };
                let seq = self.publish(bus, event);
                let base = *base.get_or_insert(seq);
                sent = seq + 1 - base;
            }
            let next_due = start + nanos(u128::from(sent) * 1_000_000_000 / rate);
            let wake = next_due.max(now + MIN_TICK);
            // Shutdown first: a stop that falls on the same timer tick as a wake-up wins.
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn run_max<F>(self, bus: Bus, shutdown: F)
    where
        F: Future<Output = ()> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let mut sim = self;
        let spawned = std::thread::Builder::new()
            .name("herald-sim".to_owned())
            .spawn(move || {
                // Acquire: pairs with the Release store below; nothing else is handed over,
                // Relaxed would do, Acquire keeps the intent obvious.
                while !thread_stop.load(Ordering::Acquire) {
                    for event in sim.next_block_events() {
                        sim.publish(&bus, event);
                    }
                }
            });
        let handle = match spawned {
            Ok(handle) => handle,
            Err(e) => {
                tracing::error!("cannot start the simulated node's thread: {e}");
                return;
            }
        };
        shutdown.await;
        // Release: pairs with the Acquire load in the publishing thread's loop.
        stop.store(true, Ordering::Release);
        match tokio::task::spawn_blocking(move || handle.join()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!("the simulated node's thread panicked"),
            Err(e) => tracing::error!("cannot join the simulated node's thread: {e}"),
        }
    }
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `len` random lowercase hex digits.
fn hex(rng: &mut SmallRng, len: usize) -> String {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let mut word = rng.next_u64();
        for _ in 0..16.min(len - out.len()) {
            out.push(HEX_DIGITS[(word & 0xf) as usize]);
            word >>= 4;
        }
    }
    // Every byte comes from HEX_DIGITS, which is ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// An uncompressed secp256k1 public key: `04` and 128 hex digits.
fn public_key(rng: &mut SmallRng) -> String {
    let mut key = String::with_capacity(130);
    key.push_str("04");
    key.push_str(&hex(rng, 128));
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::bus::BusConfig;
    use herald_core::event::EventKind;

    const START_MS: u64 = 1_700_000_000_000;

    fn sim(role: Role) -> Simulator {
        Simulator::with_start_time(
            SimConfig {
                role,
                ..SimConfig::default()
            },
            START_MS,
        )
    }

    fn kinds(events: &[Event]) -> Vec<EventKind> {
        events.iter().map(Event::kind).collect()
    }

    fn is_hex(s: &str, len: usize) -> bool {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    fn block(event: &Event) -> &BlockInfo {
        match event {
            Event::BlockCreated(b) | Event::BlockAdded(b) | Event::BlockFinalised(b) => b,
            other => panic!("not a block event: {other:?}"),
        }
    }

    #[test]
    fn boot_startup_is_the_full_ceremony() {
        let mut s = Simulator::with_start_time(
            SimConfig {
                role: Role::Boot,
                validators: 4,
                ..SimConfig::default()
            },
            START_MS,
        );
        let events = s.startup_events();
        use EventKind::*;
        assert_eq!(
            kinds(&events),
            [
                NodeStarted,
                SentUnapprovedBlock,
                BlockApprovalReceived,
                BlockApprovalReceived,
                BlockApprovalReceived,
                BlockApprovalReceived,
                SentApprovedBlock,
                EnteredRunningState,
            ]
        );
        let genesis = s.genesis_hash().to_owned();
        assert!(is_hex(&genesis, 64));
        let senders: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::BlockApprovalReceived { block_hash, sender } => {
                    assert_eq!(block_hash, &genesis);
                    Some(sender.as_str())
                }
                Event::SentUnapprovedBlock { block_hash }
                | Event::SentApprovedBlock { block_hash }
                | Event::EnteredRunningState { block_hash } => {
                    assert_eq!(block_hash, &genesis);
                    None
                }
                _ => None,
            })
            .collect();
        let validators: Vec<&str> = s.validators().iter().map(String::as_str).collect();
        assert_eq!(senders, validators);
        for key in validators {
            assert!(key.starts_with("04") && is_hex(key, 130), "{key}");
        }
    }

    #[test]
    fn validator_and_readonly_startup_receive_the_approved_block() {
        use EventKind::*;
        for role in [Role::Validator, Role::Readonly] {
            let mut s = sim(role);
            let events = s.startup_events();
            assert_eq!(
                kinds(&events),
                [NodeStarted, ApprovedBlockReceived, EnteredRunningState],
                "{role}"
            );
            assert_eq!(
                events[1],
                Event::ApprovedBlockReceived {
                    block_hash: s.genesis_hash().to_owned()
                }
            );
        }
    }

    #[test]
    fn node_started_address_has_the_rnode_form() {
        let mut s = sim(Role::Validator);
        let Event::NodeStarted { address } = &s.startup_events()[0] else {
            panic!("node-started first");
        };
        let id = address
            .strip_prefix("rnode://")
            .and_then(|rest| rest.strip_suffix("@127.0.0.1?protocol=40400&discovery=40404"))
            .expect("rnode address");
        assert!(is_hex(id, 40), "{id}");
    }

    #[test]
    fn proposing_roles_emit_created_added_finalised_per_block() {
        use EventKind::*;
        for role in [Role::Boot, Role::Validator] {
            let mut s = sim(role);
            s.startup_events();
            let mut parent = s.genesis_hash().to_owned();
            for number in 1..=20u64 {
                let events = s.next_block_events();
                assert_eq!(kinds(&events), [BlockCreated, BlockAdded, BlockFinalised]);
                let b = block(&events[0]);
                assert_eq!(block(&events[1]), b);
                assert_eq!(block(&events[2]), b);
                assert_eq!(b.block_number, number);
                assert_eq!(b.parent_hashes, [parent.clone()]);
                assert_eq!(
                    b.creator,
                    s.validators()[0],
                    "{role} proposes its own blocks"
                );
                assert_eq!(b.seq_num, number);
                parent.clone_from(&b.block_hash);
            }
            assert_eq!(s.counters().blocks(), 20);
        }
    }

    #[test]
    fn readonly_emits_added_finalised_per_block_from_every_validator() {
        use EventKind::*;
        let mut s = sim(Role::Readonly);
        s.startup_events();
        let mut creators = Vec::new();
        for number in 1..=6u64 {
            let events = s.next_block_events();
            assert_eq!(kinds(&events), [BlockAdded, BlockFinalised]);
            assert_eq!(block(&events[0]), block(&events[1]));
            assert_eq!(block(&events[0]).block_number, number);
            creators.push(block(&events[0]).creator.clone());
        }
        let v = s.validators().to_vec();
        assert_eq!(
            creators,
            [&v[0], &v[1], &v[2], &v[0], &v[1], &v[2]].map(String::clone)
        );
        assert_eq!(s.events_per_block(), 2);
    }

    #[test]
    fn block_payloads_are_realistic() {
        let mut s = Simulator::with_start_time(
            SimConfig {
                role: Role::Readonly,
                rate: Rate::PerSecond(20),
                validators: 3,
                deploys: 5,
                seed: 7,
            },
            START_MS,
        );
        s.startup_events();
        let genesis = s.genesis_hash().to_owned();
        let mut hashes = std::collections::HashSet::new();
        hashes.insert(genesis.clone());
        for number in 1..=30u64 {
            let b = block(&s.next_block_events()[0]).clone();
            assert!(is_hex(&b.block_hash, 64), "{}", b.block_hash);
            assert!(hashes.insert(b.block_hash.clone()), "hashes are unique");
            // 2 events per block at 20 events/s: a block every 100 ms.
            assert_eq!(b.timestamp, START_MS + (number - 1) * 100);
            assert_eq!(b.justification_hashes.len(), 3);
            for (validator, hash) in &b.justification_hashes {
                assert!(s.validators().contains(validator));
                assert!(hashes.contains(hash), "justifies a known block");
            }
            assert_eq!(b.deploys.len(), 5);
            for d in &b.deploys {
                assert!(is_hex(&d.id, 128) || is_hex(&d.id, 144), "{}", d.id);
                assert!(d.deployer.starts_with("04") && is_hex(&d.deployer, 130));
                assert!((1_000..2_000_000).contains(&d.cost));
                assert_eq!(d.transfers, None);
            }
        }
        // After a full round every validator is justified by its own latest block.
        let b = block(&s.next_block_events()[0]).clone();
        let v = s.validators();
        assert!(b.justification_hashes.iter().all(|(_, h)| h != &genesis));
        assert_eq!(b.justification_hashes[0].0, v[0]);
    }

    #[test]
    fn same_seed_same_events_other_seed_other_events() {
        let config = |seed| SimConfig {
            role: Role::Boot,
            seed,
            ..SimConfig::default()
        };
        let run = |seed| {
            let mut s = Simulator::with_start_time(config(seed), START_MS);
            let mut events = s.startup_events();
            for _ in 0..10 {
                events.extend(s.next_block_events());
            }
            events
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn about_ten_percent_of_deploys_error() {
        let mut s = Simulator::with_start_time(
            SimConfig {
                deploys: 10,
                seed: 1,
                ..SimConfig::default()
            },
            START_MS,
        );
        let mut errored = 0;
        let mut total = 0;
        for _ in 0..100 {
            for d in &block(&s.next_block_events()[0]).deploys {
                total += 1;
                errored += usize::from(d.errored);
            }
        }
        assert_eq!(total, 1000);
        // Binomial(1000, 0.1): mean 100, sd 9.5; the bounds are over 4 sd away.
        assert!((60..=140).contains(&errored), "{errored} errored of 1000");
    }

    #[test]
    fn signatures_use_both_lengths() {
        let mut s = sim(Role::Validator);
        let mut lengths = std::collections::BTreeSet::new();
        for _ in 0..100 {
            for d in &block(&s.next_block_events()[0]).deploys {
                lengths.insert(d.id.len());
            }
        }
        assert_eq!(lengths.into_iter().collect::<Vec<_>>(), [128, 144]);
    }

    #[test]
    fn parse_role() {
        assert_eq!("boot".parse(), Ok(Role::Boot));
        assert_eq!("validator".parse(), Ok(Role::Validator));
        assert_eq!("readonly".parse(), Ok(Role::Readonly));
        for role in [Role::Boot, Role::Validator, Role::Readonly] {
            assert_eq!(role.to_string().parse(), Ok(role));
        }
        let err = "observer".parse::<Role>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown role `observer`; valid roles: boot, validator, readonly"
        );
        assert!("Boot".parse::<Role>().is_err());
    }

    #[test]
    fn parse_rate() {
        assert_eq!("1".parse(), Ok(Rate::PerSecond(1)));
        assert_eq!("10000".parse(), Ok(Rate::PerSecond(10_000)));
        assert_eq!("max".parse(), Ok(Rate::Max));
        assert_eq!(Rate::PerSecond(5).to_string(), "5");
        assert_eq!(Rate::Max.to_string(), "max");
        for bad in ["0", "-1", "", "fast", "1.5", "MAX", "4294967296", " 3"] {
            let err = bad.parse::<Rate>().unwrap_err();
            assert_eq!(err, ParseRateError(bad.to_owned()));
            assert!(
                err.to_string()
                    .contains("integer from 1 to 4294967295, or `max`"),
                "{err}"
            );
        }
    }

    #[test]
    fn hex_is_lowercase_and_exact_length() {
        let mut rng = SmallRng::seed_from_u64(3);
        for len in [0, 1, 15, 16, 17, 40, 64, 128, 144] {
            let h = hex(&mut rng, len);
            assert!(is_hex(&h, len), "{len}: {h}");
        }
    }

    /// Runs `sim` on a fresh bus with tokio time paused, stopping it `stop_after` after it
    /// started; returns the bus's events.
    async fn run_for(sim: Simulator, stop_after: Duration) -> (Vec<Event>, Arc<SimCounters>) {
        let bus = Bus::new(BusConfig {
            capacity: 1 << 16,
            startup_capacity: 64,
        });
        let mut sub = bus.subscribe();
        let counters = sim.counters();
        sim.run(bus, tokio::time::sleep(stop_after)).await;
        let mut events = Vec::new();
        // `run` dropped the last bus handle: the subscriber drains, then sees the end.
        while let Ok(entry) = sub.try_recv() {
            events.push(entry.event().clone());
        }
        (events, counters)
    }

    #[tokio::test(start_paused = true)]
    async fn paced_run_publishes_exactly_rate_events_per_second() {
        for (role, rate) in [
            (Role::Validator, 10),
            (Role::Readonly, 7),
            (Role::Boot, 3),
            (Role::Validator, 25_000),
        ] {
            let s = Simulator::with_start_time(
                SimConfig {
                    role,
                    rate: Rate::PerSecond(rate),
                    ..SimConfig::default()
                },
                START_MS,
            );
            let startup = match role {
                Role::Boot => s.config().validators + 4,
                Role::Validator | Role::Readonly => 3,
            };
            // Half an event period past 2 s: events 0..=2*rate are due. (Timers round up to
            // the millisecond; a stop on the same tick as a wake-up wins, see `run_paced`.)
            let half_period = Duration::from_nanos(500_000_000 / u64::from(rate));
            let (events, counters) = run_for(s, Duration::from_secs(2) + half_period).await;
            let expected = startup + 2 * rate as usize + 1;
            assert_eq!(events.len(), expected, "{role} at {rate}/s");
            assert_eq!(counters.published(), expected as u64);
            assert_eq!(
                events[startup - 1].kind(),
                EventKind::EnteredRunningState,
                "{role}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn paced_run_stream_matches_the_generator() {
        let config = SimConfig {
            role: Role::Boot,
            rate: Rate::PerSecond(30),
            seed: 9,
            ..SimConfig::default()
        };
        let (events, _) = run_for(
            Simulator::with_start_time(config.clone(), START_MS),
            Duration::from_millis(1_010),
        )
        .await;
        let mut reference = Simulator::with_start_time(config, START_MS);
        let mut expected = reference.startup_events();
        while expected.len() < events.len() {
            expected.extend(reference.next_block_events());
        }
        expected.truncate(events.len());
        // 7 startup events, then 31 block events (due at 0, 1/30 s, ..., 1 s).
        assert_eq!(events.len(), 7 + 31);
        assert_eq!(events, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_rate_publishes_until_shutdown_and_seals_first() {
        let bus = Bus::new(BusConfig {
            capacity: 1024,
            startup_capacity: 64,
        });
        let tap = bus.tap();
        let s = Simulator::with_start_time(
            SimConfig {
                rate: Rate::Max,
                ..SimConfig::default()
            },
            START_MS,
        );
        let counters = s.counters();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(s.run(bus, async move {
            let _ = stop_rx.await;
        }));
        // Wait (bounded) until the thread has published well past the ring's capacity.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while counters.published() < 10_000 {
            assert!(std::time::Instant::now() < deadline, "max rate stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop_tx.send(()).expect("run is waiting");
        run.await.expect("run finished");
        let stats = tap.stats();
        assert!(stats.sealed);
        assert_eq!(stats.startup_len, 3);
        assert_eq!(stats.published, counters.published());
        // Whole blocks only: the thread checks the stop flag between blocks.
        assert_eq!((stats.published - 3) % 3, 0);
        assert_eq!(counters.blocks() * 3 + 3, stats.published);
        // A late subscriber replays the startup segment, then sees the bus close.
        let mut sub = tap.subscribe();
        let first = sub.try_recv().expect("replay");
        assert_eq!(first.kind(), EventKind::NodeStarted);
    }
}

//! The herald wire format: every byte a client receives is written by this module, and the
//! client-side decoder lives here too. `SPEC.md` sections 2 to 4 are the contract; this module
//! is its only implementation.
//!
//! # Messages
//!
//! Every message is one WebSocket text frame holding one compact JSON object:
//!
//! | message | bytes |
//! |---|---|
//! | handshake, always first | `{"event":"started","schema-version":1}` |
//! | event | `{"event":"<type>","schema-version":1,"payload":{...}}` |
//! | event, `seq=true` | `{"event":"<type>","schema-version":1,"seq":<n>,"payload":{...}}` |
//! | lagged notice | `{"event":"lagged","schema-version":1,"payload":{"missed":<n>,"resume-seq":<n>}}` |
//!
//! `<type>` is one of the ten [`EventKind`] names (`node-started`, `block-finalised`, ...).
//! Payload field names are kebab-case; hashes and keys are strings, integers are JSON numbers.
//! The payload of each type is documented on the [`Event`] variant that carries it.
//!
//! **Encoding** ([`Event::encode`], [`Event::encode_with_seq`], [`started_message`],
//! [`lagged_message`]) is deterministic and byte-exact: no whitespace, envelope keys in the
//! order shown above, payload keys in the declaration order of the payload structs, and
//! `transfers` omitted from a deploy when it is `None`. The golden tests at the bottom of this
//! file pin those bytes.
//!
//! **Decoding** ([`decode`]) is what a client does. It is tolerant where the spec lets clients
//! be (any key order, whitespace, unknown keys ignored, `seq` optional) and strict where it
//! must be (`schema-version` must be [`SCHEMA_VERSION`], event names must be known, payloads
//! must have every field with the right JSON type). It never panics, whatever the input.
//!
//! # Example
//!
//! ```
//! use herald_core::event::{decode, lagged_message, Event, ServerMessage};
//!
//! let event = Event::SentApprovedBlock { block_hash: "9f2c".to_owned() };
//! let bytes = event.encode();
//! assert_eq!(
//!     &bytes[..],
//!     br#"{"event":"sent-approved-block","schema-version":1,"payload":{"block-hash":"9f2c"}}"#
//! );
//!
//! // simd-json decodes in place, so the client hands over a mutable copy.
//! let mut buf = bytes.to_vec();
//! assert_eq!(decode(&mut buf), Ok(ServerMessage::Event { event, seq: None }));
//!
//! let mut notice = lagged_message(3, 42).to_vec();
//! assert_eq!(decode(&mut notice), Ok(ServerMessage::Lagged { missed: 3, resume_seq: 42 }));
//! ```

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::de::{self, DeserializeOwned, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use simd_json::prelude::*;
use simd_json::value::lazy::Value as LazyValue;
use simd_json::value::tape::Value as TapeValue;
use simd_json::{ErrorType, Node};

/// The `schema-version` every message carries, and the only one [`decode`] accepts.
pub const SCHEMA_VERSION: u64 = 1;

// The envelope literals below spell the version out; this stops them drifting apart.
const _: () = assert!(
    SCHEMA_VERSION == 1,
    "update the envelope literals in event.rs"
);

// ---------------------------------------------------------------------------------------------
// Payload types
// ---------------------------------------------------------------------------------------------

/// Payload of `block-created`, `block-added` and `block-finalised`.
///
/// JSON: `{"block-hash":..,"block-number":..,"timestamp":..,"parent-hashes":[..],
/// "justification-hashes":[[validator,block-hash],..],"deploys":[..],"creator":..,"seq-num":..}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockInfo {
    /// Hash of the block (lowercase hex).
    pub block_hash: String,
    /// Height of the block.
    pub block_number: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// Hashes of the parent blocks.
    pub parent_hashes: Vec<String>,
    /// `(validator, block-hash)` pairs; on the wire each is a two-element array.
    #[serde(deserialize_with = "deserialize_pairs")]
    pub justification_hashes: Vec<(String, String)>,
    /// The deploys the block contains.
    pub deploys: Vec<DeployInfo>,
    /// Public key of the validator that created the block.
    pub creator: String,
    /// The creator's sequence number for this block.
    pub seq_num: u64,
}

/// One deploy of a block.
///
/// JSON: `{"id":..,"cost":..,"deployer":..,"errored":..}`, plus `"transfers":[..]` when
/// `transfers` is `Some` (the node only knows them once the block is finalised).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DeployInfo {
    /// Deploy signature.
    pub id: String,
    /// Execution cost.
    pub cost: u64,
    /// Public key of the deployer.
    pub deployer: String,
    /// Whether execution failed.
    pub errored: bool,
    /// Transfers made by the deploy, when known; omitted from the JSON when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfers: Option<Vec<Transfer>>,
}

/// Payload of `transfers-available`.
///
/// JSON: `{"block-hash":..,"block-number":..,"deploys":[{"deploy-id":..,"transfers":[..]},..]}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TransfersInfo {
    /// Hash of the finalised block.
    pub block_hash: String,
    /// Height of the finalised block.
    pub block_number: u64,
    /// Transfers, grouped by deploy.
    pub deploys: Vec<DeployTransfers>,
}

/// The transfers of one deploy, inside [`TransfersInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DeployTransfers {
    /// Deploy signature.
    pub deploy_id: String,
    /// The deploy's transfers.
    pub transfers: Vec<Transfer>,
}

/// One transfer. JSON: `{"from-addr":..,"to-addr":..,"amount":..,"success":..}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Transfer {
    /// Source address.
    pub from_addr: String,
    /// Destination address.
    pub to_addr: String,
    /// Amount transferred.
    pub amount: u64,
    /// Whether the transfer succeeded.
    pub success: bool,
}

/// Deserializes `[[a, b], ...]`, rejecting inner arrays that do not have exactly two strings
/// (a derived tuple impl would silently drop a third element with some deserializers).
fn deserialize_pairs<'de, D>(deserializer: D) -> Result<Vec<(String, String)>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Pair(String, String);

    struct PairVisitor;

    impl<'de> Visitor<'de> for PairVisitor {
        type Value = Pair;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a two-element array [validator, block-hash]")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pair, A::Error> {
            let first: String = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(0, &self))?;
            let second: String = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(1, &self))?;
            let mut len = 2;
            while seq.next_element::<IgnoredAny>()?.is_some() {
                len += 1;
            }
            if len != 2 {
                return Err(de::Error::invalid_length(len, &self));
            }
            Ok(Pair(first, second))
        }
    }

    impl<'de> Deserialize<'de> for Pair {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_seq(PairVisitor)
        }
    }

    let pairs = Vec::<Pair>::deserialize(deserializer)?;
    Ok(pairs.into_iter().map(|Pair(a, b)| (a, b)).collect())
}

// ---------------------------------------------------------------------------------------------
// Events and their kinds
// ---------------------------------------------------------------------------------------------

/// One of the ten event types of schema-version 1 (SPEC section 3), with its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `node-started`: HTTP server ready. Payload `{"address":..}`
    /// (`rnode://<id>@<host>?protocol=<p>&discovery=<d>`).
    NodeStarted {
        /// The node's address.
        address: String,
    },
    /// `sent-unapproved-block`: boot node broadcasts the genesis candidate.
    /// Payload `{"block-hash":..}`.
    SentUnapprovedBlock {
        /// Full hash of the genesis candidate.
        block_hash: String,
    },
    /// `block-approval-received`: boot node receives a validator's approval.
    /// Payload `{"block-hash":..,"sender":..}`.
    BlockApprovalReceived {
        /// Full hash of the genesis candidate.
        block_hash: String,
        /// Public key (hex) of the approving validator.
        sender: String,
    },
    /// `sent-approved-block`: boot node broadcasts the approved genesis.
    /// Payload `{"block-hash":..}`.
    SentApprovedBlock {
        /// Full hash of the approved genesis.
        block_hash: String,
    },
    /// `approved-block-received`: a validator or read-only node receives the approved genesis.
    /// Payload `{"block-hash":..}`.
    ApprovedBlockReceived {
        /// Full hash of the approved genesis.
        block_hash: String,
    },
    /// `entered-running-state`: the engine goes from Initializing to Running.
    /// Payload `{"block-hash":..}`.
    EnteredRunningState {
        /// Full hash of the approved genesis.
        block_hash: String,
    },
    /// `block-created`: this validator proposed a block (before validation).
    BlockCreated(BlockInfo),
    /// `block-added`: block validated and added to the DAG.
    BlockAdded(BlockInfo),
    /// `block-finalised`: block finalised by consensus (British spelling on the wire).
    BlockFinalised(BlockInfo),
    /// `transfers-available`: transfers of a finalised block extracted (read-only nodes).
    TransfersAvailable(TransfersInfo),
}

/// The type of an [`Event`], without its payload: what `events=` filters on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `node-started`
    NodeStarted,
    /// `sent-unapproved-block`
    SentUnapprovedBlock,
    /// `block-approval-received`
    BlockApprovalReceived,
    /// `sent-approved-block`
    SentApprovedBlock,
    /// `approved-block-received`
    ApprovedBlockReceived,
    /// `entered-running-state`
    EnteredRunningState,
    /// `block-created`
    BlockCreated,
    /// `block-added`
    BlockAdded,
    /// `block-finalised`
    BlockFinalised,
    /// `transfers-available`
    TransfersAvailable,
}

impl EventKind {
    /// Every kind, in SPEC order; `ALL[k.index()] == k`.
    pub const ALL: [EventKind; 10] = [
        EventKind::NodeStarted,
        EventKind::SentUnapprovedBlock,
        EventKind::BlockApprovalReceived,
        EventKind::SentApprovedBlock,
        EventKind::ApprovedBlockReceived,
        EventKind::EnteredRunningState,
        EventKind::BlockCreated,
        EventKind::BlockAdded,
        EventKind::BlockFinalised,
        EventKind::TransfersAvailable,
    ];

    /// The wire name, as in `"event":"block-finalised"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::NodeStarted => "node-started",
            EventKind::SentUnapprovedBlock => "sent-unapproved-block",
            EventKind::BlockApprovalReceived => "block-approval-received",
            EventKind::SentApprovedBlock => "sent-approved-block",
            EventKind::ApprovedBlockReceived => "approved-block-received",
            EventKind::EnteredRunningState => "entered-running-state",
            EventKind::BlockCreated => "block-created",
            EventKind::BlockAdded => "block-added",
            EventKind::BlockFinalised => "block-finalised",
            EventKind::TransfersAvailable => "transfers-available",
        }
    }

    /// Position in [`EventKind::ALL`], `0..10`: the bit of this kind in a filter bitmask.
    #[must_use]
    pub const fn index(self) -> usize {
        // Declaration order is `ALL` order (checked by a test), so the discriminant is the index.
        self as usize
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the ten event types (for example in `events=`).
///
/// Its message names the culprit and lists the valid names, comma-separated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownEventKind(pub String);

impl fmt::Display for UnknownEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown event type `{}`; valid types: ", self.0)?;
        for (i, kind) in EventKind::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(kind.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownEventKind {}

impl FromStr for EventKind {
    type Err = UnknownEventKind;

    /// Parses a wire name (`"block-added"`); exact, case-sensitive match.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "node-started" => EventKind::NodeStarted,
            "sent-unapproved-block" => EventKind::SentUnapprovedBlock,
            "block-approval-received" => EventKind::BlockApprovalReceived,
            "sent-approved-block" => EventKind::SentApprovedBlock,
            "approved-block-received" => EventKind::ApprovedBlockReceived,
            "entered-running-state" => EventKind::EnteredRunningState,
            "block-created" => EventKind::BlockCreated,
            "block-added" => EventKind::BlockAdded,
            "block-finalised" => EventKind::BlockFinalised,
            "transfers-available" => EventKind::TransfersAvailable,
            _ => return Err(UnknownEventKind(s.to_owned())),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding (server side, hot path: once per published event)
// ---------------------------------------------------------------------------------------------

const ENVELOPE_HEAD: &[u8] = br#"{"event":""#;
const ENVELOPE_VERSION: &[u8] = br#"","schema-version":1"#;
const ENVELOPE_SEQ: &[u8] = br#","seq":"#;
const ENVELOPE_PAYLOAD: &[u8] = br#","payload":"#;
/// Bytes of the envelope around the type name and the payload, `seq` included.
const ENVELOPE_LEN: usize = ENVELOPE_HEAD.len()
    + ENVELOPE_VERSION.len()
    + ENVELOPE_SEQ.len()
    + MAX_U64_DIGITS
    + ENVELOPE_PAYLOAD.len()
    + 1;
const MAX_U64_DIGITS: usize = 20;

const STARTED: &[u8] = br#"{"event":"started","schema-version":1}"#;

/// Appends `value` as compact JSON.
fn write_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    // Writing to a Vec does no I/O, and none of the wire types has a map with non-string keys
    // or a fallible Serialize impl: serde_json cannot fail here.
    serde_json::to_writer(&mut *buf, value).expect("serializing wire types to a Vec cannot fail");
}

/// Appends `{"<key>":<value as JSON string>}`; `key` needs no escaping.
fn write_string_object(buf: &mut Vec<u8>, key: &str, value: &str) {
    buf.extend_from_slice(b"{\"");
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(b"\":");
    write_json(buf, value);
    buf.push(b'}');
}

impl Event {
    /// The type of this event.
    #[must_use]
    pub const fn kind(&self) -> EventKind {
        match self {
            Event::NodeStarted { .. } => EventKind::NodeStarted,
            Event::SentUnapprovedBlock { .. } => EventKind::SentUnapprovedBlock,
            Event::BlockApprovalReceived { .. } => EventKind::BlockApprovalReceived,
            Event::SentApprovedBlock { .. } => EventKind::SentApprovedBlock,
            Event::ApprovedBlockReceived { .. } => EventKind::ApprovedBlockReceived,
            Event::EnteredRunningState { .. } => EventKind::EnteredRunningState,
            Event::BlockCreated(_) => EventKind::BlockCreated,
            Event::BlockAdded(_) => EventKind::BlockAdded,
            Event::BlockFinalised(_) => EventKind::BlockFinalised,
            Event::TransfersAvailable(_) => EventKind::TransfersAvailable,
        }
    }

    /// The exact SPEC envelope, compact:
    /// `{"event":"<type>","schema-version":1,"payload":{...}}`.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        self.encode_envelope(None)
    }

    /// The envelope with the `seq=true` extension, `seq` between `schema-version` and
    /// `payload`: `{"event":"<type>","schema-version":1,"seq":7,"payload":{...}}`.
    #[must_use]
    pub fn encode_with_seq(&self, seq: u64) -> Bytes {
        self.encode_envelope(Some(seq))
    }

    fn encode_envelope(&self, seq: Option<u64>) -> Bytes {
        let kind = self.kind().as_str();
        let mut buf = Vec::with_capacity(ENVELOPE_LEN + kind.len() + self.payload_len_hint());
        buf.extend_from_slice(ENVELOPE_HEAD);
        buf.extend_from_slice(kind.as_bytes());
        buf.extend_from_slice(ENVELOPE_VERSION);
        if let Some(seq) = seq {
            buf.extend_from_slice(ENVELOPE_SEQ);
            write_json(&mut buf, &seq);
        }
        buf.extend_from_slice(ENVELOPE_PAYLOAD);
        self.write_payload(&mut buf);
        buf.push(b'}');
        Bytes::from(buf)
    }

    fn write_payload(&self, buf: &mut Vec<u8>) {
        match self {
            Event::NodeStarted { address } => write_string_object(buf, "address", address),
            Event::SentUnapprovedBlock { block_hash }
            | Event::SentApprovedBlock { block_hash }
            | Event::ApprovedBlockReceived { block_hash }
            | Event::EnteredRunningState { block_hash } => {
                write_string_object(buf, "block-hash", block_hash);
            }
            Event::BlockApprovalReceived { block_hash, sender } => {
                buf.extend_from_slice(br#"{"block-hash":"#);
                write_json(buf, block_hash);
                buf.extend_from_slice(br#","sender":"#);
                write_json(buf, sender);
                buf.push(b'}');
            }
            Event::BlockCreated(block)
            | Event::BlockAdded(block)
            | Event::BlockFinalised(block) => {
                write_json(buf, block);
            }
            Event::TransfersAvailable(transfers) => write_json(buf, transfers),
        }
    }

    /// Size of the JSON payload, exact up to number widths (counted at their maximum) and
    /// string escapes (not counted): enough that the encoder does not reallocate for
    /// hex hashes and keys.
    fn payload_len_hint(&self) -> usize {
        /// A string value with its quotes and the comma after it.
        fn s(value: &str) -> usize {
            value.len() + 3
        }
        fn transfer(t: &Transfer) -> usize {
            // {"from-addr":,"to-addr":,"amount":,"success":false}
            52 + s(&t.from_addr) + s(&t.to_addr) + MAX_U64_DIGITS
        }
        fn transfers(ts: &[Transfer]) -> usize {
            2 + ts.iter().map(|t| transfer(t) + 1).sum::<usize>()
        }
        fn deploy(d: &DeployInfo) -> usize {
            // {"id":,"cost":,"deployer":,"errored":false} and ,"transfers":
            let fixed = 44 + s(&d.id) + s(&d.deployer) + MAX_U64_DIGITS;
            fixed + d.transfers.as_deref().map_or(0, |ts| 13 + transfers(ts))
        }
        fn block(b: &BlockInfo) -> usize {
            // {"block-hash":,"block-number":,"timestamp":,"parent-hashes":[],
            // "justification-hashes":[],"deploys":[],"creator":,"seq-num":}
            let fixed = 120 + s(&b.block_hash) + s(&b.creator) + 3 * MAX_U64_DIGITS;
            let parents = b.parent_hashes.iter().map(|h| s(h)).sum::<usize>();
            let justifications = b
                .justification_hashes
                .iter()
                .map(|(v, h)| 3 + s(v) + s(h))
                .sum::<usize>();
            let deploys = b.deploys.iter().map(|d| deploy(d) + 1).sum::<usize>();
            fixed + parents + justifications + deploys
        }
        match self {
            Event::NodeStarted { address: value }
            | Event::SentUnapprovedBlock { block_hash: value }
            | Event::SentApprovedBlock { block_hash: value }
            | Event::ApprovedBlockReceived { block_hash: value }
            | Event::EnteredRunningState { block_hash: value } => 16 + s(value),
            Event::BlockApprovalReceived { block_hash, sender } => 26 + s(block_hash) + s(sender),
            Event::BlockCreated(b) | Event::BlockAdded(b) | Event::BlockFinalised(b) => block(b),
            Event::TransfersAvailable(t) => {
                // {"block-hash":,"block-number":,"deploys":[]} and {"deploy-id":,"transfers":}
                let deploys = t
                    .deploys
                    .iter()
                    .map(|d| 28 + s(&d.deploy_id) + transfers(&d.transfers))
                    .sum::<usize>();
                44 + s(&t.block_hash) + MAX_U64_DIGITS + deploys
            }
        }
    }
}

/// The handshake, always the first message of a stream: `{"event":"started","schema-version":1}`.
#[must_use]
pub fn started_message() -> Bytes {
    Bytes::from_static(STARTED)
}

/// The `lagged` notice:
/// `{"event":"lagged","schema-version":1,"payload":{"missed":3,"resume-seq":42}}`.
///
/// `missed` is the number of events skipped for this client (the spec requires `>= 1`),
/// `resume_seq` the sequence number delivery continues from.
#[must_use]
pub fn lagged_message(missed: u64, resume_seq: u64) -> Bytes {
    const HEAD: &[u8] = br#"{"event":"lagged","schema-version":1,"payload":{"missed":"#;
    const MIDDLE: &[u8] = br#","resume-seq":"#;
    debug_assert!(
        missed >= 1,
        "a lagged notice must report at least one missed event"
    );
    let mut buf = Vec::with_capacity(HEAD.len() + MIDDLE.len() + 2 * MAX_U64_DIGITS + 2);
    buf.extend_from_slice(HEAD);
    write_json(&mut buf, &missed);
    buf.extend_from_slice(MIDDLE);
    write_json(&mut buf, &resume_seq);
    buf.extend_from_slice(b"}}");
    Bytes::from(buf)
}

// ---------------------------------------------------------------------------------------------
// Decoding (client side)
// ---------------------------------------------------------------------------------------------

/// One message as a client receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// The handshake, `{"event":"started","schema-version":1}`.
    Started,
    /// The server skipped `missed` events for this client; delivery continues at `resume_seq`.
    Lagged {
        /// How many events were skipped (at least 1).
        missed: u64,
        /// The sequence number of the next event delivered.
        resume_seq: u64,
    },
    /// One of the ten event types.
    Event {
        /// The event.
        event: Event,
        /// Its global sequence number, present when the client asked for `seq=true`.
        seq: Option<u64>,
    },
}

/// Why [`decode`] rejected a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not valid JSON (includes empty and truncated input, invalid UTF-8, and nesting deeper
    /// than the decoder accepts).
    Json(String),
    /// Valid JSON, but not an object.
    NotAnObject,
    /// An envelope field (`event`, `schema-version`, `payload`) is absent, or present with the
    /// wrong JSON type; `seq`, which is optional, is reported here when present but not an
    /// unsigned integer. Fields inside the payload are reported as
    /// [`DecodeError::InvalidPayload`].
    MissingField(&'static str),
    /// `event` names neither one of the ten event types nor `started` or `lagged`.
    UnknownEvent(String),
    /// `schema-version` is an integer other than [`SCHEMA_VERSION`].
    UnsupportedSchemaVersion(u64),
    /// The payload of `event` is not an object, lacks a field, or has a field of the wrong
    /// type or value.
    InvalidPayload {
        /// The event (or notice) name whose payload is wrong.
        event: String,
        /// What is wrong, in words.
        reason: String,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Json(reason) => write!(f, "invalid JSON: {reason}"),
            DecodeError::NotAnObject => f.write_str("message is not a JSON object"),
            DecodeError::MissingField(field) => {
                write!(f, "missing or ill-typed envelope field `{field}`")
            }
            DecodeError::UnknownEvent(name) => write!(f, "unknown event type `{name}`"),
            DecodeError::UnsupportedSchemaVersion(version) => write!(
                f,
                "unsupported schema-version {version} (this decoder reads {SCHEMA_VERSION})"
            ),
            DecodeError::InvalidPayload { event, reason } => {
                write!(f, "invalid `{event}` payload: {reason}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Deepest JSON nesting [`decode`] accepts. The deepest legitimate message is 6 levels
/// (envelope, payload, deploys, deploy, transfers, transfer); the limit leaves room for
/// unknown fields while keeping the recursive parts of decoding (building and dropping values)
/// far from a stack overflow.
const MAX_DEPTH: usize = 64;

/// Decodes one text message with simd-json, which parses in place: `buf` is left modified.
///
/// Accepts any key order, whitespace and unknown keys; requires `schema-version` 1 and, for
/// events and `lagged`, a complete payload. Never panics, whatever `buf` holds.
///
/// # Errors
///
/// A [`DecodeError`] saying what is wrong: invalid JSON ([`DecodeError::Json`]), not an object,
/// an envelope field missing or ill-typed, an unknown event name, another schema-version, or
/// a payload that does not match its event type ([`DecodeError::InvalidPayload`]).
pub fn decode(buf: &mut [u8]) -> Result<ServerMessage, DecodeError> {
    let tape = simd_json::to_tape(buf).map_err(|e| DecodeError::Json(e.to_string()))?;
    check_depth(&tape.0)?;
    let root = tape.as_value();
    let envelope = root.as_object().ok_or(DecodeError::NotAnObject)?;

    let name_value = envelope
        .get("event")
        .ok_or(DecodeError::MissingField("event"))?;
    let name = name_value
        .as_str()
        .ok_or(DecodeError::MissingField("event"))?;
    let version = envelope
        .get("schema-version")
        .and_then(|v| v.as_u64())
        .ok_or(DecodeError::MissingField("schema-version"))?;
    if version != SCHEMA_VERSION {
        return Err(DecodeError::UnsupportedSchemaVersion(version));
    }

    match name {
        "started" => Ok(ServerMessage::Started),
        "lagged" => {
            let payload = envelope
                .get("payload")
                .ok_or(DecodeError::MissingField("payload"))?;
            let LaggedPayload { missed, resume_seq } = payload_from(name, payload)?;
            if missed == 0 {
                return Err(invalid_payload(
                    name,
                    "`missed` must be at least 1".to_owned(),
                ));
            }
            Ok(ServerMessage::Lagged { missed, resume_seq })
        }
        _ => {
            let kind = EventKind::from_str(name)
                .map_err(|_| DecodeError::UnknownEvent(name.to_owned()))?;
            let seq = match envelope.get("seq") {
                None => None,
                Some(seq) => Some(seq.as_u64().ok_or(DecodeError::MissingField("seq"))?),
            };
            let payload = envelope
                .get("payload")
                .ok_or(DecodeError::MissingField("payload"))?;
            let event = decode_event(kind, payload)?;
            Ok(ServerMessage::Event { event, seq })
        }
    }
}

/// Rejects tapes nested deeper than [`MAX_DEPTH`], without recursion. A container node's
/// `count` is the number of tape nodes inside it, so it ends at `index + 1 + count`.
fn check_depth(nodes: &[Node<'_>]) -> Result<(), DecodeError> {
    let mut open_until = [0usize; MAX_DEPTH];
    let mut depth = 0;
    for (index, node) in nodes.iter().enumerate() {
        while depth > 0 && index >= open_until[depth - 1] {
            depth -= 1;
        }
        if let Node::Array { count, .. } | Node::Object { count, .. } = *node {
            if depth == MAX_DEPTH {
                return Err(DecodeError::Json(format!(
                    "nested deeper than {MAX_DEPTH} levels"
                )));
            }
            open_until[depth] = index.saturating_add(count).saturating_add(1);
            depth += 1;
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct LaggedPayload {
    missed: u64,
    resume_seq: u64,
}

#[derive(Deserialize)]
struct AddressPayload {
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct BlockHashPayload {
    block_hash: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ApprovalPayload {
    block_hash: String,
    sender: String,
}

fn decode_event(kind: EventKind, payload: TapeValue<'_, '_>) -> Result<Event, DecodeError> {
    let name = kind.as_str();
    Ok(match kind {
        EventKind::NodeStarted => {
            let AddressPayload { address } = payload_from(name, payload)?;
            Event::NodeStarted { address }
        }
        EventKind::SentUnapprovedBlock => Event::SentUnapprovedBlock {
            block_hash: payload_from::<BlockHashPayload>(name, payload)?.block_hash,
        },
        EventKind::BlockApprovalReceived => {
            let ApprovalPayload { block_hash, sender } = payload_from(name, payload)?;
            Event::BlockApprovalReceived { block_hash, sender }
        }
        EventKind::SentApprovedBlock => Event::SentApprovedBlock {
            block_hash: payload_from::<BlockHashPayload>(name, payload)?.block_hash,
        },
        EventKind::ApprovedBlockReceived => Event::ApprovedBlockReceived {
            block_hash: payload_from::<BlockHashPayload>(name, payload)?.block_hash,
        },
        EventKind::EnteredRunningState => Event::EnteredRunningState {
            block_hash: payload_from::<BlockHashPayload>(name, payload)?.block_hash,
        },
        EventKind::BlockCreated => Event::BlockCreated(payload_from(name, payload)?),
        EventKind::BlockAdded => Event::BlockAdded(payload_from(name, payload)?),
        EventKind::BlockFinalised => Event::BlockFinalised(payload_from(name, payload)?),
        EventKind::TransfersAvailable => Event::TransfersAvailable(payload_from(name, payload)?),
    })
}

/// Deserializes the payload object of `event` into `T`.
fn payload_from<T: DeserializeOwned>(
    event: &str,
    payload: TapeValue<'_, '_>,
) -> Result<T, DecodeError> {
    if !payload.is_object() {
        return Err(invalid_payload(
            event,
            "payload is not a JSON object".to_owned(),
        ));
    }
    // Depth was bounded by `check_depth`, so the recursive conversion is safe.
    let value = LazyValue::from_tape(payload).into_value();
    simd_json::serde::from_borrowed_value(value).map_err(|e| {
        let reason = match e.error() {
            ErrorType::Serde(message) => message.clone(),
            _ => e.to_string(),
        };
        invalid_payload(event, reason)
    })
}

fn invalid_payload(event: &str, reason: String) -> DecodeError {
    DecodeError::InvalidPayload {
        event: event.to_owned(),
        reason,
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ----- fixtures ---------------------------------------------------------------------------

    fn transfer() -> Transfer {
        Transfer {
            from_addr: "1111".to_owned(),
            to_addr: "2222".to_owned(),
            amount: 1_000_000,
            success: true,
        }
    }

    /// A block as `block-created` / `block-added` carry it: transfers unknown.
    fn block() -> BlockInfo {
        BlockInfo {
            block_hash: "9f2c".to_owned(),
            block_number: 42,
            timestamp: 1_700_000_000_000,
            parent_hashes: vec!["aa01".to_owned(), "aa02".to_owned()],
            justification_hashes: vec![
                ("v1".to_owned(), "bb01".to_owned()),
                ("v2".to_owned(), "bb02".to_owned()),
            ],
            deploys: vec![DeployInfo {
                id: "3045".to_owned(),
                cost: 7,
                deployer: "04ab".to_owned(),
                errored: false,
                transfers: None,
            }],
            creator: "04cd".to_owned(),
            seq_num: 3,
        }
    }

    /// A genesis-like block: every array empty.
    fn empty_block() -> BlockInfo {
        BlockInfo {
            block_hash: "00ff".to_owned(),
            block_number: 0,
            timestamp: 0,
            parent_hashes: vec![],
            justification_hashes: vec![],
            deploys: vec![],
            creator: String::new(),
            seq_num: 0,
        }
    }

    /// A block as `block-finalised` carries it: transfers known (one deploy has none).
    fn finalised_block() -> BlockInfo {
        BlockInfo {
            deploys: vec![
                DeployInfo {
                    id: "3045".to_owned(),
                    cost: 7,
                    deployer: "04ab".to_owned(),
                    errored: false,
                    transfers: Some(vec![transfer()]),
                },
                DeployInfo {
                    id: "3046".to_owned(),
                    cost: 0,
                    deployer: "04ac".to_owned(),
                    errored: true,
                    transfers: Some(vec![]),
                },
            ],
            ..block()
        }
    }

    fn transfers_info() -> TransfersInfo {
        TransfersInfo {
            block_hash: "9f2c".to_owned(),
            block_number: 42,
            deploys: vec![DeployTransfers {
                deploy_id: "3045".to_owned(),
                transfers: vec![
                    transfer(),
                    Transfer {
                        from_addr: "2222".to_owned(),
                        to_addr: "3333".to_owned(),
                        amount: 5,
                        success: false,
                    },
                ],
            }],
        }
    }

    /// One event of every kind, in `EventKind::ALL` order.
    fn samples() -> Vec<Event> {
        vec![
            Event::NodeStarted {
                address: "rnode://abcd@127.0.0.1?protocol=40400&discovery=40404".to_owned(),
            },
            Event::SentUnapprovedBlock {
                block_hash: "c0ffee".to_owned(),
            },
            Event::BlockApprovalReceived {
                block_hash: "c0ffee".to_owned(),
                sender: "04ab".to_owned(),
            },
            Event::SentApprovedBlock {
                block_hash: "c0ffee".to_owned(),
            },
            Event::ApprovedBlockReceived {
                block_hash: "c0ffee".to_owned(),
            },
            Event::EnteredRunningState {
                block_hash: "c0ffee".to_owned(),
            },
            Event::BlockCreated(block()),
            Event::BlockAdded(empty_block()),
            Event::BlockFinalised(finalised_block()),
            Event::TransfersAvailable(transfers_info()),
        ]
    }

    fn encoded(event: &Event) -> String {
        String::from_utf8(event.encode().to_vec()).expect("encoder emits UTF-8")
    }

    fn decode_str(s: &str) -> Result<ServerMessage, DecodeError> {
        decode(&mut s.as_bytes().to_vec())
    }

    // ----- golden encodings ---------------------------------------------------------------------

    #[test]
    fn golden_node_started() {
        assert_eq!(
            encoded(&samples()[0]),
            r#"{"event":"node-started","schema-version":1,"payload":{"address":"rnode://abcd@127.0.0.1?protocol=40400&discovery=40404"}}"#
        );
    }

    #[test]
    fn golden_sent_unapproved_block() {
        assert_eq!(
            encoded(&samples()[1]),
            r#"{"event":"sent-unapproved-block","schema-version":1,"payload":{"block-hash":"c0ffee"}}"#
        );
    }

    #[test]
    fn golden_block_approval_received() {
        assert_eq!(
            encoded(&samples()[2]),
            r#"{"event":"block-approval-received","schema-version":1,"payload":{"block-hash":"c0ffee","sender":"04ab"}}"#
        );
    }

    #[test]
    fn golden_sent_approved_block() {
        assert_eq!(
            encoded(&samples()[3]),
            r#"{"event":"sent-approved-block","schema-version":1,"payload":{"block-hash":"c0ffee"}}"#
        );
    }

    #[test]
    fn golden_approved_block_received() {
        assert_eq!(
            encoded(&samples()[4]),
            r#"{"event":"approved-block-received","schema-version":1,"payload":{"block-hash":"c0ffee"}}"#
        );
    }

    #[test]
    fn golden_entered_running_state() {
        assert_eq!(
            encoded(&samples()[5]),
            r#"{"event":"entered-running-state","schema-version":1,"payload":{"block-hash":"c0ffee"}}"#
        );
    }

    #[test]
    fn golden_block_created_omits_unknown_transfers() {
        assert_eq!(
            encoded(&samples()[6]),
            r#"{"event":"block-created","schema-version":1,"payload":{"block-hash":"9f2c","block-number":42,"timestamp":1700000000000,"parent-hashes":["aa01","aa02"],"justification-hashes":[["v1","bb01"],["v2","bb02"]],"deploys":[{"id":"3045","cost":7,"deployer":"04ab","errored":false}],"creator":"04cd","seq-num":3}}"#
        );
    }

    #[test]
    fn golden_block_added_with_empty_arrays() {
        assert_eq!(
            encoded(&samples()[7]),
            r#"{"event":"block-added","schema-version":1,"payload":{"block-hash":"00ff","block-number":0,"timestamp":0,"parent-hashes":[],"justification-hashes":[],"deploys":[],"creator":"","seq-num":0}}"#
        );
    }

    #[test]
    fn golden_block_finalised_with_transfers() {
        assert_eq!(
            encoded(&samples()[8]),
            r#"{"event":"block-finalised","schema-version":1,"payload":{"block-hash":"9f2c","block-number":42,"timestamp":1700000000000,"parent-hashes":["aa01","aa02"],"justification-hashes":[["v1","bb01"],["v2","bb02"]],"deploys":[{"id":"3045","cost":7,"deployer":"04ab","errored":false,"transfers":[{"from-addr":"1111","to-addr":"2222","amount":1000000,"success":true}]},{"id":"3046","cost":0,"deployer":"04ac","errored":true,"transfers":[]}],"creator":"04cd","seq-num":3}}"#
        );
    }

    #[test]
    fn golden_transfers_available() {
        assert_eq!(
            encoded(&samples()[9]),
            r#"{"event":"transfers-available","schema-version":1,"payload":{"block-hash":"9f2c","block-number":42,"deploys":[{"deploy-id":"3045","transfers":[{"from-addr":"1111","to-addr":"2222","amount":1000000,"success":true},{"from-addr":"2222","to-addr":"3333","amount":5,"success":false}]}]}}"#
        );
    }

    #[test]
    fn golden_strings_are_json_escaped() {
        let event = Event::BlockApprovalReceived {
            block_hash: "a\"b\\c".to_owned(),
            sender: "line\nbreak\u{1}é".to_owned(),
        };
        assert_eq!(
            encoded(&event),
            r#"{"event":"block-approval-received","schema-version":1,"payload":{"block-hash":"a\"b\\c","sender":"line\nbreak\u0001é"}}"#
        );
    }

    #[test]
    fn golden_encode_with_seq() {
        let event = Event::SentApprovedBlock {
            block_hash: "c0ffee".to_owned(),
        };
        assert_eq!(
            &event.encode_with_seq(7)[..],
            br#"{"event":"sent-approved-block","schema-version":1,"seq":7,"payload":{"block-hash":"c0ffee"}}"#
        );
        assert_eq!(
            &event.encode_with_seq(0)[..],
            br#"{"event":"sent-approved-block","schema-version":1,"seq":0,"payload":{"block-hash":"c0ffee"}}"#
        );
        assert_eq!(
            &event.encode_with_seq(u64::MAX)[..],
            br#"{"event":"sent-approved-block","schema-version":1,"seq":18446744073709551615,"payload":{"block-hash":"c0ffee"}}"#
        );
    }

    #[test]
    fn golden_encode_with_seq_block() {
        assert_eq!(
            &Event::BlockAdded(empty_block()).encode_with_seq(12)[..],
            br#"{"event":"block-added","schema-version":1,"seq":12,"payload":{"block-hash":"00ff","block-number":0,"timestamp":0,"parent-hashes":[],"justification-hashes":[],"deploys":[],"creator":"","seq-num":0}}"#
        );
    }

    #[test]
    fn golden_started_message() {
        assert_eq!(
            &started_message()[..],
            br#"{"event":"started","schema-version":1}"#
        );
    }

    #[test]
    fn golden_lagged_message() {
        assert_eq!(
            &lagged_message(3, 42)[..],
            br#"{"event":"lagged","schema-version":1,"payload":{"missed":3,"resume-seq":42}}"#
        );
        assert_eq!(
            &lagged_message(u64::MAX, 0)[..],
            br#"{"event":"lagged","schema-version":1,"payload":{"missed":18446744073709551615,"resume-seq":0}}"#
        );
    }

    #[test]
    fn encoding_matches_the_spec_example() {
        // SPEC section 3 example, with the elided hashes filled in.
        let event = Event::TransfersAvailable(TransfersInfo {
            block_hash: "9f2c".to_owned(),
            block_number: 42,
            deploys: vec![DeployTransfers {
                deploy_id: "3045".to_owned(),
                transfers: vec![transfer()],
            }],
        });
        assert_eq!(
            encoded(&event),
            r#"{"event":"transfers-available","schema-version":1,"payload":{"block-hash":"9f2c","block-number":42,"deploys":[{"deploy-id":"3045","transfers":[{"from-addr":"1111","to-addr":"2222","amount":1000000,"success":true}]}]}}"#
        );
    }

    #[test]
    fn size_hint_covers_unescaped_encodings() {
        for event in samples() {
            let hint = ENVELOPE_LEN + event.kind().as_str().len() + event.payload_len_hint();
            let len = event.encode_with_seq(u64::MAX).len();
            assert!(hint >= len, "{:?}: hint {hint} < {len}", event.kind());
            // ... and is not wildly oversized either.
            assert!(
                hint <= 2 * len + 64,
                "{:?}: hint {hint} vs {len}",
                event.kind()
            );
        }
    }

    #[test]
    fn samples_cover_every_kind_in_order() {
        let kinds: Vec<EventKind> = samples().iter().map(Event::kind).collect();
        assert_eq!(kinds, EventKind::ALL.to_vec());
    }

    // ----- decoding ---------------------------------------------------------------------------

    #[test]
    fn decode_round_trips_every_kind() {
        for event in samples() {
            let mut buf = event.encode().to_vec();
            assert_eq!(
                decode(&mut buf),
                Ok(ServerMessage::Event {
                    event: event.clone(),
                    seq: None
                }),
                "{:?}",
                event.kind()
            );
        }
    }

    #[test]
    fn decode_round_trips_every_kind_with_seq() {
        for seq in [0, 7, u64::MAX] {
            for event in samples() {
                let mut buf = event.encode_with_seq(seq).to_vec();
                assert_eq!(
                    decode(&mut buf),
                    Ok(ServerMessage::Event {
                        event: event.clone(),
                        seq: Some(seq)
                    }),
                    "{:?} seq {seq}",
                    event.kind()
                );
            }
        }
    }

    #[test]
    fn decode_round_trips_escaped_strings() {
        let event = Event::NodeStarted {
            address: "a\"b\\c\n\t\u{0}\u{1f}é😀/".to_owned(),
        };
        let mut buf = event.encode().to_vec();
        assert_eq!(
            decode(&mut buf),
            Ok(ServerMessage::Event { event, seq: None })
        );
    }

    #[test]
    fn decode_started_and_lagged() {
        assert_eq!(
            decode(&mut started_message().to_vec()),
            Ok(ServerMessage::Started)
        );
        assert_eq!(
            decode(&mut lagged_message(3, 42).to_vec()),
            Ok(ServerMessage::Lagged {
                missed: 3,
                resume_seq: 42
            })
        );
        assert_eq!(
            decode(&mut lagged_message(u64::MAX, u64::MAX).to_vec()),
            Ok(ServerMessage::Lagged {
                missed: u64::MAX,
                resume_seq: u64::MAX
            })
        );
    }

    #[test]
    fn decode_accepts_any_key_order_whitespace_and_unknown_keys() {
        let message = r#" {
            "payload" : { "sender":"04ab", "future-field":[1,{"x":null}], "block-hash":"c0ffee" },
            "seq" : 9,
            "extra" : true,
            "schema-version" : 1,
            "event" : "block-approval-received"
        } "#;
        assert_eq!(
            decode_str(message),
            Ok(ServerMessage::Event {
                event: Event::BlockApprovalReceived {
                    block_hash: "c0ffee".to_owned(),
                    sender: "04ab".to_owned()
                },
                seq: Some(9)
            })
        );
        assert_eq!(
            decode_str(r#"{"schema-version":1,"event":"started","payload":{}}"#),
            Ok(ServerMessage::Started)
        );
        assert_eq!(
            decode_str(
                r#"{"payload":{"resume-seq":42,"missed":3,"why":"slow"},"event":"lagged","schema-version":1}"#
            ),
            Ok(ServerMessage::Lagged {
                missed: 3,
                resume_seq: 42
            })
        );
    }

    #[test]
    fn decode_treats_absent_transfers_and_null_transfers_as_none() {
        let message = r#"{"event":"block-added","schema-version":1,"payload":{"block-hash":"h","block-number":1,"timestamp":2,"parent-hashes":[],"justification-hashes":[],"deploys":[{"id":"i","cost":1,"deployer":"d","errored":false},{"id":"j","cost":2,"deployer":"e","errored":true,"transfers":null}],"creator":"c","seq-num":4}}"#;
        let Ok(ServerMessage::Event {
            event: Event::BlockAdded(block),
            seq: None,
        }) = decode_str(message)
        else {
            panic!("not decoded as block-added: {:?}", decode_str(message));
        };
        assert_eq!(block.deploys.len(), 2);
        assert_eq!(block.deploys[0].transfers, None);
        assert_eq!(block.deploys[1].transfers, None);
    }

    // ----- decode errors ------------------------------------------------------------------------

    #[test]
    fn error_unsupported_schema_version() {
        assert_eq!(
            decode_str(r#"{"event":"block-added","schema-version":2,"payload":{}}"#),
            Err(DecodeError::UnsupportedSchemaVersion(2))
        );
        assert_eq!(
            decode_str(r#"{"event":"started","schema-version":0}"#),
            Err(DecodeError::UnsupportedSchemaVersion(0))
        );
        // Checked before the event name: a newer schema may have newer events.
        assert_eq!(
            decode_str(r#"{"event":"block-deleted","schema-version":3,"payload":{}}"#),
            Err(DecodeError::UnsupportedSchemaVersion(3))
        );
    }

    #[test]
    fn error_missing_or_ill_typed_schema_version() {
        for message in [
            r#"{"event":"started"}"#,
            r#"{"event":"started","schema-version":"1"}"#,
            r#"{"event":"started","schema-version":1.0}"#,
            r#"{"event":"started","schema-version":-1}"#,
            r#"{"event":"started","schema-version":null}"#,
        ] {
            assert_eq!(
                decode_str(message),
                Err(DecodeError::MissingField("schema-version")),
                "{message}"
            );
        }
    }

    #[test]
    fn error_unknown_event() {
        assert_eq!(
            decode_str(r#"{"event":"block-deleted","schema-version":1,"payload":{}}"#),
            Err(DecodeError::UnknownEvent("block-deleted".to_owned()))
        );
        // Names are case-sensitive, and the seed's American spelling is not ours.
        assert_eq!(
            decode_str(r#"{"event":"block-finalized","schema-version":1,"payload":{}}"#),
            Err(DecodeError::UnknownEvent("block-finalized".to_owned()))
        );
        assert_eq!(
            decode_str(r#"{"event":"Block-Added","schema-version":1,"payload":{}}"#),
            Err(DecodeError::UnknownEvent("Block-Added".to_owned()))
        );
    }

    #[test]
    fn error_missing_or_ill_typed_event() {
        assert_eq!(
            decode_str(r#"{"schema-version":1,"payload":{}}"#),
            Err(DecodeError::MissingField("event"))
        );
        assert_eq!(
            decode_str(r#"{"event":7,"schema-version":1}"#),
            Err(DecodeError::MissingField("event"))
        );
        assert_eq!(decode_str("{}"), Err(DecodeError::MissingField("event")));
    }

    #[test]
    fn error_not_json() {
        for message in [
            "hello",
            "{event}",
            "{\"event\":}",
            "[1,]",
            "{\"a\":1}}",
            "\u{0}",
        ] {
            assert!(
                matches!(decode_str(message), Err(DecodeError::Json(_))),
                "{message:?}: {:?}",
                decode_str(message)
            );
        }
        // Invalid UTF-8 inside a string.
        let mut bytes = br#"{"event":"started","schema-version":1,"x":"\xff"}"#.to_vec();
        assert!(matches!(decode(&mut bytes), Err(DecodeError::Json(_))));
    }

    #[test]
    fn error_not_an_object() {
        for message in ["[1,2]", "[]", r#""started""#, "42", "null", "true"] {
            assert_eq!(
                decode_str(message),
                Err(DecodeError::NotAnObject),
                "{message}"
            );
        }
    }

    #[test]
    fn error_missing_payload() {
        for kind in EventKind::ALL {
            let message = format!(r#"{{"event":"{kind}","schema-version":1}}"#);
            assert_eq!(
                decode_str(&message),
                Err(DecodeError::MissingField("payload")),
                "{kind}"
            );
        }
        assert_eq!(
            decode_str(r#"{"event":"lagged","schema-version":1}"#),
            Err(DecodeError::MissingField("payload"))
        );
    }

    /// Asserts `InvalidPayload` for `event`, with a reason containing `needle`.
    fn assert_invalid_payload(message: &str, event: &str, needle: &str) {
        match decode_str(message) {
            Err(DecodeError::InvalidPayload {
                event: got_event,
                reason,
            }) => {
                assert_eq!(got_event, event, "{message}");
                assert!(
                    reason.contains(needle),
                    "{message}: reason {reason:?} lacks {needle:?}"
                );
            }
            other => panic!("{message}: expected InvalidPayload, got {other:?}"),
        }
    }

    #[test]
    fn error_payload_not_an_object() {
        for payload in ["null", "5", r#""h""#, "[]"] {
            assert_invalid_payload(
                &format!(r#"{{"event":"block-added","schema-version":1,"payload":{payload}}}"#),
                "block-added",
                "payload is not a JSON object",
            );
        }
        assert_invalid_payload(
            r#"{"event":"lagged","schema-version":1,"payload":[3,42]}"#,
            "lagged",
            "payload is not a JSON object",
        );
    }

    #[test]
    fn error_payload_missing_fields() {
        assert_invalid_payload(
            r#"{"event":"sent-approved-block","schema-version":1,"payload":{}}"#,
            "sent-approved-block",
            "missing field `block-hash`",
        );
        assert_invalid_payload(
            r#"{"event":"block-approval-received","schema-version":1,"payload":{"block-hash":"h"}}"#,
            "block-approval-received",
            "missing field `sender`",
        );
        assert_invalid_payload(
            r#"{"event":"node-started","schema-version":1,"payload":{"block-hash":"h"}}"#,
            "node-started",
            "missing field `address`",
        );
        assert_invalid_payload(
            r#"{"event":"block-finalised","schema-version":1,"payload":{"block-hash":"h","block-number":1,"timestamp":2,"parent-hashes":[],"justification-hashes":[],"deploys":[],"creator":"c"}}"#,
            "block-finalised",
            "missing field `seq-num`",
        );
        assert_invalid_payload(
            r#"{"event":"transfers-available","schema-version":1,"payload":{"block-hash":"h","block-number":1,"deploys":[{"deploy-id":"d"}]}}"#,
            "transfers-available",
            "missing field `transfers`",
        );
        assert_invalid_payload(
            r#"{"event":"lagged","schema-version":1,"payload":{"missed":3}}"#,
            "lagged",
            "missing field `resume-seq`",
        );
        assert_invalid_payload(
            r#"{"event":"lagged","schema-version":1,"payload":{"resume-seq":3}}"#,
            "lagged",
            "missing field `missed`",
        );
    }

    #[test]
    fn error_payload_wrong_field_types() {
        let block = |field: &str, value: &str| {
            let mut fields = vec![
                ("block-hash", r#""h""#),
                ("block-number", "1"),
                ("timestamp", "2"),
                ("parent-hashes", "[]"),
                ("justification-hashes", "[]"),
                ("deploys", "[]"),
                ("creator", r#""c""#),
                ("seq-num", "3"),
            ];
            for entry in &mut fields {
                if entry.0 == field {
                    entry.1 = value;
                }
            }
            let body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!(r#""{k}":{v}"#))
                .collect();
            format!(
                r#"{{"event":"block-created","schema-version":1,"payload":{{{}}}}}"#,
                body.join(",")
            )
        };
        // The fixture itself decodes.
        assert!(decode_str(&block("none", "")).is_ok());
        for (field, value, needle) in [
            ("block-hash", "5", "invalid type"),
            ("block-number", r#""42""#, "invalid type"),
            ("block-number", "-1", "invalid value"),
            ("block-number", "1.5", "invalid type"),
            ("timestamp", "null", "invalid type"),
            ("parent-hashes", r#""aa""#, "invalid type"),
            ("parent-hashes", "[1]", "invalid type"),
            ("justification-hashes", r#"[["v"]]"#, "invalid length 1"),
            (
                "justification-hashes",
                r#"[["v","h","x"]]"#,
                "invalid length 3",
            ),
            ("justification-hashes", r#"[{"v":"h"}]"#, "invalid type"),
            (
                "deploys",
                r#"[{"id":"i","cost":1,"deployer":"d","errored":"no"}]"#,
                "invalid type",
            ),
            (
                "deploys",
                r#"[{"id":"i","cost":1,"deployer":"d","errored":false,"transfers":{}}]"#,
                "invalid type",
            ),
            ("creator", "[]", "invalid type"),
            ("seq-num", "true", "invalid type"),
        ] {
            assert_invalid_payload(&block(field, value), "block-created", needle);
        }
        assert_invalid_payload(
            r#"{"event":"transfers-available","schema-version":1,"payload":{"block-hash":"h","block-number":1,"deploys":[{"deploy-id":"d","transfers":[{"from-addr":"a","to-addr":"b","amount":1,"success":1}]}]}}"#,
            "transfers-available",
            "invalid type",
        );
        assert_invalid_payload(
            r#"{"event":"lagged","schema-version":1,"payload":{"missed":"3","resume-seq":4}}"#,
            "lagged",
            "invalid type",
        );
        assert_invalid_payload(
            r#"{"event":"lagged","schema-version":1,"payload":{"missed":0,"resume-seq":4}}"#,
            "lagged",
            "`missed` must be at least 1",
        );
    }

    #[test]
    fn error_ill_typed_seq() {
        for seq in [r#""7""#, "-1", "1.5", "null"] {
            let message = format!(
                r#"{{"event":"sent-approved-block","schema-version":1,"seq":{seq},"payload":{{"block-hash":"h"}}}}"#
            );
            assert_eq!(
                decode_str(&message),
                Err(DecodeError::MissingField("seq")),
                "{seq}"
            );
        }
    }

    #[test]
    fn error_truncated_input() {
        for event in samples() {
            let full = event.encode_with_seq(5);
            for len in 0..full.len() {
                let mut prefix = full[..len].to_vec();
                let result = decode(&mut prefix);
                assert!(
                    matches!(result, Err(DecodeError::Json(_))),
                    "{:?} cut at {len}: {result:?}",
                    event.kind()
                );
            }
        }
        let mut lagged = lagged_message(3, 42).to_vec();
        lagged.truncate(lagged.len() - 1);
        assert!(matches!(decode(&mut lagged), Err(DecodeError::Json(_))));
    }

    #[test]
    fn error_empty_input() {
        assert!(matches!(decode(&mut []), Err(DecodeError::Json(_))));
        assert!(matches!(decode_str("   \n"), Err(DecodeError::Json(_))));
    }

    #[test]
    fn error_too_deep_does_not_overflow_the_stack() {
        for depth in [MAX_DEPTH + 1, 100_000, 1_000_000] {
            let mut message = "[".repeat(depth);
            message.push_str(&"]".repeat(depth));
            assert_eq!(
                decode_str(&message),
                Err(DecodeError::Json(format!(
                    "nested deeper than {MAX_DEPTH} levels"
                ))),
                "depth {depth}"
            );
            // Inside an unknown payload field of an otherwise valid event.
            let message = format!(
                r#"{{"event":"sent-approved-block","schema-version":1,"payload":{{"block-hash":"h","x":{message}}}}}"#
            );
            assert!(matches!(decode_str(&message), Err(DecodeError::Json(_))));
        }
        // Exactly at the limit is fine: the envelope and payload are two of the levels.
        let nested = format!("{}{}", "[".repeat(MAX_DEPTH - 2), "]".repeat(MAX_DEPTH - 2));
        let message = format!(
            r#"{{"event":"sent-approved-block","schema-version":1,"payload":{{"block-hash":"h","x":{nested}}}}}"#
        );
        assert!(decode_str(&message).is_ok(), "{:?}", decode_str(&message));
    }

    #[test]
    fn decode_error_messages() {
        assert_eq!(
            DecodeError::Json("Eof at character 0".to_owned()).to_string(),
            "invalid JSON: Eof at character 0"
        );
        assert_eq!(
            DecodeError::NotAnObject.to_string(),
            "message is not a JSON object"
        );
        assert_eq!(
            DecodeError::MissingField("payload").to_string(),
            "missing or ill-typed envelope field `payload`"
        );
        assert_eq!(
            DecodeError::UnknownEvent("x".to_owned()).to_string(),
            "unknown event type `x`"
        );
        assert_eq!(
            DecodeError::UnsupportedSchemaVersion(2).to_string(),
            "unsupported schema-version 2 (this decoder reads 1)"
        );
        assert_eq!(
            DecodeError::InvalidPayload {
                event: "block-added".to_owned(),
                reason: "missing field `seq-num`".to_owned()
            }
            .to_string(),
            "invalid `block-added` payload: missing field `seq-num`"
        );
    }

    // ----- EventKind ----------------------------------------------------------------------------

    #[test]
    fn event_kind_names_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "node-started",
                "sent-unapproved-block",
                "block-approval-received",
                "sent-approved-block",
                "approved-block-received",
                "entered-running-state",
                "block-created",
                "block-added",
                "block-finalised",
                "transfers-available",
            ]
        );
    }

    #[test]
    fn event_kind_index_is_position_in_all() {
        for (position, kind) in EventKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), position);
        }
        assert!(EventKind::ALL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn event_kind_unknown_name_lists_valid_names() {
        let err = "block-deleted".parse::<EventKind>().unwrap_err();
        assert_eq!(err, UnknownEventKind("block-deleted".to_owned()));
        assert_eq!(
            err.to_string(),
            "unknown event type `block-deleted`; valid types: node-started, sent-unapproved-block, \
             block-approval-received, sent-approved-block, approved-block-received, \
             entered-running-state, block-created, block-added, block-finalised, transfers-available"
        );
        // The server notices are not event types (`events=` cannot name them).
        for name in ["started", "lagged", "", "BLOCK-ADDED", " block-added"] {
            assert_eq!(
                name.parse::<EventKind>(),
                Err(UnknownEventKind(name.to_owned()))
            );
        }
    }

    // ----- property tests -----------------------------------------------------------------------

    fn arb_transfer() -> impl Strategy<Value = Transfer> {
        (
            any::<String>(),
            any::<String>(),
            any::<u64>(),
            any::<bool>(),
        )
            .prop_map(|(from_addr, to_addr, amount, success)| Transfer {
                from_addr,
                to_addr,
                amount,
                success,
            })
    }

    fn arb_deploy() -> impl Strategy<Value = DeployInfo> {
        (
            any::<String>(),
            any::<u64>(),
            any::<String>(),
            any::<bool>(),
            proptest::option::of(proptest::collection::vec(arb_transfer(), 0..3)),
        )
            .prop_map(|(id, cost, deployer, errored, transfers)| DeployInfo {
                id,
                cost,
                deployer,
                errored,
                transfers,
            })
    }

    fn arb_block() -> impl Strategy<Value = BlockInfo> {
        (
            any::<String>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<String>(), 0..4),
            proptest::collection::vec((any::<String>(), any::<String>()), 0..4),
            proptest::collection::vec(arb_deploy(), 0..4),
            any::<String>(),
            any::<u64>(),
        )
            .prop_map(
                |(
                    block_hash,
                    block_number,
                    timestamp,
                    parent_hashes,
                    justification_hashes,
                    deploys,
                    creator,
                    seq_num,
                )| BlockInfo {
                    block_hash,
                    block_number,
                    timestamp,
                    parent_hashes,
                    justification_hashes,
                    deploys,
                    creator,
                    seq_num,
                },
            )
    }

    fn arb_transfers_info() -> impl Strategy<Value = TransfersInfo> {
        (
            any::<String>(),
            any::<u64>(),
            proptest::collection::vec(
                (
                    any::<String>(),
                    proptest::collection::vec(arb_transfer(), 0..4),
                )
                    .prop_map(|(deploy_id, transfers)| DeployTransfers {
                        deploy_id,
                        transfers,
                    }),
                0..4,
            ),
        )
            .prop_map(|(block_hash, block_number, deploys)| TransfersInfo {
                block_hash,
                block_number,
                deploys,
            })
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            any::<String>().prop_map(|address| Event::NodeStarted { address }),
            any::<String>().prop_map(|block_hash| Event::SentUnapprovedBlock { block_hash }),
            (any::<String>(), any::<String>()).prop_map(|(block_hash, sender)| {
                Event::BlockApprovalReceived { block_hash, sender }
            }),
            any::<String>().prop_map(|block_hash| Event::SentApprovedBlock { block_hash }),
            any::<String>().prop_map(|block_hash| Event::ApprovedBlockReceived { block_hash }),
            any::<String>().prop_map(|block_hash| Event::EnteredRunningState { block_hash }),
            arb_block().prop_map(Event::BlockCreated),
            arb_block().prop_map(Event::BlockAdded),
            arb_block().prop_map(Event::BlockFinalised),
            arb_transfers_info().prop_map(Event::TransfersAvailable),
        ]
    }

    proptest! {
        #[test]
        fn prop_random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&mut bytes);
        }

        #[test]
        fn prop_mutated_messages_never_panic(
            event in arb_event(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut bytes = event.encode().to_vec();
            for (index, byte) in edits {
                let i = index.index(bytes.len());
                bytes[i] = byte;
            }
            let _ = decode(&mut bytes);
        }

        #[test]
        fn prop_block_events_round_trip(block in arb_block(), seq in proptest::option::of(any::<u64>())) {
            for event in [
                Event::BlockCreated(block.clone()),
                Event::BlockAdded(block.clone()),
                Event::BlockFinalised(block.clone()),
            ] {
                let mut bytes = match seq {
                    None => event.encode(),
                    Some(seq) => event.encode_with_seq(seq),
                }
                .to_vec();
                prop_assert_eq!(decode(&mut bytes), Ok(ServerMessage::Event { event, seq }));
            }
        }

        #[test]
        fn prop_transfers_events_round_trip(info in arb_transfers_info(), seq in proptest::option::of(any::<u64>())) {
            let event = Event::TransfersAvailable(info);
            let mut bytes = match seq {
                None => event.encode(),
                Some(seq) => event.encode_with_seq(seq),
            }
            .to_vec();
            prop_assert_eq!(decode(&mut bytes), Ok(ServerMessage::Event { event, seq }));
        }

        #[test]
        fn prop_any_event_round_trips_and_is_valid_json(event in arb_event(), seq in any::<u64>()) {
            let bytes = event.encode();
            // An independent parser agrees it is one JSON object with the envelope keys in order.
            let parsed: serde_json::Value = serde_json::from_slice(&bytes).expect("valid JSON");
            let keys: Vec<&str> = parsed.as_object().expect("object").keys().map(String::as_str).collect();
            prop_assert_eq!(keys.len(), 3);
            prop_assert!(bytes.starts_with(br#"{"event":""#), "envelope must start with the event key");
            prop_assert_eq!(decode(&mut bytes.to_vec()), Ok(ServerMessage::Event { event: event.clone(), seq: None }));
            prop_assert_eq!(
                decode(&mut event.encode_with_seq(seq).to_vec()),
                Ok(ServerMessage::Event { event, seq: Some(seq) })
            );
        }

        #[test]
        fn prop_lagged_round_trips(missed in 1..=u64::MAX, resume_seq in any::<u64>()) {
            prop_assert_eq!(
                decode(&mut lagged_message(missed, resume_seq).to_vec()),
                Ok(ServerMessage::Lagged { missed, resume_seq })
            );
        }
    }
}

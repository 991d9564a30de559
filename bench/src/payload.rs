//! The events every benchmark moves around, and the baseline's way of encoding them.
//!
//! [`block_added`] builds a realistic `block-added` event: 64-hex hashes, two parents, three
//! justifications and four deploys (about 1.1 KB of JSON). [`Envelope`] serializes any
//! [`Event`] with a plain `serde` derive, as the node herald replaces did once per client;
//! its bytes are identical to [`Event::encode`] (tested below), so both servers put the same
//! frames on the wire.

use herald_core::event::{BlockInfo, DeployInfo, Event, TransfersInfo};
use serde::Serialize;

/// A deterministic 64-character lowercase hex string (a hash or a key) from two seeds.
#[must_use]
pub fn hex64(a: u64, b: u64) -> String {
    let mut state = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.rotate_left(29);
    let mut out = String::with_capacity(64);
    for _ in 0..4 {
        // splitmix64: cheap, well mixed, deterministic.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.push_str(&format!("{z:016x}"));
    }
    out
}

/// The payload of a realistic block: number `number`, created at `timestamp_ms`.
#[must_use]
pub fn block_info(number: u64, timestamp_ms: u64) -> BlockInfo {
    BlockInfo {
        block_hash: hex64(number, 1),
        block_number: number,
        timestamp: timestamp_ms,
        parent_hashes: vec![hex64(number.wrapping_sub(1), 1), hex64(number, 2)],
        justification_hashes: (0..3)
            .map(|v| (hex64(v, 10), hex64(number.wrapping_sub(1), 20 + v)))
            .collect(),
        deploys: (0..4)
            .map(|d| DeployInfo {
                id: hex64(number, 100 + d),
                cost: 1_000 + 17 * d + number % 97,
                deployer: hex64(d, 200),
                errored: d == 3,
                transfers: None,
            })
            .collect(),
        creator: hex64(number % 3, 10),
        seq_num: number / 3,
    }
}

/// `block-added` with [`block_info`]`(number, timestamp_ms)`.
#[must_use]
pub fn block_added(number: u64, timestamp_ms: u64) -> Event {
    Event::BlockAdded(block_info(number, timestamp_ms))
}

/// The event envelope as a plain `serde` type: what a per-client serializer encodes.
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    /// The wire name of the event type.
    pub event: &'static str,
    /// Always 1.
    #[serde(rename = "schema-version")]
    pub schema_version: u64,
    /// The `seq=true` extension.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The payload, borrowed from the event.
    pub payload: PayloadRef<'a>,
}

/// A borrowed payload of any of the ten event types.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum PayloadRef<'a> {
    /// `node-started`.
    Address {
        /// The node's address.
        address: &'a str,
    },
    /// Ceremony events and `entered-running-state`.
    Hash {
        /// The block hash.
        #[serde(rename = "block-hash")]
        block_hash: &'a str,
    },
    /// `block-approval-received`.
    Approval {
        /// The block hash.
        #[serde(rename = "block-hash")]
        block_hash: &'a str,
        /// The approving validator.
        sender: &'a str,
    },
    /// `block-created`, `block-added`, `block-finalised`.
    Block(&'a BlockInfo),
    /// `transfers-available`.
    Transfers(&'a TransfersInfo),
}

impl<'a> Envelope<'a> {
    /// The envelope of `event`, with `"seq"` when `seq` is `Some`.
    #[must_use]
    pub fn new(event: &'a Event, seq: Option<u64>) -> Self {
        let payload = match event {
            Event::NodeStarted { address } => PayloadRef::Address { address },
            Event::SentUnapprovedBlock { block_hash }
            | Event::SentApprovedBlock { block_hash }
            | Event::ApprovedBlockReceived { block_hash }
            | Event::EnteredRunningState { block_hash } => PayloadRef::Hash { block_hash },
            Event::BlockApprovalReceived { block_hash, sender } => {
                PayloadRef::Approval { block_hash, sender }
            }
            Event::BlockCreated(b) | Event::BlockAdded(b) | Event::BlockFinalised(b) => {
                PayloadRef::Block(b)
            }
            Event::TransfersAvailable(t) => PayloadRef::Transfers(t),
        };
        Self {
            event: event.kind().as_str(),
            schema_version: 1,
            seq,
            payload,
        }
    }

    /// Compact JSON with `serde_json`, as the replaced node did once per client per event.
    #[must_use]
    pub fn to_json(&self) -> String {
        // Serializing borrowed strings and integers into a String cannot fail.
        serde_json::to_string(self).expect("envelope serialization cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::event::{DeployTransfers, Transfer};

    fn every_kind() -> Vec<Event> {
        let hash = hex64(7, 7);
        let mut finalised = block_info(9, 1_700_000_000_000);
        finalised.deploys[0].transfers = Some(vec![Transfer {
            from_addr: hex64(1, 1),
            to_addr: hex64(2, 2),
            amount: 5,
            success: true,
        }]);
        vec![
            Event::NodeStarted {
                address: "rnode://ab@127.0.0.1?protocol=40400&discovery=40404".into(),
            },
            Event::SentUnapprovedBlock {
                block_hash: hash.clone(),
            },
            Event::BlockApprovalReceived {
                block_hash: hash.clone(),
                sender: hex64(3, 3),
            },
            Event::SentApprovedBlock {
                block_hash: hash.clone(),
            },
            Event::ApprovedBlockReceived {
                block_hash: hash.clone(),
            },
            Event::EnteredRunningState { block_hash: hash },
            Event::BlockCreated(block_info(8, 1)),
            block_added(8, 2),
            Event::BlockFinalised(finalised.clone()),
            Event::TransfersAvailable(TransfersInfo {
                block_hash: finalised.block_hash.clone(),
                block_number: 9,
                deploys: vec![DeployTransfers {
                    deploy_id: finalised.deploys[0].id.clone(),
                    transfers: finalised.deploys[0].transfers.clone().unwrap(),
                }],
            }),
        ]
    }

    #[test]
    fn envelope_bytes_equal_herald_encoding_for_every_kind() {
        let events = every_kind();
        assert_eq!(events.len(), 10);
        for event in &events {
            assert_eq!(
                Envelope::new(event, None).to_json().as_bytes(),
                &event.encode()[..]
            );
            assert_eq!(
                Envelope::new(event, Some(41)).to_json().as_bytes(),
                &event.encode_with_seq(41)[..]
            );
        }
    }

    #[test]
    fn block_added_is_realistic() {
        let Event::BlockAdded(block) = block_added(5, 123) else {
            panic!("block_added must build a BlockAdded");
        };
        assert_eq!(block.deploys.len(), 4);
        assert_eq!(block.block_hash.len(), 64);
        assert!(
            block
                .block_hash
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(block.timestamp, 123);
        let len = block_added(5, 123).encode().len();
        assert!((900..1600).contains(&len), "encoded length {len}");
    }

    #[test]
    fn hex64_is_deterministic_and_distinct() {
        assert_eq!(hex64(1, 2), hex64(1, 2));
        assert_ne!(hex64(1, 2), hex64(2, 1));
        assert_eq!(hex64(0, 0).len(), 64);
    }
}

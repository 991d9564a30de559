//! herald-core: the event model, a lock-free broadcast ring with an atomically sealed
//! startup segment, and the event bus a node publishes into.
//!
//! * [`ring`]: the broadcast ring, generic over its payload. Its header explains the
//!   protocol.
//! * [`event`]: the ten event types and the wire format (SPEC sections 2 to 4).
//! * [`bus`]: the node-facing API: publish events, seal the startup segment, subscribe.
//! * [`transfers`]: transfer extraction on read-only nodes (`transfers-available`).

pub mod bus;
pub mod event;
pub mod ring;
mod sync;
#[cfg(not(herald_loom))]
pub mod transfers;

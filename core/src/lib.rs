//! herald-core: the event model, a lock-free broadcast ring with an atomically sealed
//! startup segment, and the event bus a node publishes into.
//!
//! * [`ring`]: the broadcast ring, generic over its payload. Its header explains the
//!   protocol.
//! * [`event`]: the ten event types and the wire format (SPEC sections 2 to 4).
//! * [`bus`]: the node-facing API: publish events, seal the startup segment, subscribe.
//! * [`transfers`]: transfer extraction on read-only nodes (`transfers-available`).

// Not built under `--cfg herald_loom` (loom-tests): its hook is a `std::sync::Arc<dyn _>`
// and loom's `Arc` cannot hold a trait object. The models check the ring it is built on.
#[cfg(not(herald_loom))]
pub mod bus;
pub mod event;
pub mod ring;
mod sync;
#[cfg(not(herald_loom))]
pub mod transfers;

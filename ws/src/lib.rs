//! herald-ws: the `/ws/events` WebSocket stream over a herald-core bus.

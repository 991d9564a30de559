//! Counters of a `/ws/events` server, rendered at `/metrics` in the Prometheus text format
//! (version 0.0.4).
//!
//! Every counter is a plain `AtomicU64` updated with `Relaxed` ordering: they are statistics,
//! read independently of one another, and no other memory is published through them.
//! Connections update them once per written batch, not once per event.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_core::bus::BusStats;

/// Counters of one server ([`crate::serve`]) or one [`crate::EventsService`].
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open streams (gauge): upgraded `/ws/events` connections, counted from the `101`.
    pub connections: AtomicU64,
    /// Streams opened since start (`101` answers).
    pub connections_total: AtomicU64,
    /// `/ws/events` requests refused with `503` because `max_connections` streams were open.
    pub rejected: AtomicU64,
    /// `/ws/events` requests refused with `400`, `405` or `426` (bad handshake or query).
    pub bad_requests: AtomicU64,
    /// Event messages written to clients (one per event per client; notices excluded).
    pub events_delivered: AtomicU64,
    /// Events skipped for clients that read too slowly (the sum of every `missed`).
    pub lagged_events: AtomicU64,
    /// `lagged` notices sent.
    pub lagged_notices: AtomicU64,
    /// Of `lagged_events`, those skipped because a live client fell more than `max_behind`
    /// behind (the rest: the bus lapped the client, or `from=` asked for more than it keeps).
    pub skipped_events: AtomicU64,
    /// Connections closed with 1008 because they lagged (`OnLag::Close`).
    pub lag_closes: AtomicU64,
    /// Connections dropped because they did not answer a ping in time.
    pub ping_timeouts: AtomicU64,
    /// Connections closed with 1002, 1007 or 1009 for what the client sent.
    pub protocol_errors: AtomicU64,
    /// Bytes of WebSocket frames written (headers included).
    pub bytes_sent: AtomicU64,
}

/// A plain copy of [`Metrics`] at one instant (each field read on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    /// As [`Metrics::connections`].
    pub connections: u64,
    /// As [`Metrics::connections_total`].
    pub connections_total: u64,
    /// As [`Metrics::rejected`].
    pub rejected: u64,
    /// As [`Metrics::bad_requests`].
    pub bad_requests: u64,
    /// As [`Metrics::events_delivered`].
    pub events_delivered: u64,
    /// As [`Metrics::lagged_events`].
    pub lagged_events: u64,
    /// As [`Metrics::lagged_notices`].
    pub lagged_notices: u64,
    /// As [`Metrics::skipped_events`].
    pub skipped_events: u64,
    /// As [`Metrics::lag_closes`].
    pub lag_closes: u64,
    /// As [`Metrics::ping_timeouts`].
    pub ping_timeouts: u64,
    /// As [`Metrics::protocol_errors`].
    pub protocol_errors: u64,
    /// As [`Metrics::bytes_sent`].
    pub bytes_sent: u64,
}

/// Adds `n` to a statistics counter.
#[inline]
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    // Relaxed: statistics only; nothing is published through the counter (module docs).
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    // Relaxed: statistics only (module docs).
    counter.load(Ordering::Relaxed)
}

impl Metrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            connections: get(&self.connections),
            connections_total: get(&self.connections_total),
            rejected: get(&self.rejected),
            bad_requests: get(&self.bad_requests),
            events_delivered: get(&self.events_delivered),
            lagged_events: get(&self.lagged_events),
            lagged_notices: get(&self.lagged_notices),
            skipped_events: get(&self.skipped_events),
            lag_closes: get(&self.lag_closes),
            ping_timeouts: get(&self.ping_timeouts),
            protocol_errors: get(&self.protocol_errors),
            bytes_sent: get(&self.bytes_sent),
        }
    }

    /// The Prometheus text exposition of these counters and of `bus`'s.
    pub fn render(&self, bus: BusStats) -> String {
        let m = self.snapshot();
        let rows: [(&str, &str, &str, u64); 18] = [
            (
                "herald_ws_connections",
                "gauge",
                "Open /ws/events streams.",
                m.connections,
            ),
            (
                "herald_ws_connections_total",
                "counter",
                "/ws/events streams opened (101 answers).",
                m.connections_total,
            ),
            (
                "herald_ws_rejected_total",
                "counter",
                "/ws/events requests refused with 503: connection limit reached.",
                m.rejected,
            ),
            (
                "herald_ws_bad_requests_total",
                "counter",
                "/ws/events requests refused with 400, 405 or 426.",
                m.bad_requests,
            ),
            (
                "herald_ws_events_delivered_total",
                "counter",
                "Event messages written to clients.",
                m.events_delivered,
            ),
            (
                "herald_ws_lagged_events_total",
                "counter",
                "Events skipped for clients that read too slowly.",
                m.lagged_events,
            ),
            (
                "herald_ws_lagged_notices_total",
                "counter",
                "lagged notices sent.",
                m.lagged_notices,
            ),
            (
                "herald_ws_skipped_events_total",
                "counter",
                "Of the lagged events, those skipped because a client fell more than max_behind behind.",
                m.skipped_events,
            ),
            (
                "herald_ws_lag_closes_total",
                "counter",
                "Connections closed with 1008 for lagging.",
                m.lag_closes,
            ),
            (
                "herald_ws_ping_timeouts_total",
                "counter",
                "Connections dropped for not answering a ping in time.",
                m.ping_timeouts,
            ),
            (
                "herald_ws_protocol_errors_total",
                "counter",
                "Connections closed with 1002, 1007 or 1009.",
                m.protocol_errors,
            ),
            (
                "herald_ws_bytes_sent_total",
                "counter",
                "Bytes of WebSocket frames written.",
                m.bytes_sent,
            ),
            (
                "herald_events_published_total",
                "counter",
                "Events published on the bus.",
                bus.published,
            ),
            (
                "herald_bus_subscribers",
                "gauge",
                "Live bus subscribers.",
                bus.subscribers as u64,
            ),
            (
                "herald_bus_lagged_events_total",
                "counter",
                "Sum of every missed count reported by the bus to any subscriber.",
                bus.lagged,
            ),
            (
                "herald_bus_startup_events",
                "gauge",
                "Startup events kept for replay.",
                bus.startup_len,
            ),
            (
                "herald_bus_startup_dropped",
                "gauge",
                "Startup events not kept: the startup segment was full.",
                bus.startup_dropped,
            ),
            (
                "herald_bus_startup_sealed",
                "gauge",
                "1 once the startup segment is sealed.",
                u64::from(bus.sealed),
            ),
        ];
        let mut out = String::with_capacity(rows.len() * 120);
        for (name, kind, help, value) in rows {
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_counter_in_text_format() {
        let m = Metrics::default();
        add(&m.connections, 2);
        add(&m.bytes_sent, 1234);
        let text = m.render(BusStats {
            published: 42,
            subscribers: 2,
            sealed: true,
            ..BusStats::default()
        });
        assert!(text.contains("\nherald_ws_connections 2\n"));
        assert!(text.contains("\nherald_ws_bytes_sent_total 1234\n"));
        assert!(text.contains(
            "# TYPE herald_events_published_total counter\nherald_events_published_total 42\n"
        ));
        assert!(text.contains("\nherald_bus_subscribers 2\n"));
        assert!(text.contains("\nherald_bus_startup_sealed 1\n"));
        // Every sample line is `name value` with a known TYPE above it.
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, 18);
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE")).count(), 18);
    }
}

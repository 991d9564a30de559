//! The parts of `herald-loadgen` worth testing on their own: reading a frame cheaply,
//! checking one connection's sequence numbers, and the summary line.
//!
//! The load generator connects with `seq=true`, so every event carries its global sequence
//! number. [`classify`] reads only the envelope head (`{"event":"<type>","schema-version":1,
//! "seq":<n>,...`, the byte order both servers write) and falls back to the full decoder of
//! `herald_core::event` for anything else, so a server that orders keys differently is still
//! read correctly, only slower. [`SeqTracker`] turns the sequence numbers of one connection
//! into counts of events, `lagged` notices, announced misses, unannounced gaps and
//! duplicates.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use hdrhistogram::Histogram;
use herald_core::event::{EventKind, ServerMessage, decode};

/// One frame, as far as the load generator cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// `{"event":"started",...}`.
    Started,
    /// A `lagged` notice.
    Lagged {
        /// Events skipped.
        missed: u64,
        /// Sequence number of the next event.
        resume_seq: u64,
    },
    /// One of the ten event types.
    Event {
        /// Its type.
        kind: EventKind,
        /// Its sequence number (`None` when the server did not send one).
        seq: Option<u64>,
    },
}

const HEAD: &[u8] = br#"{"event":""#;
const VERSION: &[u8] = br#","schema-version":1"#;
const SEQ: &[u8] = br#","seq":"#;

/// Reads the decimal integer at the start of `bytes`; `None` if there is none or it overflows.
fn leading_u64(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    bytes[..digits].iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The value of `"key":<integer>` somewhere in `bytes`.
fn field_u64(bytes: &[u8], key: &[u8]) -> Option<u64> {
    let at = bytes.windows(key.len()).position(|w| w == key)?;
    leading_u64(&bytes[at + key.len()..])
}

/// Reads one text frame; the fast path looks at the envelope head only.
///
/// # Errors
///
/// What the full decoder says about a frame that is not a valid herald message.
pub fn classify(payload: &[u8]) -> Result<Frame, String> {
    if let Some(frame) = classify_fast(payload) {
        return Ok(frame);
    }
    let mut copy = payload.to_vec();
    match decode(&mut copy) {
        Ok(ServerMessage::Started) => Ok(Frame::Started),
        Ok(ServerMessage::Lagged { missed, resume_seq }) => {
            Ok(Frame::Lagged { missed, resume_seq })
        }
        Ok(ServerMessage::Event { event, seq }) => Ok(Frame::Event {
            kind: event.kind(),
            seq,
        }),
        Err(e) => Err(e.to_string()),
    }
}

fn classify_fast(payload: &[u8]) -> Option<Frame> {
    let rest = payload.strip_prefix(HEAD)?;
    let name_len = rest.iter().position(|&b| b == b'"')?;
    let name = std::str::from_utf8(&rest[..name_len]).ok()?;
    let rest = rest[name_len + 1..].strip_prefix(VERSION)?;
    match name {
        "started" => (rest == b"}").then_some(Frame::Started),
        "lagged" => Some(Frame::Lagged {
            missed: field_u64(rest, br#""missed":"#)?,
            resume_seq: field_u64(rest, br#""resume-seq":"#)?,
        }),
        _ => {
            let kind = EventKind::from_str(name).ok()?;
            let seq = match rest.strip_prefix(SEQ) {
                Some(after) => Some(leading_u64(after)?),
                // No seq right after the version: let the full decoder look for it.
                None => return None,
            };
            Some(Frame::Event { kind, seq })
        }
    }
}

/// Checks the sequence numbers one connection receives.
///
/// After `started` comes the startup replay (which ends with `entered-running-state`), then
/// live events from the moment the client subscribed: the first live event may jump ahead
/// of the replay, every later one must be the previous one plus one, or the `resume-seq` of
/// a `lagged` notice received in between.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqTracker {
    /// The sequence number the next event must carry, once known.
    expected: Option<u64>,
    /// Whether the next event may jump ahead (first event, or right after the replay).
    may_jump: bool,
    /// Events received.
    pub events: u64,
    /// `lagged` notices received.
    pub lagged_notices: u64,
    /// Sum of their `missed`.
    pub missed: u64,
    /// Events skipped with no `lagged` notice to say so.
    pub gaps: u64,
    /// Events whose sequence number was not above the previous one.
    pub dups: u64,
    /// Event frames without a sequence number.
    pub unsequenced: u64,
}

impl SeqTracker {
    /// A tracker for a connection that has not received anything yet.
    #[must_use]
    pub fn new() -> Self {
        Self {
            may_jump: true,
            ..Self::default()
        }
    }

    /// Accounts for one frame.
    pub fn observe(&mut self, frame: Frame) {
        match frame {
            Frame::Started => self.may_jump = true,
            Frame::Lagged { missed, resume_seq } => {
                self.lagged_notices += 1;
                self.missed += missed;
                self.expected = Some(resume_seq);
                self.may_jump = false;
            }
            Frame::Event { kind, seq } => {
                self.events += 1;
                let Some(seq) = seq else {
                    self.unsequenced += 1;
                    return;
                };
                match self.expected {
                    Some(expected) if seq < expected => self.dups += 1,
                    Some(expected) if seq > expected && !self.may_jump => {
                        self.gaps += seq - expected;
                    }
                    _ => {}
                }
                if self.expected.is_none_or(|e| seq >= e) {
                    self.expected = Some(seq + 1);
                }
                self.may_jump = kind == EventKind::EnteredRunningState;
            }
        }
    }

    /// The counts gathered since `earlier`, a snapshot of this tracker.
    #[must_use]
    pub fn since(&self, earlier: &SeqTracker) -> SeqTracker {
        SeqTracker {
            events: self.events - earlier.events,
            lagged_notices: self.lagged_notices - earlier.lagged_notices,
            missed: self.missed - earlier.missed,
            gaps: self.gaps - earlier.gaps,
            dups: self.dups - earlier.dups,
            unsequenced: self.unsequenced - earlier.unsequenced,
            ..SeqTracker::new()
        }
    }

    /// Adds another connection's counts to these.
    pub fn add(&mut self, other: &SeqTracker) {
        self.events += other.events;
        self.lagged_notices += other.lagged_notices;
        self.missed += other.missed;
        self.gaps += other.gaps;
        self.dups += other.dups;
        self.unsequenced += other.unsequenced;
    }
}

/// The result of one load-generator run: printed as one `key=value` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Connections asked for.
    pub conns: usize,
    /// Connections that completed the upgrade.
    pub connected: usize,
    /// Length of the measurement window, seconds.
    pub secs: f64,
    /// Text frames received in the window (events and notices).
    pub frames: u64,
    /// Payload bytes received in the window.
    pub bytes: u64,
    /// Counts over the window.
    pub window: SeqTracker,
    /// Gaps and duplicates over the whole run (warm-up included).
    pub whole_run: SeqTracker,
    /// Connections that ended before the run did (closed by the server or failed).
    pub dropped: usize,
    /// Publish-to-receive latency percentiles in microseconds, p50, p99, p99.9: against the
    /// publish schedule when the rate is known ([`schedule_latency`]), else the fan-out
    /// spread ([`fanout_latency`]).
    pub latency_us: [u64; 3],
    /// Which of the two `latency_us` is: `schedule` or `fanout`.
    pub latency_kind: &'static str,
    /// Fan-out spread percentiles in microseconds ([`fanout_latency`]), always measured.
    pub fanout_us: [u64; 3],
    /// Latency samples taken.
    pub latency_samples: u64,
    /// Time each connection took to come up, in microseconds, p50, p99 and the maximum
    /// ([`upgrade_percentiles`]): from its first connect attempt to the `101`, retries
    /// included.
    pub upgrade_us: [u64; 3],
    /// Upgrade attempts that failed (timed out, refused, cut off) and were retried or given
    /// up on, over every connection.
    pub upgrade_retries: u64,
}

/// One latency sample: an event's sequence number and when a connection read it, in
/// nanoseconds since a common origin.
pub type Sample = (u64, u64);

/// Microseconds up to one hour, 3 significant figures. Fixed bounds: `saturating_record`
/// does not grow an auto-resizing histogram, it would clamp at the initial range.
fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .expect("1 us to 1 h at 3 significant figures is a valid histogram")
}

/// p50, p99 and p99.9 of `hist`, in its unit.
#[must_use]
pub fn percentiles(hist: &Histogram<u64>) -> [u64; 3] {
    [0.5, 0.99, 0.999].map(|q| hist.value_at_quantile(q))
}

/// Fan-out spread in microseconds: for each sample, the time a connection read the event
/// minus the earliest time any connection read the same event. It leaves out the first
/// delivery's own latency and needs no knowledge of when the event was published.
#[must_use]
pub fn fanout_latency(samples: &[Sample]) -> Histogram<u64> {
    let mut first: HashMap<u64, u64> = HashMap::new();
    for &(seq, at) in samples {
        first
            .entry(seq)
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
    }
    let mut hist = histogram();
    for &(seq, at) in samples {
        hist.saturating_record((at - first[&seq]) / 1_000);
    }
    hist
}

/// Latency against the publish schedule, in microseconds, for a publisher that publishes
/// event `seq` at `origin + seq / rate` (both simulated nodes do, after the seal). The
/// origin is unknown to the client; it is taken as the earliest `at - seq / rate` over all
/// samples, so the fastest delivery observed counts as 0 and every other one is measured
/// from there: queueing in the server, in the network and in the client are all included.
#[must_use]
pub fn schedule_latency(samples: &[Sample], rate: u64) -> Histogram<u64> {
    let due = |seq: u64| u64::try_from(u128::from(seq) * 1_000_000_000 / u128::from(rate.max(1)));
    let offsets: Vec<i128> = samples
        .iter()
        .map(|&(seq, at)| i128::from(at) - i128::from(due(seq).unwrap_or(u64::MAX)))
        .collect();
    let mut hist = histogram();
    if let Some(&origin) = offsets.iter().min() {
        for offset in offsets {
            hist.saturating_record(u64::try_from((offset - origin) / 1_000).unwrap_or(u64::MAX));
        }
    }
    hist
}

/// p50, p99 and the maximum of the connections' times to come up, in microseconds (all 0
/// when none came up).
#[must_use]
pub fn upgrade_percentiles(micros: &[u64]) -> [u64; 3] {
    let mut hist = histogram();
    for &us in micros {
        hist.saturating_record(us);
    }
    [
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max(),
    ]
}

impl Summary {
    /// Event frames per second over the window: the deliveries rate.
    #[must_use]
    pub fn events_per_s(&self) -> f64 {
        self.window.events as f64 / self.secs
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loadgen conns={} connected={} secs={:.2} frames={} frames_per_s={:.0} \
             events={} events_per_s={:.0} bytes_per_s={:.0} lagged_notices={} missed={} \
             gaps={} dups={} unsequenced={} dropped={} p50_us={} p99_us={} p999_us={} \
             latency_kind={} fan_p50_us={} fan_p99_us={} fan_p999_us={} latency_samples={} \
             upgrade_p50_us={} upgrade_p99_us={} upgrade_max_us={} upgrade_retries={}",
            self.conns,
            self.connected,
            self.secs,
            self.frames,
            self.frames as f64 / self.secs,
            self.window.events,
            self.events_per_s(),
            self.bytes as f64 / self.secs,
            self.window.lagged_notices,
            self.window.missed,
            self.whole_run.gaps,
            self.whole_run.dups,
            self.whole_run.unsequenced,
            self.dropped,
            self.latency_us[0],
            self.latency_us[1],
            self.latency_us[2],
            self.latency_kind,
            self.fanout_us[0],
            self.fanout_us[1],
            self.fanout_us[2],
            self.latency_samples,
            self.upgrade_us[0],
            self.upgrade_us[1],
            self.upgrade_us[2],
            self.upgrade_retries,
        )
    }
}

/// Reads `key=value` pairs from a summary line (for scripts and plots written in Rust).
#[must_use]
pub fn parse_summary_field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{Envelope, block_added};
    use herald_core::event::{Event, lagged_message, started_message};

    fn event(kind_event: &Event, seq: u64) -> Frame {
        classify(&kind_event.encode_with_seq(seq)).unwrap()
    }

    #[test]
    fn leading_integers_parse_up_to_u64_max_and_no_further() {
        assert_eq!(leading_u64(b"42,\"x\":1"), Some(42));
        assert_eq!(leading_u64(b"18446744073709551615}"), Some(u64::MAX));
        assert_eq!(leading_u64(b"18446744073709551616}"), None);
        assert_eq!(leading_u64(b"184467440737095516150"), None);
        assert_eq!(leading_u64(b"-1"), None);
        assert_eq!(leading_u64(b""), None);
    }

    #[test]
    fn classifies_every_message_kind() {
        assert_eq!(classify(&started_message()).unwrap(), Frame::Started);
        assert_eq!(
            classify(&lagged_message(3, 42)).unwrap(),
            Frame::Lagged {
                missed: 3,
                resume_seq: 42
            }
        );
        let block = block_added(7, 1);
        assert_eq!(
            event(&block, 12_345),
            Frame::Event {
                kind: EventKind::BlockAdded,
                seq: Some(12_345)
            }
        );
        assert_eq!(
            classify(&block.encode()).unwrap(),
            Frame::Event {
                kind: EventKind::BlockAdded,
                seq: None
            }
        );
    }

    #[test]
    fn fast_path_matches_both_servers_bytes() {
        let block = block_added(7, 1);
        let baseline = Envelope::new(&block, Some(9)).to_json();
        assert_eq!(
            classify_fast(baseline.as_bytes()),
            Some(Frame::Event {
                kind: EventKind::BlockAdded,
                seq: Some(9)
            })
        );
    }

    #[test]
    fn other_key_orders_use_the_full_decoder() {
        let reordered = br#"{"seq":5,"schema-version":1,"event":"sent-approved-block","payload":{"block-hash":"ab"}}"#;
        assert_eq!(classify_fast(reordered), None);
        assert_eq!(
            classify(reordered).unwrap(),
            Frame::Event {
                kind: EventKind::SentApprovedBlock,
                seq: Some(5)
            }
        );
        assert!(classify(b"not json").is_err());
        assert!(classify(br#"{"event":"nope","schema-version":1,"seq":1}"#).is_err());
    }

    fn ev(kind: EventKind, seq: u64) -> Frame {
        Frame::Event {
            kind,
            seq: Some(seq),
        }
    }

    #[test]
    fn replay_then_live_jump_is_allowed_and_later_gaps_are_counted() {
        let mut t = SeqTracker::new();
        t.observe(Frame::Started);
        t.observe(ev(EventKind::NodeStarted, 0));
        t.observe(ev(EventKind::ApprovedBlockReceived, 1));
        t.observe(ev(EventKind::EnteredRunningState, 2));
        // Live from the join point, far ahead of the replay: allowed.
        t.observe(ev(EventKind::BlockCreated, 500));
        t.observe(ev(EventKind::BlockAdded, 501));
        assert_eq!((t.gaps, t.dups), (0, 0));
        // Two events silently skipped.
        t.observe(ev(EventKind::BlockCreated, 504));
        assert_eq!(t.gaps, 2);
        // A duplicate.
        t.observe(ev(EventKind::BlockCreated, 504));
        assert_eq!(t.dups, 1);
        assert_eq!(t.events, 7);
    }

    #[test]
    fn announced_lag_is_not_a_gap() {
        let mut t = SeqTracker::new();
        t.observe(Frame::Started);
        t.observe(ev(EventKind::BlockAdded, 10));
        t.observe(Frame::Lagged {
            missed: 89,
            resume_seq: 100,
        });
        t.observe(ev(EventKind::BlockFinalised, 100));
        t.observe(ev(EventKind::BlockCreated, 101));
        assert_eq!(
            (t.events, t.lagged_notices, t.missed, t.gaps, t.dups),
            (3, 1, 89, 0, 0)
        );
        // A lag notice that resumes somewhere else than the next event is a gap.
        t.observe(Frame::Lagged {
            missed: 5,
            resume_seq: 107,
        });
        t.observe(ev(EventKind::BlockAdded, 110));
        assert_eq!(t.gaps, 3);
        let later = t.clone();
        t.observe(ev(EventKind::BlockFinalised, 111));
        let diff = t.since(&later);
        assert_eq!((diff.events, diff.gaps, diff.missed), (1, 0, 0));
    }

    #[test]
    fn summary_line_round_trips_its_fields() {
        let mut window = SeqTracker::new();
        window.events = 2_000;
        let s = Summary {
            conns: 100,
            connected: 100,
            secs: 2.0,
            frames: 2_001,
            bytes: 2_000_000,
            window,
            whole_run: SeqTracker::new(),
            dropped: 0,
            latency_us: [10, 200, 900],
            latency_kind: "schedule",
            fanout_us: [1, 2, 3],
            latency_samples: 50,
            upgrade_us: [900, 12_000, 31_000],
            upgrade_retries: 2,
        };
        let line = s.to_string();
        assert!(line.starts_with("loadgen conns=100 "));
        assert_eq!(parse_summary_field(&line, "events_per_s"), Some(1000.0));
        assert_eq!(parse_summary_field(&line, "p99_us"), Some(200.0));
        assert_eq!(parse_summary_field(&line, "gaps"), Some(0.0));
        assert_eq!(parse_summary_field(&line, "fan_p999_us"), Some(3.0));
        assert!(line.contains(" latency_kind=schedule "));
        assert_eq!(parse_summary_field(&line, "upgrade_p99_us"), Some(12_000.0));
        assert_eq!(parse_summary_field(&line, "upgrade_max_us"), Some(31_000.0));
        assert_eq!(parse_summary_field(&line, "upgrade_retries"), Some(2.0));
        assert_eq!(parse_summary_field(&line, "nope"), None);
    }

    #[test]
    fn upgrade_percentiles_take_the_slowest_connection_as_the_maximum() {
        // 99 connections up in 1 ms, one after a retry at 10.2 s.
        let mut micros = vec![1_000; 99];
        micros.push(10_200_000);
        let [p50, p99, max] = upgrade_percentiles(&micros);
        assert_eq!(p50, 1_000);
        assert_eq!(p99, 1_000);
        let hist = histogram();
        assert!(hist.equivalent(max, 10_200_000), "max {max}");
        assert_eq!(upgrade_percentiles(&[]), [0, 0, 0]);
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn fanout_latency_is_relative_to_the_first_reader() {
        // Event 0 read at 10 ms, 11 ms, 13 ms; event 64 at 20 ms and 20 ms.
        let samples = [
            (0, 10 * MS),
            (0, 11 * MS),
            (0, 13 * MS),
            (64, 20 * MS),
            (64, 20 * MS),
        ];
        let hist = fanout_latency(&samples);
        assert_eq!(hist.len(), 5);
        assert_eq!(hist.min(), 0);
        assert!(hist.equivalent(hist.max(), 3_000), "max {}", hist.max());
        // Far beyond the old auto-resize range: recorded, not clamped.
        let late = fanout_latency(&[(0, 0), (0, 60_000 * MS)]);
        assert!(
            late.equivalent(late.max(), 60_000_000),
            "max {}",
            late.max()
        );
        assert_eq!(hist.count_between(0, 0), 3);
    }

    #[test]
    fn schedule_latency_follows_the_rate() {
        // 1000 events/s: event k due at origin + k ms. Event 0 read 50 us after it was due
        // (the fastest), event 100 read 2 ms late, event 200 read 50 us late again.
        let origin = 1_000 * MS;
        let samples = [
            (0, origin + 50_000),
            (100, origin + 100 * MS + 2 * MS),
            (200, origin + 200 * MS + 50_000),
        ];
        let hist = schedule_latency(&samples, 1_000);
        assert_eq!(hist.len(), 3);
        assert_eq!(hist.count_between(0, 0), 2);
        assert!(hist.equivalent(hist.max(), 1_950), "max {}", hist.max());
        assert_eq!(percentiles(&hist)[0], 0);
        assert_eq!(schedule_latency(&[], 1_000).len(), 0);
    }
}

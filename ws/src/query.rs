//! The query string of `/ws/events`: the opt-in extensions of SPEC section 4.
//!
//! | parameter | values | effect |
//! |---|---|---|
//! | `events` | comma-separated event type names | only these types (replay included) |
//! | `seq` | `true` or `false` | `"seq": n` in every event envelope |
//! | `from` | a sequence number (`u64`), at most the next one | resume from that sequence number |
//!
//! Anything else is refused: an unknown parameter, a parameter given twice, an unknown event
//! name, an empty list, `seq` other than `true`/`false`, `from` that is not a non-negative
//! integer, or malformed percent-encoding. The error's message names the parameter and the
//! valid values, and becomes the body of the `400` answer. A `from` past the next sequence
//! number (events not published yet: typically a client resuming against a node that
//! restarted) is refused the same way once the request is answered
//! ([`QueryError::FromAhead`]), since waiting for it would skip everything before it.

use std::fmt;

use herald_core::event::{EventKind, UnknownEventKind};

/// The parameters `/ws/events` accepts, for error messages.
pub const PARAMETERS: &str = "events, seq, from";

/// A set of event types, one bit per [`EventKind::index`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EventFilter(u16);

impl EventFilter {
    /// Every event type: the default stream.
    pub const ALL: EventFilter = EventFilter((1 << EventKind::ALL.len()) - 1);

    /// No event type.
    pub const NONE: EventFilter = EventFilter(0);

    /// This set plus `kind`.
    #[must_use]
    pub const fn with(self, kind: EventKind) -> Self {
        EventFilter(self.0 | 1 << kind.index())
    }

    /// Whether `kind` is in the set.
    #[inline]
    #[must_use]
    pub const fn contains(self, kind: EventKind) -> bool {
        self.0 & (1 << kind.index()) != 0
    }
}

impl fmt::Debug for EventFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(
                EventKind::ALL
                    .iter()
                    .filter(|k| self.contains(**k))
                    .map(|k| k.as_str()),
            )
            .finish()
    }
}

/// What a client asked for in the query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extensions {
    /// Event types to deliver (`events=`); [`EventFilter::ALL`] when absent.
    pub events: EventFilter,
    /// Whether envelopes carry `"seq"` (`seq=true`).
    pub seq: bool,
    /// Resume point (`from=`); `None`: startup replay, then live.
    pub from: Option<u64>,
}

impl Default for Extensions {
    fn default() -> Self {
        Self {
            events: EventFilter::ALL,
            seq: false,
            from: None,
        }
    }
}

/// A query string `/ws/events` refuses. Its `Display` is the body of the `400` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// A parameter `/ws/events` does not know.
    UnknownParameter(String),
    /// A parameter given more than once.
    Repeated(&'static str),
    /// `events=` names an unknown event type.
    UnknownEvent(UnknownEventKind),
    /// `events=` is empty or has an empty name (`events=a,,b`).
    EmptyEventName,
    /// `seq=` is neither `true` nor `false`.
    BadSeq(String),
    /// `from=` is not a non-negative integer.
    BadFrom(String),
    /// Malformed percent-encoding in `parameter`.
    BadEncoding(String),
    /// `from=` is past the next sequence number: it asks for events not published yet (a
    /// client resuming against a node that restarted, whose numbers began again at 0).
    FromAhead {
        /// The `from=` asked for.
        from: u64,
        /// The next sequence number when the request was answered.
        next: u64,
    },
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Most errors are "bad query parameter `name`: problem; " and the valid values.
        let (name, problem) = match self {
            QueryError::UnknownEvent(e) => {
                return write!(f, "bad query parameter `events`: {e}");
            }
            QueryError::FromAhead { from, next } => {
                return write!(
                    f,
                    "bad query parameter `from`: {from} is past the newest event; valid \
                     values: 0 to {next} (the next sequence number; a node that restarted \
                     numbers its events from 0 again)"
                );
            }
            QueryError::UnknownParameter(name) => (name.as_str(), "unknown parameter".into()),
            QueryError::Repeated(name) => (*name, "given more than once".into()),
            QueryError::EmptyEventName => ("events", "empty event type name".into()),
            QueryError::BadSeq(v) => ("seq", format!("`{v}`")),
            QueryError::BadFrom(v) => ("from", format!("`{v}`")),
            QueryError::BadEncoding(name) => (name.as_str(), "malformed percent-encoding".into()),
        };
        write!(f, "bad query parameter `{name}`: {problem}; ")?;
        write_valid(f, name)
    }
}

impl std::error::Error for QueryError {}

/// `valid values: ...` for parameter `name`, or the valid parameters if it is none of them.
fn write_valid(f: &mut fmt::Formatter<'_>, name: &str) -> fmt::Result {
    match name {
        "events" => {
            f.write_str("valid types: ")?;
            write_kinds(f)
        }
        "seq" => f.write_str("valid values: true, false"),
        "from" => write!(
            f,
            "valid values: a sequence number, an integer from 0 to {}",
            u64::MAX
        ),
        _ => write!(f, "valid parameters: {PARAMETERS}"),
    }
}

fn write_kinds(f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for (i, kind) in EventKind::ALL.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        f.write_str(kind.as_str())?;
    }
    Ok(())
}

/// Parses the query string of a `/ws/events` request (`None`: no `?` at all).
///
/// # Errors
///
/// A [`QueryError`] naming the parameter and its valid values (module docs).
pub fn parse(query: Option<&str>) -> Result<Extensions, QueryError> {
    let mut ext = Extensions::default();
    let (mut seen_events, mut seen_seq, mut seen_from) = (false, false, false);
    let Some(query) = query else {
        return Ok(ext);
    };
    // Empty segments (`?`, `?a=1&&b=2`, a trailing `&`) carry nothing and are skipped.
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(raw_name).map_err(|()| QueryError::BadEncoding(raw_name.to_owned()))?;
        match name.as_str() {
            "events" => {
                once(&mut seen_events, "events")?;
                let value = decode(raw_value).map_err(|()| QueryError::BadEncoding(name))?;
                let mut set = EventFilter::NONE;
                for item in value.split(',') {
                    if item.is_empty() {
                        return Err(QueryError::EmptyEventName);
                    }
                    let kind = item
                        .parse::<EventKind>()
                        .map_err(QueryError::UnknownEvent)?;
                    set = set.with(kind);
                }
                ext.events = set;
            }
            "seq" => {
                once(&mut seen_seq, "seq")?;
                let value = decode(raw_value).map_err(|()| QueryError::BadEncoding(name))?;
                ext.seq = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(QueryError::BadSeq(value)),
                };
            }
            "from" => {
                once(&mut seen_from, "from")?;
                let value = decode(raw_value).map_err(|()| QueryError::BadEncoding(name))?;
                // `u64::from_str` accepts a leading `+`; a sequence number is plain digits.
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(QueryError::BadFrom(value));
                }
                ext.from = Some(value.parse().map_err(|_| QueryError::BadFrom(value))?);
            }
            _ => return Err(QueryError::UnknownParameter(name)),
        }
    }
    Ok(ext)
}

fn once(seen: &mut bool, name: &'static str) -> Result<(), QueryError> {
    if std::mem::replace(seen, true) {
        Err(QueryError::Repeated(name))
    } else {
        Ok(())
    }
}

/// Percent-decodes `s` (`%2C` is `,`; `+` is a space, as in HTML forms). `Err` on a `%`
/// not followed by two hex digits, or on bytes that are not UTF-8 once decoded.
fn decode(s: &str) -> Result<String, ()> {
    if !s.contains(['%', '+']) {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(())?;
                let hi = (hex[0] as char).to_digit(16).ok_or(())?;
                let lo = (hex[1] as char).to_digit(16).ok_or(())?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_stream_without_query() {
        assert_eq!(parse(None), Ok(Extensions::default()));
        assert_eq!(parse(Some("")), Ok(Extensions::default()));
        assert_eq!(parse(Some("&&")), Ok(Extensions::default()));
    }

    #[test]
    fn all_three_extensions() {
        let ext = parse(Some("events=block-added,block-finalised&seq=true&from=42")).unwrap();
        assert!(ext.events.contains(EventKind::BlockAdded));
        assert!(ext.events.contains(EventKind::BlockFinalised));
        assert!(!ext.events.contains(EventKind::BlockCreated));
        assert!(ext.seq);
        assert_eq!(ext.from, Some(42));
        assert!(!parse(Some("seq=false")).unwrap().seq);
        assert_eq!(
            parse(Some(&format!("from={}", u64::MAX))).unwrap().from,
            Some(u64::MAX)
        );
    }

    #[test]
    fn percent_encoded_comma() {
        let ext = parse(Some("events=block-added%2cnode-started")).unwrap();
        assert_eq!(
            ext.events,
            EventFilter::NONE
                .with(EventKind::BlockAdded)
                .with(EventKind::NodeStarted)
        );
    }

    #[test]
    fn every_kind_fits_the_mask() {
        for kind in EventKind::ALL {
            assert!(EventFilter::ALL.contains(kind));
            assert!(!EventFilter::NONE.contains(kind));
            assert!(EventFilter::NONE.with(kind).contains(kind));
        }
    }

    #[test]
    fn errors_name_the_parameter_and_valid_values() {
        let cases: &[(&str, &str)] = &[
            (
                "events=block-added,nope",
                "bad query parameter `events`: unknown event type `nope`; valid types: node-started, sent-unapproved-block, block-approval-received, sent-approved-block, approved-block-received, entered-running-state, block-created, block-added, block-finalised, transfers-available",
            ),
            (
                "events=",
                "bad query parameter `events`: empty event type name; valid types: node-started, sent-unapproved-block, block-approval-received, sent-approved-block, approved-block-received, entered-running-state, block-created, block-added, block-finalised, transfers-available",
            ),
            (
                "seq=yes",
                "bad query parameter `seq`: `yes`; valid values: true, false",
            ),
            (
                "seq",
                "bad query parameter `seq`: ``; valid values: true, false",
            ),
            (
                "from=-1",
                "bad query parameter `from`: `-1`; valid values: a sequence number, an integer from 0 to 18446744073709551615",
            ),
            (
                "from=18446744073709551616",
                "bad query parameter `from`: `18446744073709551616`; valid values: a sequence number, an integer from 0 to 18446744073709551615",
            ),
            (
                "from=%2B3",
                "bad query parameter `from`: `+3`; valid values: a sequence number, an integer from 0 to 18446744073709551615",
            ),
            (
                "colour=red",
                "bad query parameter `colour`: unknown parameter; valid parameters: events, seq, from",
            ),
            (
                "%zz=1",
                "bad query parameter `%zz`: malformed percent-encoding; valid parameters: events, seq, from",
            ),
            (
                "from=1&from=2",
                "bad query parameter `from`: given more than once; valid values: a sequence number, an integer from 0 to 18446744073709551615",
            ),
            (
                "seq=true&seq=true",
                "bad query parameter `seq`: given more than once; valid values: true, false",
            ),
            (
                "events=%zz",
                "bad query parameter `events`: malformed percent-encoding; valid types: node-started, sent-unapproved-block, block-approval-received, sent-approved-block, approved-block-received, entered-running-state, block-created, block-added, block-finalised, transfers-available",
            ),
        ];
        for (query, message) in cases {
            let err = parse(Some(query)).unwrap_err();
            assert_eq!(err.to_string(), *message, "query {query:?}");
        }
    }

    mod properties {
        //! Property tests: any input is answered without a panic, valid queries however
        //! encoded and ordered mean what they say, and an error names the bad parameter.

        use proptest::prelude::*;

        use super::*;

        /// `s` with each byte percent-encoded or not, at random (`%2c` or `%2C`).
        fn encoded(s: String) -> impl Strategy<Value = String> {
            let n = s.len();
            proptest::collection::vec((any::<bool>(), any::<bool>()), n).prop_map(move |how| {
                let mut out = String::new();
                for (b, (encode, upper)) in s.bytes().zip(how) {
                    match (encode, upper) {
                        (false, _) => out.push(b as char),
                        (true, true) => out.push_str(&format!("%{b:02X}")),
                        (true, false) => out.push_str(&format!("%{b:02x}")),
                    }
                }
                out
            })
        }

        /// A valid query: each parameter at most once, in any order, names and values
        /// percent-encoded at random, with empty segments anywhere. Also what it means.
        fn valid_query() -> impl Strategy<Value = (String, Extensions)> {
            let kinds = proptest::option::of(proptest::collection::vec(
                proptest::sample::select(EventKind::ALL.to_vec()),
                1..12,
            ));
            (
                kinds,
                proptest::option::of(any::<bool>()),
                proptest::option::of(any::<u64>()),
            )
                .prop_flat_map(|(kinds, seq, from)| {
                    let mut expected = Extensions::default();
                    let mut pairs: Vec<(String, String)> = Vec::new();
                    if let Some(kinds) = &kinds {
                        expected.events = kinds.iter().fold(EventFilter::NONE, |f, k| f.with(*k));
                        let list: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                        pairs.push(("events".into(), list.join(",")));
                    }
                    if let Some(seq) = seq {
                        expected.seq = seq;
                        pairs.push(("seq".into(), seq.to_string()));
                    }
                    if let Some(from) = from {
                        expected.from = Some(from);
                        pairs.push(("from".into(), from.to_string()));
                    }
                    let segments: Vec<_> = pairs
                        .into_iter()
                        .map(|(name, value)| {
                            (encoded(name), encoded(value)).prop_map(|(n, v)| format!("{n}={v}"))
                        })
                        .collect();
                    (
                        Just(expected),
                        segments,
                        proptest::collection::vec(0..4usize, 0..4),
                    )
                })
                .prop_flat_map(|(expected, segments, empties)| {
                    (Just(expected), Just(segments).prop_shuffle(), Just(empties))
                })
                .prop_map(|(expected, mut segments, empties)| {
                    for at in empties {
                        segments.insert(at.min(segments.len()), String::new());
                    }
                    (segments.join("&"), expected)
                })
        }

        proptest! {
            #[test]
            fn any_query_is_answered_and_errors_name_a_parameter(query in ".{0,200}") {
                if let Err(e) = parse(Some(&query)) {
                    let message = e.to_string();
                    prop_assert!(message.starts_with("bad query parameter `"), "{}", message);
                }
            }

            #[test]
            fn any_ascii_soup_is_answered(query in "[a-z=&%,+0-9A-F-]{0,80}") {
                if let Err(e) = parse(Some(&query)) {
                    prop_assert!(e.to_string().starts_with("bad query parameter `"));
                }
            }

            #[test]
            fn valid_queries_mean_what_they_say((query, expected) in valid_query()) {
                prop_assert_eq!(parse(Some(&query)), Ok(expected), "{}", query);
            }

            #[test]
            fn one_bad_parameter_is_the_one_named(
                (query, _) in valid_query(),
                bad in prop_oneof![
                    "[a-z]{1,8}".prop_filter("known", |n| !["events", "seq", "from"].contains(&n.as_str()))
                        .prop_map(|n| (n.clone(), format!("{n}=1"))),
                    "[a-z0-9]{0,6}".prop_filter("valid", |v| v != "true" && v != "false")
                        .prop_map(|v| ("seq".to_owned(), format!("seq={v}"))),
                    "[a-z+-]{1,6}[0-9]{0,3}".prop_map(|v| ("from".to_owned(), format!("from={v}"))),
                    "[1-9][0-9]{20,24}".prop_map(|v| ("from".to_owned(), format!("from={v}"))),
                    "[a-z]{1,10}".prop_filter("known", |n| n.parse::<EventKind>().is_err())
                        .prop_map(|n| ("events".to_owned(), format!("events=block-added,{n}"))),
                ],
                at in any::<prop::sample::Index>(),
            ) {
                let (name, segment) = bad;
                // The valid query without the parameter the bad one is about (a repeat
                // would be reported instead).
                let mut segments: Vec<&str> = query
                    .split('&')
                    .filter(|s| decode(s.split('=').next().unwrap_or("")).ok().as_deref() != Some(name.as_str()))
                    .collect();
                segments.insert(at.index(segments.len() + 1), &segment);
                let query = segments.join("&");
                let message = parse(Some(&query)).expect_err(&query).to_string();
                let prefix = format!("bad query parameter `{name}`");
                prop_assert!(message.starts_with(&prefix), "{} -> {}", query, message);
            }
        }
    }
}

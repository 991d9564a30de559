//! Every HTTP answer of the server (SPEC section 1), and the upgrade of a valid
//! `/ws/events` request into a stream.
//!
//! | request | answer |
//! |---|---|
//! | `GET /ws/events`, valid upgrade | `101`; the connection is spawned (`conn.rs`) |
//! | other method on `/ws/events` | `405`, `Allow: GET` |
//! | no `Connection: upgrade` + `Upgrade: websocket` (or not HTTP/1.1) | `426` |
//! | `Sec-WebSocket-Version` missing or not 13 | `426`, `Sec-WebSocket-Version: 13` |
//! | `Sec-WebSocket-Key` missing, or not 16 bytes in base64 | `400` |
//! | bad query ([`crate::query`]) | `400`, the body names the parameter and valid values |
//! | `max_connections` streams open, or shutting down | `503` |
//! | `GET`/`HEAD /metrics` | `200`, Prometheus text format |
//! | `GET`/`HEAD /healthz` | `200`, `ok` |
//! | other method on `/metrics`, `/healthz` | `405`, `Allow: GET, HEAD` |
//! | any other path | `404` |
//!
//! The checks run in the order of the table, so a request with several faults gets the
//! first one's answer. Every refusal has a short `text/plain` body saying why.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};

use crate::metrics;
use crate::query;
use crate::server::{Shared, StreamSlot};

/// The path of the stream.
pub const EVENTS_PATH: &str = "/ws/events";

type Answer = Response<Full<Bytes>>;

/// Answers `request` (module docs).
pub(crate) fn respond<B>(shared: &Arc<Shared>, request: Request<B>) -> Answer {
    match request.uri().path() {
        EVENTS_PATH => {
            let answer = events(shared, request);
            if answer.status().is_client_error() {
                metrics::add(&shared.metrics.bad_requests, 1);
            }
            answer
        }
        "/metrics" => match *request.method() {
            Method::GET | Method::HEAD => {
                let mut answer = text(StatusCode::OK, shared.metrics.render(shared.bus.stats()));
                answer.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                answer
            }
            _ => not_allowed("GET, HEAD"),
        },
        "/healthz" => match *request.method() {
            Method::GET | Method::HEAD => text(StatusCode::OK, "ok"),
            _ => not_allowed("GET, HEAD"),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: the event stream is at /ws/events\n",
        ),
    }
}

/// `/ws/events`: checks the handshake, then upgrades.
fn events<B>(shared: &Arc<Shared>, mut request: Request<B>) -> Answer {
    if request.method() != Method::GET {
        return not_allowed("GET");
    }
    let headers = request.headers();
    if request.version() != Version::HTTP_11
        || !has_token(headers, header::CONNECTION, "upgrade")
        || !has_token(headers, header::UPGRADE, "websocket")
    {
        let mut answer = text(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade required: /ws/events is a WebSocket endpoint (HTTP/1.1, Connection: Upgrade, Upgrade: websocket)\n",
        );
        let h = answer.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        return answer;
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut answer = text(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version: this server speaks Sec-WebSocket-Version 13\n",
        );
        let h = answer.headers_mut();
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        return answer;
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        None => {
            return text(
                StatusCode::BAD_REQUEST,
                "missing Sec-WebSocket-Key header\n",
            );
        }
        Some(key) if !valid_key(key.as_bytes()) => {
            return text(
                StatusCode::BAD_REQUEST,
                "bad Sec-WebSocket-Key header: must be 16 bytes encoded in base64\n",
            );
        }
        Some(_) => {}
    }
    let extensions = match query::parse(request.uri().query()) {
        Ok(extensions) => extensions,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // Subscribed before the check, so a shutdown from now on is seen by the connection.
    let shutdown = shared.shutdown.subscribe();
    if *shutdown.borrow() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "server shutting down\n");
    }
    let Some(slot) = StreamSlot::acquire(shared) else {
        metrics::add(&shared.metrics.rejected, 1);
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "connection limit reached: {} streams open\n",
                shared.config.max_connections
            ),
        );
    };
    // Subscribing now, before the 101 leaves, makes "live from the handshake" exact: an
    // event published once the client holds the 101 is delivered to it.
    let subscriber = match extensions.from {
        Some(seq) => shared.bus.subscribe_from(seq),
        None => shared.bus.subscribe(),
    };
    // A `from=` past the next sequence number asks for events not published yet: most
    // likely a client resuming against a node that restarted. Waiting for them would skip
    // everything up to there silently.
    let next = subscriber.join_point();
    if let Some(from) = extensions.from
        && from > next
    {
        return text(
            StatusCode::BAD_REQUEST,
            format!("{}\n", query::QueryError::FromAhead { from, next }),
        );
    }
    // The handshake is valid, so this cannot fail; if it did, it is the client's request.
    let (switching, upgrade) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(pair) => pair,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad handshake: {e}\n")),
    };
    metrics::add(&shared.metrics.connections_total, 1);
    let shared = shared.clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(websocket) => {
                let io = websocket.into_inner();
                crate::conn::run(io, subscriber, extensions, shutdown, slot, shared).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
        }
    });
    let (parts, _) = switching.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// Whether some `name` header holds `token` in its comma-separated list, ignoring case.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// RFC 6455 4.1: the key is 16 random bytes in base64, i.e. 22 base64 characters and `==`.
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Answer {
    let mut answer = Response::new(Full::new(body.into()));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer
}

fn not_allowed(allow: &'static str) -> Answer {
    let mut answer = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed: use {allow}\n"),
    );
    answer
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZ!=="));
        assert!(!valid_key(b""));
    }

    #[test]
    fn tokens() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        assert!(!has_token(&h, header::CONNECTION, "close"));
        assert!(!has_token(&h, header::UPGRADE, "websocket"));
    }
}

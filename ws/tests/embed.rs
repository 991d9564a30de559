//! Mounting `/ws/events` in someone else's server: [`EventsService`] in a plain hyper
//! server, and (feature `axum`) `axum_router` merged into an axum app. Both must serve the
//! whole stream, not just the handshake.

mod common;

use common::*;
use herald_ws::{EventsService, ServerConfig};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_service_serves_the_stream() {
    let bus = node(64);
    let service = EventsService::new(bus.tap(), ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = {
        let service = service.clone();
        tokio::spawn(async move {
            // Bounded: this test opens exactly four connections.
            for _ in 0..4 {
                let (tcp, _) = listener.accept().await.unwrap();
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        })
    };

    let answer = http(addr, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
    let answer = http(addr, "GET /elsewhere HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(answer.status, 404);

    let mut client = Client::connect(addr, "/ws/events?events=block-added").await;
    client.expect_started().await;
    for i in 0..9 {
        bus.publish(live_event(i));
    }
    let added: Vec<_> = [1, 4, 7].map(live_event).to_vec();
    client.expect_events(&added).await;
    let metrics = service.metrics();
    wait_until("3 events counted", async || {
        metrics.snapshot().events_delivered == 3
    })
    .await;
    assert_eq!(metrics.snapshot().connections, 1);

    // The embedder's shutdown closes the streams with 1001.
    service.shutdown();
    let close = client.skip_to(OP_CLOSE, 10).await;
    assert_eq!(close.close(), (1001, "server shutting down".to_owned()));
    client.send_close(1001, "").await;
    client.expect_end().await;
    assert!(service.wait_idle(DEADLINE).await);
    assert_eq!(bus.stats().subscribers, 0);
    // New streams are refused once shut down.
    let refused = Client::try_connect(addr, "/ws/events", None)
        .await
        .err()
        .expect("a stream was accepted after shutdown");
    assert_eq!(refused.status, 503);
    within("the accept loop", accept).await.unwrap();
}

#[cfg(feature = "axum")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_router_serves_the_stream_beside_the_app() {
    use axum::routing::get;

    let bus = node(64);
    let app = axum::Router::new()
        .route("/hello", get(|| async { "hello from the app" }))
        .merge(herald_ws::axum_router(bus.tap(), ServerConfig::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let answer = http(addr, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "hello from the app")
    );
    let answer = http(addr, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
    let answer = http(addr, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(sample(&answer.body, "herald_events_published_total"), 3);
    // The endpoint's own answers, not axum's defaults.
    let answer = http(addr, "GET /ws/events HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(answer.status, 426);
    let answer = http(addr, "POST /ws/events HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(answer.status, 405);

    let mut client = Client::connect(addr, "/ws/events?seq=true").await;
    client.expect_started().await;
    let live: Vec<_> = (0..20).map(live_event).collect();
    for e in &live {
        bus.publish(e.clone());
    }
    for (seq, e) in startup_events().iter().chain(&live).enumerate() {
        let (_, text) = client.message().await;
        assert_eq!(text.as_bytes(), &e.encode_with_seq(seq as u64)[..]);
    }
    client.send_close(1000, "").await;
    assert_eq!(client.skip_to(OP_CLOSE, 10).await.close().0, 1000);
    client.expect_end().await;
    wait_until("the subscriber dropped", async || {
        bus.stats().subscribers == 0
    })
    .await;
    server.abort();
}

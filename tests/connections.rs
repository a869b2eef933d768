//! The listener guard through the real binary: a request head has a deadline on every
//! listener, each listener caps the connections it holds, the admin listener answers while
//! the doors are full, and requests the doors cannot use at all (an unparsable head on the
//! doors that parse their own, CONNECT on the proxy door) get a problem+json with a reason.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// The standard test config with extra `[server]` keys.
fn config_with(up: u16, server_keys: &'static str) -> impl Fn((u16, u16, u16)) -> String {
    move |(m, p, a)| {
        test_config(up, m, p, a).replacen(
            "shutdown_grace = \"1s\"\n",
            &format!("shutdown_grace = \"1s\"\n{server_keys}\n"),
            1,
        )
    }
}

/// Reads until the peer closes (or 10 s pass); returns what came and when the close came.
fn read_to_close(s: &mut TcpStream) -> (String, Duration) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

/// Opens a connection and sends a head one header line every 200 ms, for at most 8 s, from
/// a thread; returns the read side.
fn dribble(port: u16, first_line: &'static str) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        if w.write_all(first_line.as_bytes()).is_err() {
            return;
        }
        for i in 0..40 {
            std::thread::sleep(Duration::from_millis(200));
            if w.write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                .is_err()
            {
                return;
            }
        }
    });
    s
}

#[tokio::test]
async fn a_slow_head_is_cut_at_the_deadline_with_408_on_every_listener() {
    let up = Upstream::start();
    let gw = Gateway::start_generated(config_with(up.port, "request_head_timeout = \"1s\""));
    for (listener, port, line) in [
        (
            "proxy",
            gw.proxy,
            "GET /local/a HTTP/1.1\r\nHost: localhost\r\n",
        ),
        ("mcp", gw.mcp, "POST /mcp HTTP/1.1\r\nHost: localhost\r\n"),
        (
            "admin",
            gw.admin,
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\n",
        ),
    ] {
        let mut s = dribble(port, line);
        let (got, took) = read_to_close(&mut s);
        assert_eq!(status_of(&got), 408, "{listener}: {got}");
        assert!(
            got.contains("application/problem+json"),
            "{listener}: {got}"
        );
        assert!(
            got.contains("\"reason\":\"head_timeout\""),
            "{listener}: {got}"
        );
        // Cut near the deadline, not after the 8 s the client would have gone on for.
        assert!(
            took < Duration::from_secs(4),
            "{listener}: the connection lived {took:?}"
        );
    }
    assert_eq!(up.count(), 0, "no slow request reached the upstream");
    let series = "api_connections_refused_total{listener=\"proxy\",reason=\"head_timeout\"}";
    assert_eq!(counter_at(&gw, series, 1.0).await, 1.0);
}

#[tokio::test]
async fn an_idle_connection_is_closed_without_an_answer_and_keepalive_wait_is_not_head_time() {
    let up = Upstream::start();
    let gw = Gateway::start_generated(config_with(up.port, "request_head_timeout = \"1s\""));
    // A connection that never sends a byte is closed at the deadline, with nothing written.
    let mut idle = TcpStream::connect(("127.0.0.1", gw.proxy)).unwrap();
    let (got, took) = read_to_close(&mut idle);
    assert_eq!(got, "", "an idle connection gets no response");
    assert!(took < Duration::from_secs(4), "it lived {took:?}");

    // A kept-alive connection may wait longer than the head deadline between requests: the
    // next head is timed from its first byte.
    let mut s = TcpStream::connect(("127.0.0.1", gw.proxy)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = b"GET /local/first HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for round in 0..2 {
        s.write_all(request).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert_eq!(status_of(&text), 200, "round {round}: {text}");
        std::thread::sleep(Duration::from_millis(1500));
    }
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_full_listener_answers_503_and_the_admin_listener_still_answers() {
    let up = Upstream::start();
    let gw = Gateway::start_generated(config_with(
        up.port,
        "max_connections = 3\nrequest_head_timeout = \"20s\"",
    ));
    // The start-up probe's connections (connect, then close) are gone: none open for 200 ms.
    let probe_open = "api_connections_open{listener=\"proxy\"}";
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(200) {
        if metric(&gw, probe_open).await != 0.0 {
            quiet = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Three connections that send nothing hold the proxy listener's three slots.
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", gw.proxy)).unwrap())
        .collect();
    // The gauge shows them once the gateway has accepted them.
    let open = "api_connections_open{listener=\"proxy\"}";
    assert_eq!(counter_at(&gw, open, 3.0).await, 3.0);

    // The start-up probe's connections (connect, then close) may still be taking a slot or
    // be refused as the held ones fill up: the refusal below is counted on top of theirs.
    let series = "api_connections_refused_total{listener=\"proxy\",reason=\"connection_limit\"}";
    let before = metric(&gw, series).await;
    let refused = raw_http(
        gw.proxy,
        b"GET /local/a HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(status_of(&refused), 503, "{refused}");
    assert!(
        refused.contains("\"reason\":\"connection_limit\""),
        "{refused}"
    );
    assert!(refused.contains("Retry-After: 1"), "{refused}");
    assert!(refused.contains("server.max_connections"), "{refused}");

    // The admin listener has its own slots: health and metrics answer.
    let health = raw_http(
        gw.admin,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert_eq!(status_of(&health), 200, "{health}");
    assert!(counter_at(&gw, series, before + 1.0).await >= before + 1.0);
    // The MCP listener has slots of its own too.
    let mcp = raw_http(gw.mcp, b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status_of(&mcp), 404, "{mcp}");

    // A slot freed is a slot used again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    let served = loop {
        let r = raw_http(
            gw.proxy,
            b"GET /local/a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        );
        if status_of(&r) != 503 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        status_of(&served),
        200,
        "the freed slots were not reused: {served}"
    );
    let seen: Vec<String> = up.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(
        seen.len(),
        1,
        "only the admitted request reached the upstream: {seen:?}"
    );
}

#[test]
fn an_unparsable_head_is_a_400_problem_on_the_mcp_and_admin_listeners() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let bad: [&[u8]; 3] = [
        // A space before the colon.
        b"POST /mcp HTTP/1.1\r\nHost : localhost\r\nContent-Length: 0\r\n\r\n",
        // NUL in a header value.
        b"POST /mcp HTTP/1.1\r\nHost: local\0host\r\nContent-Length: 0\r\n\r\n",
        // Not HTTP at all.
        b"\x16\x03\x01\x00\xa5 hello\r\n\r\n",
    ];
    for port in [gw.mcp, gw.admin] {
        for req in bad {
            let got = raw_http(port, req);
            assert_eq!(
                status_of(&got),
                400,
                "{:?}: {got}",
                String::from_utf8_lossy(req)
            );
            assert!(got.contains("application/problem+json"), "{got}");
            assert!(got.contains("\"reason\":\"malformed_request\""), "{got}");
            // The raw head (which may carry a credential) is not echoed back.
            assert!(!got.contains("localhost"), "{got}");
        }
    }
}

#[test]
fn connect_on_the_proxy_door_is_405_with_a_reason_and_closes() {
    let up = Upstream::start();
    let gw = Gateway::start(up.port);
    let mut s = TcpStream::connect(("127.0.0.1", gw.proxy)).unwrap();
    // A second request follows the CONNECT on the same connection: it must not be served.
    s.write_all(
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n\
          GET /local/a HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .unwrap();
    let (got, _) = read_to_close(&mut s);
    assert_eq!(status_of(&got), 405, "{got}");
    assert!(got.contains("\"reason\":\"connect_method\""), "{got}");
    assert_eq!(
        got.matches("HTTP/1.1 ").count(),
        1,
        "one answer, then close: {got}"
    );
    assert_eq!(up.count(), 0);
}

//! The listener's limits against a real `fieldgate run`: idle connections beyond the caps
//! never stop a valid request from being served, slow request heads and idle keep-alive
//! connections are closed on their own clocks, a full table of busy connections answers
//! 503, and a key gets at most `max_sessions_per_key` WebSocket sessions.
//! Other client addresses come from 127.0.0.0/8 (all loopback on Linux).

mod common;

use common::{keyed_gateway_with, rt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to the gateway from `from` (a 127.x.y.z address).
async fn connect_from(from: [u8; 4], port: u16) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::from((from, 0))).expect("bind");
    s.connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect")
}

/// Read until EOF or `limit`; returns what was read and whether the peer closed.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), false),
        }
    }
}

/// One keep-alive request on `s`; returns the response head and body.
async fn request(s: &mut TcpStream, path: &str, key: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nhost: gw\r\nx-api-key: {key}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answer within 10 s")
            .expect("read");
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return text.into_owned();
            }
        }
    }
}

async fn status_from(from: [u8; 4], port: u16, key: &str) -> String {
    let mut s = connect_from(from, port).await;
    request(&mut s, "/api/status", key).await
}

#[test]
fn idle_connections_beyond_the_caps_do_not_stop_a_valid_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, k) = keyed_gateway_with(
        dir.path(),
        200,
        "max_connections = 40\nmax_connections_per_ip = 8\nheader_timeout = \"60s\"\nidle_timeout = \"60s\"",
    );
    rt().block_on(async {
        // The review's attack: 200 idle connections from one host.
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(connect_from([127, 0, 0, 2], gw.port).await);
        }
        // The first 8 hold their slots; every other one is closed at once, answered 429
        // while few refusals are in flight (a flood of them is just closed).
        let mut answered = 0;
        for s in idle.iter_mut().skip(8) {
            let (text, closed) = read_to_close(s, Duration::from_secs(5)).await;
            assert!(closed, "an over-cap connection stayed open");
            if !text.is_empty() {
                assert!(text.starts_with("HTTP/1.1 429"), "{text}");
                assert!(text.contains("too_many_connections"), "{text}");
                answered += 1;
            }
        }
        assert!(answered >= 32, "only {answered} refusals were answered 429");
        let ok = status_from([127, 0, 0, 1], gw.port, &k.read).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

        // Idle connections from many addresses fill the table: the longest idle make room.
        let mut many = Vec::new();
        for host in 10..16u8 {
            for _ in 0..8 {
                many.push(connect_from([127, 0, 0, host], gw.port).await);
            }
        }
        let ok = status_from([127, 0, 0, 1], gw.port, &k.read).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let mut s = connect_from([127, 0, 0, 1], gw.port).await;
        let metrics = request(&mut s, "/metrics", &k.read).await;
        let count = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        assert_eq!(
            count("fieldgate_http_refused_total{reason=\"max_connections_per_ip\"}"),
            192,
            "{metrics}"
        );
        assert!(
            count("fieldgate_http_closed_total{reason=\"evicted\"}") >= 10,
            "{metrics}"
        );
        assert!(count("fieldgate_http_connections") <= 40, "{metrics}");
        drop((idle, many));
    });
    let log = gw.log();
    let lines = log.matches("refused").count();
    assert!(
        (1..=2).contains(&lines),
        "refusals are logged at a rate limit ({lines} lines):\n{log}"
    );
}

#[test]
fn slow_heads_and_idle_keep_alive_connections_are_closed_on_their_own_clocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, k) = keyed_gateway_with(
        dir.path(),
        200,
        "header_timeout = \"1s\"\nidle_timeout = \"6s\"",
    );
    rt().block_on(async {
        // Silent, and a head that never ends: closed after header_timeout (well before
        // idle_timeout).
        let mut silent = connect_from([127, 0, 0, 1], gw.port).await;
        let mut slow = connect_from([127, 0, 0, 1], gw.port).await;
        slow.write_all(b"GET /api/status HTTP/1.1\r\nhost: gw\r\nx-api-")
            .await
            .expect("write");
        for s in [&mut silent, &mut slow] {
            let (_, closed) = read_to_close(s, Duration::from_secs(4)).await;
            assert!(closed, "a connection without a complete head stayed open");
        }
        // A keep-alive connection outlives header_timeout between requests...
        let mut keep = connect_from([127, 0, 0, 1], gw.port).await;
        let first = request(&mut keep, "/api/status", &k.read).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let second = request(&mut keep, "/api/status", &k.read).await;
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
        // ...and is closed once idle for idle_timeout.
        let (_, closed) = read_to_close(&mut keep, Duration::from_secs(15)).await;
        assert!(closed, "an idle keep-alive connection stayed open");
    });
    let (_, metrics) = common::http_text(&gw.url("/metrics"), &k.read);
    assert!(
        metrics.contains("fieldgate_http_closed_total{reason=\"header_timeout\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fieldgate_http_closed_total{reason=\"idle_timeout\"} 1"),
        "{metrics}"
    );
}

/// A WebSocket session from `from` with `key`; on an HTTP refusal returns its status.
async fn session_from(
    from: [u8; 4],
    port: u16,
    key: &str,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("x-api-key", key.parse().expect("header"));
    let tcp = connect_from(from, port).await;
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((mut ws, _)) => {
            // The session is up once its welcome arrives.
            use futures_util::StreamExt;
            let first = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
            assert!(matches!(first, Ok(Some(Ok(_)))), "no welcome: {first:?}");
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket: {e}"),
    }
}

#[test]
fn sessions_per_key_are_capped_and_a_table_of_sessions_answers_503() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, k) = keyed_gateway_with(
        dir.path(),
        200,
        "max_connections = 3\nmax_sessions_per_key = 2",
    );
    rt().block_on(async {
        let a = session_from([127, 0, 0, 2], gw.port, &k.read)
            .await
            .expect("a");
        let b = session_from([127, 0, 0, 3], gw.port, &k.read)
            .await
            .expect("b");
        assert_eq!(
            session_from([127, 0, 0, 4], gw.port, &k.read).await.err(),
            Some(429),
            "a third session on one key"
        );
        // Another key still gets one; now three sessions hold every slot.
        let c = session_from([127, 0, 0, 4], gw.port, &k.admin)
            .await
            .expect("c");
        let busy = status_from([127, 0, 0, 1], gw.port, &k.read).await;
        assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
        // A closed session frees its slot and its place under the key's cap.
        drop(a);
        let t0 = Instant::now();
        loop {
            match session_from([127, 0, 0, 5], gw.port, &k.read).await {
                Ok(_) => break,
                Err(code) => {
                    assert!(
                        t0.elapsed() < Duration::from_secs(10),
                        "still refused: {code}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        drop((b, c));
    });
}

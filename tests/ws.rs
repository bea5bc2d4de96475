//! The WebSocket relay with real clients over TCP: auth before upgrade, the seed's
//! subprotocol echo, TMD envelopes, filters, gapless backfill, broadcast, audited
//! commands, slow clients, and bad input.

mod common;

use common::{http, http_async, keyed_gateway, ws_connect, ws_next, ws_next_of, ws_send};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt")
}

#[test]
fn upgrade_auth_subprotocol_and_live_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, k) = keyed_gateway(dir.path(), 50);
    rt().block_on(async {
        assert_eq!(
            ws_connect(gw.port, "/", None, Some("tech")).await.err(),
            Some(401)
        );
        assert_eq!(
            ws_connect(gw.port, "/ws", Some("fg_nope"), None)
                .await
                .err(),
            Some(401)
        );
        assert_eq!(
            ws_connect(gw.port, "/", Some(&k.write), Some("tech"))
                .await
                .err(),
            Some(403)
        );
        let (mut ws, proto) = ws_connect(gw.port, "/", Some(&k.read), Some("tech-laptop, other"))
            .await
            .expect("connect");
        assert_eq!(
            proto.as_deref(),
            Some("tech-laptop"),
            "first offered subprotocol echoed"
        );
        let welcome = ws_next(&mut ws).await.expect("welcome");
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["data"]["client"], "tech-laptop");
        assert_eq!(welcome["data"]["gateway"], "gw-test");
        let f = ws_next_of(&mut ws, "frame").await;
        assert!(f["data"]["seq"].as_u64().unwrap_or(0) > 0);
        assert!(
            f.get("message").is_some(),
            "TMD envelope has type, message, data"
        );
        let (_, conns) = http_async("GET", &gw.url("/api/connections"), Some(&k.read), None).await;
        let c = &conns["clients"][0];
        assert_eq!(c["name"], "tech-laptop");
        assert!(c["address"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.1:"));
        assert!(c["connected_at_ms"].as_i64().unwrap_or(0) > 0);
        // The relay's own latency: one observation per delivered frame, a histogram whose
        // buckets are cumulative and whose +Inf bucket is its count.
        let mut count = 0.0;
        for _ in 0..50 {
            let (_, text) = metrics_text(&gw, &k.read).await;
            let series = |name: &str| -> Vec<f64> {
                text.lines()
                    .filter_map(|l| l.strip_prefix(name))
                    .filter_map(|v| v.rsplit(' ').next()?.parse().ok())
                    .collect()
            };
            let buckets = series("fieldgate_relay_latency_seconds_bucket{le=");
            assert_eq!(buckets.len(), 15, "14 bounds and +Inf:\n{text}");
            assert!(
                buckets.windows(2).all(|w| w[0] <= w[1]),
                "cumulative: {buckets:?}"
            );
            count = series("fieldgate_relay_latency_seconds_count ")
                .first()
                .copied()
                .unwrap_or(f64::NAN);
            assert_eq!(buckets.last(), Some(&count));
            assert!(text.contains("# TYPE fieldgate_relay_latency_seconds histogram"));
            if count >= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(count >= 1.0, "the delivered frame was observed");
        // api_key query parameter (browsers) works too.
        let url = format!("/ws?api_key={}", k.read);
        assert!(ws_connect(gw.port, &url, None, None).await.is_ok());
        // A client's close is answered with the server's close (the handshake completes).
        ws.close(None).await.expect("close");
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(m) = ws.next().await {
                match m {
                    Ok(Message::Close(_)) => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
            false
        })
        .await;
        assert_eq!(answered, Ok(true), "the gateway answered the close");
    });
}

/// `GET /metrics`: status and text.
async fn metrics_text(gw: &common::Gateway, key: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(gw.url("/metrics"))
        .header("x-api-key", key)
        .send()
        .await
        .expect("metrics");
    (r.status().as_u16(), r.text().await.expect("text"))
}

#[test]
fn backfill_then_live_is_exactly_contiguous() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, k) = keyed_gateway(dir.path(), 5);
    let st = gw.status_until(Duration::from_secs(10), |s| {
        s["journal"]["last_seq"].as_u64().unwrap_or(0) >= 300
    });
    let start_last = st["journal"]["last_seq"].as_u64().unwrap_or(0);
    rt().block_on(async {
        let (mut ws, _) = ws_connect(gw.port, "/ws", Some(&k.read), None)
            .await
            .expect("connect");
        ws_send(
            &mut ws,
            json!({"type": "subscribe", "data": {"from_seq": 1}}),
        )
        .await;
        let mut expect = 1u64;
        let mut subscribed = false;
        while expect <= start_last + 400 {
            let m = ws_next(&mut ws).await.expect("open");
            match m["type"].as_str() {
                Some("subscribed") => subscribed = true,
                Some("frame") if subscribed => {
                    let seq = m["data"]["seq"].as_u64().expect("seq");
                    assert_eq!(seq, expect, "gap or duplicate at the replay/live seam");
                    expect += 1;
                }
                Some("lagged") => {
                    panic!("a from_seq client must recover from the journal, not lag")
                }
                _ => {}
            }
        }
    });
}

#[test]
fn filters_ping_broadcast_command_and_bad_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, k) = keyed_gateway(dir.path(), 20);
    rt().block_on(async {
        let (mut a, _) = ws_connect(gw.port, "/ws", Some(&k.publish), Some("a"))
            .await
            .expect("a");
        let (mut b, _) = ws_connect(gw.port, "/ws", Some(&k.read), Some("b"))
            .await
            .expect("b");
        ws_send(
            &mut b,
            json!({"type": "subscribe", "data": {"kinds": ["gps"], "vehicles": ["van-1"]}}),
        )
        .await;
        ws_next_of(&mut b, "subscribed").await;
        for _ in 0..10 {
            let f = ws_next_of(&mut b, "frame").await;
            assert_eq!(f["data"]["kind"], "gps");
        }
        ws_send(&mut b, json!({"type": "ping", "data": {"n": 7}})).await;
        assert_eq!(ws_next_of(&mut b, "pong").await["data"]["n"], 7);

        // Malformed input: an error reply, and the connection stays usable.
        for bad in [
            "{",
            "[]",
            "null",
            "{\"type\": 5}",
            "{\"type\":\"subscribe\",\"data\":{\"kinds\":\"gps\"}}",
            "{\"type\":\"warp\"}",
            "{\"type\":\"ping\",\"extra\":1}",
        ] {
            b.send(Message::Text(bad.into())).await.expect("send");
            let e = ws_next_of(&mut b, "error").await;
            assert!(
                e["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{bad}: {e}"
            );
        }
        b.send(Message::Binary(vec![0xff, 0, 1].into()))
            .await
            .expect("send");
        ws_next_of(&mut b, "error").await;
        ws_send(&mut b, json!({"type": "ping"})).await;
        ws_next_of(&mut b, "pong").await;

        // Broadcast needs publish; a read key gets an error, a publish key reaches everyone.
        ws_send(&mut b, json!({"type": "broadcast", "data": "hi"})).await;
        ws_next_of(&mut b, "error").await;
        ws_send(
            &mut a,
            json!({"type": "broadcast", "data": {"text": "coffee break"}}),
        )
        .await;
        let got = ws_next_of(&mut b, "broadcast").await;
        assert_eq!(got["data"]["data"]["text"], "coffee break");
        assert_eq!(got["data"]["from"], "publisher");

        // Commands need control and are audited in the journal even when not deliverable.
        ws_send(
            &mut a,
            json!({"type": "command", "data": {"device": "sim-gps", "payload": {"reset": true}}}),
        )
        .await;
        assert!(ws_next_of(&mut a, "error").await["message"]
            .as_str()
            .unwrap_or("")
            .contains("control"));
        let (mut c, _) = ws_connect(gw.port, "/ws", Some(&k.control), Some("c"))
            .await
            .expect("c");
        ws_send(
            &mut c,
            json!({"type": "command", "data": {"device": "sim-gps", "payload": {"reset": true}}}),
        )
        .await;
        let reply = ws_next_of(&mut c, "error").await;
        assert!(
            reply["message"]
                .as_str()
                .unwrap_or("")
                .contains("no command route"),
            "{reply}"
        );
        let audit_seq = reply["data"]["audit_seq"].as_u64().expect("audited");
        let (_, q) = http_async(
            "GET",
            &gw.url("/api/frames?kind=command"),
            Some(&k.read),
            None,
        )
        .await;
        let audit = &q["frames"][0];
        assert_eq!(audit["seq"].as_u64(), Some(audit_seq));
        assert_eq!(audit["payload"]["by"], "controller");
        assert_eq!(audit["payload"]["payload"]["reset"], true);

        // Over 64 KiB: closed with 1009.
        let huge = format!(
            "{{\"type\":\"ping\",\"data\":\"{}\"}}",
            "x".repeat(70 * 1024)
        );
        let _ = b.send(Message::Text(huge.into())).await;
        assert_eq!(close_code(&mut b).await, Ok(Some(1009)));

        // Far over (2 MiB, past what the gateway reads at all): the connection ends, with
        // 1009 or a reset, and the gateway carries on.
        let (mut c, _) = ws_connect(gw.port, "/ws", Some(&k.read), None)
            .await
            .expect("connect");
        let _ = c.send(Message::Binary(vec![b'x'; 2 << 20].into())).await;
        let ended = close_code(&mut c).await;
        assert!(
            matches!(ended, Ok(None | Some(1009))),
            "a 2 MiB message must end the connection, got {ended:?}"
        );
        let (code, _) = http_async("GET", &gw.url("/api/status"), Some(&k.read), None).await;
        assert_eq!(code, 200);
    });
}

/// Read until the gateway ends the connection: `Ok(Some(code))` for a close frame,
/// `Ok(None)` when it ends without one (a reset), `Err` if it is still open after 10 s.
async fn close_code(ws: &mut common::Ws) -> Result<Option<u16>, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(Some(cf))) => return Some(u16::from(cf.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
}

#[test]
fn random_bytes_over_websocket_never_crash_the_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, k) = keyed_gateway(dir.path(), 50);
    rt().block_on(async {
        let (mut ws, _) = ws_connect(gw.port, "/ws", Some(&k.admin), None)
            .await
            .expect("connect");
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for i in 0..300 {
            let len = (x % 400) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let msg = if i % 2 == 0 {
                Message::Binary(bytes.into())
            } else {
                Message::Text(String::from_utf8_lossy(&bytes).into_owned().into())
            };
            ws.send(msg).await.expect("send");
        }
        ws_send(&mut ws, json!({"type": "ping", "data": "still here"})).await;
        assert_eq!(ws_next_of(&mut ws, "pong").await["data"], "still here");
    });
    let (code, _) = http("GET", &gw.url("/api/status"), Some(&k.read), None);
    assert_eq!(code, 200);
}

/// Frames one shed drops at least: the queue sheds past its 2,048-frame bound
/// (`relay::conn::CLIENT_QUEUE`) down to half of it.
const SHED_MIN: u64 = 2_048 / 2 + 1;

/// A reader that checks every live frame follows the one before it, and never lags.
async fn read_gapless(mut ws: common::Ws, stop: tokio::sync::watch::Receiver<bool>) -> u64 {
    let (mut last, mut received) = (0u64, 0u64);
    while !*stop.borrow() {
        let m = ws_next(&mut ws).await.expect("reading client open");
        match m["type"].as_str() {
            Some("frame") => {
                let seq = m["data"]["seq"].as_u64().expect("seq");
                assert!(
                    last == 0 || seq == last + 1,
                    "a reading client missed frames: {last} -> {seq}"
                );
                last = seq;
                received += 1;
            }
            Some("lagged") => panic!("a reading client lagged: {m}"),
            _ => {}
        }
    }
    received
}

#[test]
fn a_client_that_never_reads_is_lagged_then_closed_and_others_miss_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // ~1,000 frames/s: the stalled client's 2,048-frame queue overflows within seconds.
    let (gw, k) = keyed_gateway(dir.path(), 2);
    rt().block_on(async {
        // The stalled client: a 4 KiB receive buffer set before connecting (so the window
        // it advertises stays small), and no reads until the gateway has given up on it.
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let tcp = sock
            .connect(([127, 0, 0, 1], gw.port).into())
            .await
            .expect("connect");
        let mut req = format!("ws://127.0.0.1:{}/ws", gw.port)
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("x-api-key", k.read.parse().expect("header"));
        req.headers_mut()
            .insert("sec-websocket-protocol", "stalled".parse().expect("header"));
        let (mut stalled, _) = tokio_tungstenite::client_async(req, tcp)
            .await
            .expect("stalled client upgrade");
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut readers = Vec::new();
        for name in ["reader-a", "reader-b"] {
            let (ws, _) = ws_connect(gw.port, "/ws", Some(&k.read), Some(name))
                .await
                .expect("reader");
            readers.push(tokio::spawn(read_gapless(ws, stop.clone())));
        }
        // Three sheds (each drops at least SHED_MIN) within 30 s mark the client as
        // persistently slow.
        let t0 = std::time::Instant::now();
        let dropped = loop {
            let (_, conns) =
                http_async("GET", &gw.url("/api/connections"), Some(&k.read), None).await;
            let stalled_entry = conns["clients"]
                .as_array()
                .expect("clients")
                .iter()
                .find(|c| c["name"] == "stalled")
                .cloned();
            let dropped = stalled_entry
                .and_then(|c| c["dropped"].as_u64())
                .unwrap_or(0);
            if dropped >= 3 * SHED_MIN {
                break dropped;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the stalled client was never shed three times (dropped {dropped}): {conns}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Now it reads: what reached it is in order, the gaps are announced by `lagged`,
        // and the gateway's close (1008) comes after them.
        let (mut lagged, mut last, mut close) = (0u64, 0u64, None);
        let read = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(msg) = stalled.next().await {
                match msg {
                    Ok(Message::Text(t)) => {
                        let m: serde_json::Value = serde_json::from_str(&t).expect("json");
                        match m["type"].as_str() {
                            Some("lagged") => {
                                lagged += m["data"]["dropped"].as_u64().expect("dropped")
                            }
                            Some("frame") => {
                                let seq = m["data"]["seq"].as_u64().expect("seq");
                                assert!(seq > last, "out of order: {last} -> {seq}");
                                last = seq;
                            }
                            _ => {}
                        }
                    }
                    Ok(Message::Close(cf)) => {
                        close = cf.map(|c| u16::from(c.code));
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => panic!("stalled client: connection ended without a close: {e}"),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the stalled client was never closed");
        assert!(
            lagged >= SHED_MIN,
            "the stalled client was told of {lagged} dropped frames (gateway dropped {dropped})"
        );
        assert_eq!(close, Some(1008), "closed for being too slow");
        // The reading clients got every frame meanwhile, with no gap and no lag.
        stop_tx.send(true).expect("stop");
        for r in readers {
            let received = r.await.expect("reader");
            assert!(
                received > 1_000,
                "a reading client got only {received} frames"
            );
            eprintln!(
                "reading client: {received} frames, no gap; stalled client: {dropped} dropped, \
                 told of {lagged}, closed 1008 after {:?}",
                t0.elapsed()
            );
        }
        let (_, conns) = http_async("GET", &gw.url("/api/connections"), Some(&k.read), None).await;
        for c in conns["clients"].as_array().expect("clients") {
            assert_eq!(c["dropped"], 0, "a reading client lost frames: {c}");
        }
    });
}

#[test]
fn tail_prints_filtered_frames_from_a_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, k) = keyed_gateway(dir.path(), 20);
    gw.status_until(Duration::from_secs(10), |s| {
        s["journal"]["last_seq"].as_u64().unwrap_or(0) >= 10
    });
    let url = format!("ws://127.0.0.1:{}/ws", gw.port);
    let (code, out, err) = common::run_cli(&[
        "tail",
        "--url",
        &url,
        "--key",
        &k.read,
        "--kind",
        "gps",
        "--from-seq",
        "1",
        "--count",
        "20",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let frames: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(frames.len(), 20);
    assert!(frames.iter().all(|f| f["kind"] == "gps"));
    assert!(frames
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    assert!(
        frames[0]["seq"].as_u64() <= Some(2),
        "replay starts at the beginning"
    );
    let (code, _, err) =
        common::run_cli(&["tail", "--url", &url, "--key", "fg_bad", "--count", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("401"), "{err}");
    let (code, out, _) =
        common::run_cli(&["tail", "--url", &url, "--key", &k.read, "--count", "3"]);
    assert_eq!((code, out.lines().count()), (0, 3));
}

#[test]
fn tail_says_once_that_it_is_retrying_and_why_and_when_it_is_back() {
    use std::io::Read;
    let dir = tempfile::tempdir().expect("tempdir");
    // Something on the port that takes connections and drops them: tail's attempts fail,
    // and the test can count them.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let err_path = dir.path().join("tail.err");
    let mut tail = std::process::Command::new(common::bin())
        .args(["tail", "--url", &format!("ws://127.0.0.1:{port}/ws")])
        .args(["--key", "fg_test_key_0123456789", "--count", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn tail");
    let t0 = std::time::Instant::now();
    for attempt in 1..=3 {
        let (conn, _) = listener.accept().expect("tail connects");
        drop(conn);
        assert!(t0.elapsed() < Duration::from_secs(20), "attempt {attempt}");
    }
    drop(listener);
    let gw = common::Gateway::demo_on(&dir.path().join("journal"), port);
    let mut out = String::new();
    tail.stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("tail output");
    let status = tail.wait().expect("tail exits after --count 3");
    assert!(status.success());
    assert_eq!(out.lines().count(), 3, "{out}");
    let err = std::fs::read_to_string(&err_path).expect("stderr");
    let retrying: Vec<&str> = err.lines().filter(|l| l.contains("retrying")).collect();
    assert_eq!(
        retrying.len(),
        1,
        "said once, after 3 failed attempts: {err}"
    );
    assert!(
        retrying[0].contains(&format!("ws://127.0.0.1:{port}/ws: ")),
        "{err}"
    );
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("tail: connected to "))
            .count(),
        1,
        "{err}"
    );
    drop(gw);
}

//! The REST API over a real `fieldgate run`: a table of every route × (no key, wrong scope,
//! right scope), registry CRUD with validation, frame queries, metrics, and fuzz-style bad
//! bodies that must give JSON errors, never a crash.

mod common;

use common::{http, keyed_gateway};
use std::time::Duration;

#[test]
fn every_route_enforces_auth_and_scope() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, k) = keyed_gateway(dir.path(), 100);
    gw.status_until(Duration::from_secs(10), |s| {
        s["journal"]["last_seq"].as_u64().unwrap_or(0) >= 4
    });
    let dev = r#"{"id":"gps-9","name":"GPS nine","vehicle":"van-1","kind":"gps"}"#;
    let veh = r#"{"id":"van-9","name":"Van nine","plate":"HH-FG 9"}"#;
    // (method, path, body, key lacking the scope, key holding it, expected success)
    type Row<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, &'a str, u16);
    let table: Vec<Row> = vec![
        ("GET", "/api/status", None, &k.write, &k.read, 200),
        ("GET", "/api/user", None, "", &k.read, 200),
        ("GET", "/api/connections", None, &k.write, &k.read, 200),
        ("GET", "/api/frames?limit=5", None, &k.write, &k.read, 200),
        ("GET", "/metrics", None, &k.write, &k.read, 200),
        ("POST", "/api/devices", Some(dev), &k.read, &k.write, 201),
        ("GET", "/api/devices", None, &k.write, &k.read, 200),
        ("GET", "/api/devices/gps-9", None, &k.write, &k.read, 200),
        (
            "PUT",
            "/api/devices/gps-9",
            Some(dev),
            &k.read,
            &k.write,
            200,
        ),
        ("DELETE", "/api/devices/gps-9", None, &k.read, &k.write, 204),
        ("POST", "/api/vehicles", Some(veh), &k.read, &k.write, 201),
        ("GET", "/api/vehicles", None, &k.write, &k.read, 200),
        ("GET", "/api/vehicles/van-9", None, &k.write, &k.read, 200),
        (
            "PUT",
            "/api/vehicles/van-9",
            Some(veh),
            &k.read,
            &k.write,
            200,
        ),
        (
            "DELETE",
            "/api/vehicles/van-9",
            None,
            &k.read,
            &k.write,
            204,
        ),
    ];
    for (method, path, body, wrong, right, ok) in &table {
        let url = gw.url(path);
        let (code, err) = http(method, &url, None, *body);
        assert_eq!(code, 401, "{method} {path} without a key");
        assert_eq!(err["error"]["code"], "unauthorized", "{method} {path}");
        if !wrong.is_empty() {
            let (code, err) = http(method, &url, Some(wrong), *body);
            assert_eq!(code, 403, "{method} {path} with the wrong scope");
            assert_eq!(err["error"]["code"], "forbidden");
        }
        let (code, got) = http(method, &url, Some(right), *body);
        assert_eq!(code, *ok, "{method} {path} with the right scope: {got}");
    }
    let (code, _) = http("GET", &gw.url("/healthz"), None, None);
    assert_eq!(code, 200);
    let (code, _) = http("GET", &gw.url("/readyz"), None, None);
    assert_eq!(code, 200);
}

#[test]
fn registries_validate_and_show_live_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, k) = keyed_gateway(dir.path(), 50);
    gw.status_until(Duration::from_secs(10), |s| {
        s["journal"]["last_seq"].as_u64().unwrap_or(0) >= 10
    });
    let post = |path: &str, body: &str| http("POST", &gw.url(path), Some(&k.write), Some(body));
    assert_eq!(
        post("/api/vehicles", r#"{"id":"van-1","name":"Demo van"}"#).0,
        201
    );
    let (code, e) = post("/api/vehicles", r#"{"id":"van-1"}"#);
    assert_eq!((code, e["error"]["code"].as_str()), (409, Some("exists")));
    let (code, e) = post("/api/vehicles", r#"{"id":"van-2","colour":"red"}"#);
    assert_eq!(code, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("unknown field `colour`"),
        "{e}"
    );
    let (code, e) = post("/api/devices", r#"{"id":"d1","name":5}"#);
    assert_eq!(code, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("name: "),
        "{e}"
    );
    let (code, e) = post("/api/devices", r#"{"id":"bad id!"}"#);
    assert_eq!(code, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("id: "),
        "{e}"
    );
    let (code, e) = http(
        "PUT",
        &gw.url("/api/devices/d1"),
        Some(&k.write),
        Some(r#"{"id":"d2"}"#),
    );
    assert_eq!(code, 400, "{e}");
    let (code, e) = http("GET", &gw.url("/api/devices/nope"), Some(&k.read), None);
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // Live status derived from frames: the simulated van has a position and speed.
    let t0 = std::time::Instant::now();
    loop {
        let (code, v) = http("GET", &gw.url("/api/vehicles/van-1"), Some(&k.read), None);
        assert_eq!(code, 200);
        let live = &v["live"];
        if live["position"].is_array()
            && live["speed_kmh"].is_number()
            && live["last_seen_ms"].as_i64().unwrap_or(0) > 0
        {
            assert_eq!(v["name"], "Demo van");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no live status: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, list) = http("GET", &gw.url("/api/vehicles"), Some(&k.read), None);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
}

#[test]
fn frames_query_filters_and_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, k) = keyed_gateway(dir.path(), 20);
    gw.status_until(Duration::from_secs(10), |s| {
        s["journal"]["last_seq"].as_u64().unwrap_or(0) >= 60
    });
    let get = |q: &str| {
        http(
            "GET",
            &gw.url(&format!("/api/frames?{q}")),
            Some(&k.read),
            None,
        )
    };
    let (code, all) = get("limit=50");
    assert_eq!(code, 200);
    let frames = all["frames"].as_array().expect("frames");
    assert_eq!(frames.len(), 50);
    assert!(frames
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    assert!(all["next_seq"].as_u64().is_some());
    let (_, gps) = get("kind=gps&limit=20&from_seq=3");
    let gps = gps["frames"].as_array().expect("frames");
    assert!(
        !gps.is_empty()
            && gps
                .iter()
                .all(|f| f["kind"] == "gps" && f["seq"].as_u64() >= Some(3))
    );
    let (_, dev) = get("device=sim-obd&vehicle=van-1&limit=10");
    let dev = dev["frames"].as_array().expect("frames");
    assert!(
        !dev.is_empty() && dev.iter().all(|f| f["device"] == "sim-obd"),
        "{dev:?}"
    );
    let (_, none) = get("until=1000");
    assert_eq!(none["count"], 0);

    // A time window inside what is stored: frames before `since` and at or after `until`
    // exist, and exactly the ones in between come back.
    let stored: Vec<(u64, i64)> = frames
        .iter()
        .map(|f| {
            (
                f["seq"].as_u64().expect("seq"),
                f["ts_ms"].as_i64().expect("ts_ms"),
            )
        })
        .collect();
    let since = stored[15].1;
    let until = stored[35].1;
    let inside: Vec<u64> = stored
        .iter()
        .filter(|(_, ts)| (since..until).contains(ts))
        .map(|(seq, _)| *seq)
        .collect();
    assert!(
        stored.iter().any(|(_, ts)| *ts < since) && stored.iter().any(|(_, ts)| *ts >= until),
        "frames on both sides of the window: {stored:?}"
    );
    assert!(!inside.is_empty(), "frames inside the window: {stored:?}");
    let first = stored[0].0;
    let (code, window) = get(&format!(
        "from_seq={first}&since={since}&until={until}&limit=50"
    ));
    assert_eq!(code, 200, "{window}");
    let got: Vec<u64> = window["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| f["seq"].as_u64().expect("seq"))
        .filter(|seq| *seq <= stored[stored.len() - 1].0)
        .collect();
    assert_eq!(got, inside, "since={since} until={until}");
    let (code, e) = get("limit=10001");
    assert_eq!(code, 400);
    assert!(e["error"]["message"]
        .as_str()
        .unwrap_or("")
        .starts_with("limit: "));
    let (code, _) = get("limit=abc");
    assert_eq!(code, 400);
    let (code, _) = get("colour=red");
    assert_eq!(code, 400);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let text = rt.block_on(async {
        reqwest::Client::new()
            .get(gw.url("/metrics"))
            .header("x-api-key", &k.read)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    });
    assert!(text.contains("# TYPE fieldgate_journal_evicted_total counter"));
    assert!(text.contains("fieldgate_source_frames_total{source=\"sim\",kind=\"sim\"}"));
}

#[test]
fn bad_bodies_get_json_errors_and_the_gateway_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, k) = keyed_gateway(dir.path(), 200);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let client = reqwest::Client::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[1,2,3]".to_vec(),
        b"{\"id\": {\"deep\": [[[[[]]]]]}}".to_vec(),
        vec![b'{'; 10_000],
        format!("{{\"id\":\"a\",\"notes\":\"{}\"}}", "x".repeat(200_000)).into_bytes(),
    ];
    for _ in 0..40 {
        let len = (x % 300) as usize;
        bodies.push(
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect(),
        );
    }
    for (i, body) in bodies.into_iter().enumerate() {
        let path = if i % 2 == 0 {
            "/api/devices"
        } else {
            "/api/vehicles/v1"
        };
        let method = if i % 2 == 0 {
            reqwest::Method::POST
        } else {
            reqwest::Method::PUT
        };
        let resp = rt
            .block_on(
                client
                    .request(method, gw.url(path))
                    .header("x-api-key", &k.write)
                    .header("content-type", "application/json")
                    .body(body)
                    .send(),
            )
            .expect("request");
        let code = resp.status().as_u16();
        assert!((400..500).contains(&code), "body {i}: status {code}");
        let v: serde_json::Value = rt.block_on(resp.json()).expect("JSON error body");
        assert!(v["error"]["message"].is_string(), "body {i}: {v}");
        if i == 6 {
            assert_eq!(
                (code, v["error"]["code"].as_str()),
                (413, Some("too_large"))
            );
        }
    }
    let (code, e) = http("POST", &gw.url("/api/devices"), Some(&k.write), None);
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (code, _) = http("GET", &gw.url("/api/status"), Some(&k.read), None);
    assert_eq!(code, 200, "gateway still serving");
}

#[test]
fn wrong_keys_are_throttled_but_a_valid_key_is_always_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, k) = keyed_gateway(dir.path(), 200);
    let status = gw.url("/api/status");
    // Empty keys are no guess: they never count (the dashboard polls before a key is set).
    for _ in 0..20 {
        let (code, e) = http("GET", &status, Some(""), None);
        assert_eq!(
            (code, e["error"]["code"].as_str()),
            (401, Some("unauthorized"))
        );
    }
    for i in 1..=10 {
        let (code, _) = http("GET", &status, Some("fg_guess_0123456789"), None);
        let want = if i < 10 { 401 } else { 429 };
        assert_eq!(code, want, "wrong key #{i}");
    }
    // Ten wrong keys later, the right one is served from the same address.
    let (code, _) = http("GET", &status, Some(&k.read), None);
    assert_eq!(code, 200, "a valid key after ten wrong ones");
    let (code, e) = http("GET", &status, Some("fg_guess_0123456789"), None);
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (429, Some("throttled"))
    );
    let (_, metrics) = common::http_text(&gw.url("/metrics"), &k.read);
    assert!(
        metrics.contains("fieldgate_auth_wrong_keys_total 11"),
        "{metrics}"
    );
    assert!(metrics.contains("fieldgate_http_refused_total{reason=\"throttled\"} 2"));
    assert!(
        !gw.log().contains("fg_guess"),
        "a presented key reached the log"
    );
}

#[test]
fn cors_lets_other_origins_call_with_a_key_and_every_response_has_security_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, k) = keyed_gateway(dir.path(), 200);
    let preflight = |url: &str, origin: &str| {
        common::http_full(
            "OPTIONS",
            url,
            &[
                ("origin", origin),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-api-key"),
            ],
        )
    };
    let header = |h: &reqwest::header::HeaderMap, name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    // Default `cors_origins = ["*"]`: any page may call with the key it was given.
    let (code, h, _) = preflight(&gw.url("/api/status"), "http://laptop.local:8080");
    assert_eq!(code, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), "*");
    let allowed = header(&h, "access-control-allow-headers");
    assert!(
        allowed.contains("x-api-key") && allowed.contains("authorization"),
        "{allowed}"
    );
    assert!(h.get("access-control-allow-credentials").is_none());
    let (code, h, _) = common::http_full(
        "GET",
        &gw.url("/api/status"),
        &[
            ("origin", "http://laptop.local:8080"),
            ("x-api-key", &k.read),
        ],
    );
    assert_eq!(
        (code, header(&h, "access-control-allow-origin").as_str()),
        (200, "*")
    );
    assert_eq!(header(&h, "x-content-type-options"), "nosniff");
    assert_eq!(header(&h, "referrer-policy"), "no-referrer");
    assert_eq!(
        header(&h, "content-security-policy"),
        "default-src 'none'; frame-ancestors 'none'"
    );
    // The dashboard: its own script and style only, nothing inline.
    for path in ["/", "/ui/app.js", "/ui/app.css"] {
        let (code, h, body) = common::http_full("GET", &gw.url(path), &[]);
        assert_eq!(code, 200, "{path}");
        let csp = header(&h, "content-security-policy");
        assert!(
            csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert!(!body.is_empty());
        if path == "/" {
            assert!(
                !body.contains("<script>") && !body.contains("style="),
                "inline code in the page"
            );
            assert!(!body.contains("localStorage") && !body.contains("innerHTML"));
        }
    }
    // The page also names this host's ws:/wss: (for browsers before CSP level 3), but only
    // a Host that is a plain host name: nothing from a header is pasted into the policy.
    let (_, h, _) = common::http_full("GET", &gw.url("/"), &[]);
    let port = gw.port;
    assert!(
        header(&h, "content-security-policy").contains(&format!(
            "connect-src 'self' ws://127.0.0.1:{port} wss://127.0.0.1:{port};"
        )),
        "{h:?}"
    );
    let (_, h, _) = common::http_full("GET", &gw.url("/"), &[("host", "x; script-src *")]);
    let csp = header(&h, "content-security-policy");
    assert!(
        csp.contains("connect-src 'self';") && !csp.contains('*'),
        "{csp}"
    );
    let (_, _, js) = common::http_full("GET", &gw.url("/ui/app.js"), &[]);
    assert!(
        !js.contains("innerHTML") && !js.contains("localStorage"),
        "the script builds no HTML from strings"
    );
    drop(gw);

    // A configured list: only those origins get an answer the browser accepts.
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _) = common::keyed_gateway_with(
        dir.path(),
        200,
        "cors_origins = [\"http://tool.example:8080\"]",
    );
    let (_, h, _) = preflight(&gw.url("/api/frames"), "http://tool.example:8080");
    assert_eq!(
        header(&h, "access-control-allow-origin"),
        "http://tool.example:8080"
    );
    let (_, h, _) = preflight(&gw.url("/api/frames"), "http://evil.example");
    assert!(h.get("access-control-allow-origin").is_none(), "{h:?}");
}

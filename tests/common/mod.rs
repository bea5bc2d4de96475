//! Helpers that start real things for the end-to-end tests: the fieldgate binary on a free
//! loopback port, with a temporary data directory.
#![allow(dead_code)]

pub mod can;
pub mod mongo;
pub mod mqtt;
pub mod serial;
pub mod sink;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of the built binary; `FIELDGATE_TEST_BIN` runs the tests against another build
/// (e.g. a release binary, or an older commit's for before/after figures).
pub fn bin() -> String {
    std::env::var("FIELDGATE_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_fieldgate").into())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Send a signal to a child.
pub fn signal(child: &Child, sig: i32) {
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Wait for a child to exit, at most `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A running fieldgate process serving HTTP on `port`; killed on drop.
pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub key: String,
    pub stderr_log: PathBuf,
}

impl Gateway {
    /// `fieldgate demo` on a free port with `data` as journal and a fixed key.
    pub fn demo(data: &Path, extra: &[&str]) -> Gateway {
        Gateway::demo_env(data, extra, &[])
    }

    /// `fieldgate demo` with extra environment variables.
    pub fn demo_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Gateway {
        Gateway::demo_at(data, free_port(), extra, env)
    }

    /// `fieldgate demo` on a given port.
    pub fn demo_on(data: &Path, port: u16) -> Gateway {
        Gateway::demo_at(data, port, &[], &[])
    }

    fn demo_at(data: &Path, port: u16, extra: &[&str], env: &[(&str, &str)]) -> Gateway {
        let key = "fg_test_key_0123456789".to_string();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["demo", "--listen", &listen, "--api-key", &key];
        let data_s = data.to_string_lossy().to_string();
        args.extend(["--data", &data_s]);
        args.extend(extra);
        // Logs go beside the journal, not in it: a quarantine moves the journal directory.
        let logs = data.parent().unwrap_or(data);
        Gateway::spawn(&args, port, key.clone(), logs, env)
    }

    /// `fieldgate run --config FILE` where the config listens on `port`.
    pub fn run(config: &Path, port: u16, key: &str, logs_in: &Path) -> Gateway {
        let cfg = config.to_string_lossy().to_string();
        Gateway::spawn(
            &["run", "--config", &cfg],
            port,
            key.to_string(),
            logs_in,
            &[],
        )
    }

    fn spawn(
        args: &[&str],
        port: u16,
        key: String,
        logs_in: &Path,
        env: &[(&str, &str)],
    ) -> Gateway {
        std::fs::create_dir_all(logs_in).expect("log dir");
        let stderr_log = logs_in.join(format!("gateway-{port}.log"));
        let err = std::fs::File::create(&stderr_log).expect("log file");
        let child = Command::new(bin())
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn fieldgate");
        let gw = Gateway {
            child,
            port,
            key,
            stderr_log,
        };
        gw.wait_ready();
        gw
    }

    /// Block until `GET /healthz` answers 200 (or panic after 20 s with the log).
    pub fn wait_ready(&self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let client = reqwest::Client::new();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            let get = client
                .get(self.url("/healthz"))
                .timeout(Duration::from_secs(2));
            if rt
                .block_on(async { get.send().await })
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway did not answer /healthz; log:\n{}", self.log());
    }

    /// The gateway's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Base URL.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// GET with the gateway's key; returns (status, JSON body).
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        http_get(&self.url(path), Some(&self.key))
    }

    /// Poll /api/status until `pred` holds (or panic after `limit`).
    pub fn status_until(
        &self,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.get_until("/api/status", limit, pred)
    }

    /// Poll GET `path` until it answers 200 with a body for which `pred` holds (or panic
    /// after `limit`).
    pub fn get_until(
        &self,
        path: &str,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let (code, body) = self.get(path);
            if code == 200 && pred(&body) {
                return body;
            }
            if t0.elapsed() > limit {
                panic!(
                    "{path} never matched; last {code} {body}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process's peak RSS so far in kB (`VmHWM`, the kernel's high-water mark).
    pub fn peak_rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        signal(&self.child, libc::SIGTERM);
        let st = wait_exit(&mut self.child, Duration::from_secs(15));
        st.unwrap_or_else(|| panic!("gateway did not exit on SIGTERM; log:\n{}", self.log()))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Blocking GET returning (status, JSON or Null).
pub fn http_get(url: &str, key: Option<&str>) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut req = client.get(url).timeout(Duration::from_secs(10));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        match req.send().await {
            Ok(resp) => {
                let code = resp.status().as_u16();
                let body = resp.json().await.unwrap_or(serde_json::Value::Null);
                (code, body)
            }
            Err(e) => panic!("GET {url}: {e}"),
        }
    })
}

/// `chown -R user: path` (the tests run as root).
pub fn chown(path: &Path, user: &str) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{user}:"))
        .arg(path)
        .status()
        .expect("chown");
    assert!(st.success(), "chown {user} {}", path.display());
}

/// Run the binary as `nobody` (`setpriv`, the tests run as root); returns (exit code,
/// stdout, stderr).
pub fn run_cli_as_nobody(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(bin())
        .args(args)
        .output()
        .expect("setpriv (util-linux)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Blocking GET with an API key returning (status, body text), e.g. for `/metrics`.
pub fn http_text(url: &str, key: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let r = reqwest::Client::new()
            .get(url)
            .header("x-api-key", key)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    })
}

/// Run the binary to completion; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run fieldgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// API keys of a [`keyed_gateway`], one per scope set.
pub struct Keys {
    pub read: String,
    pub write: String,
    pub publish: String,
    pub control: String,
    pub admin: String,
}

/// A `fieldgate run` with a simulated vehicle (`interval_ms`) and one key per scope.
pub fn keyed_gateway(dir: &Path, interval_ms: u64) -> (Gateway, Keys) {
    let port = free_port();
    let cfg = dir.join("gateway.toml");
    let text = format!(
        "[gateway]\nid = \"gw-test\"\n[journal]\npath = \"{}\"\nflush_ms = 5\n[listen]\naddress = \"127.0.0.1:{port}\"\n[[sources.sim]]\nname = \"sim\"\nvehicle = \"van-1\"\ninterval_ms = {interval_ms}\n",
        dir.join("journal").display()
    );
    std::fs::write(&cfg, text).expect("write config");
    let cfg_s = cfg.to_string_lossy().to_string();
    let add = |name: &str, scopes: &str| {
        let (code, out, err) =
            run_cli(&["keys", "add", name, "--scopes", scopes, "--config", &cfg_s]);
        assert_eq!(code, 0, "keys add: {err}");
        out.trim().to_string()
    };
    let keys = Keys {
        read: add("reader", "read"),
        write: add("writer", "write"),
        publish: add("publisher", "read,publish"),
        control: add("controller", "read,control"),
        admin: add("admin", "admin"),
    };
    let gw = Gateway::run(&cfg, port, &keys.admin, dir);
    (gw, keys)
}

/// Blocking request with any method; returns (status, JSON or Null).
pub fn http(
    method: &str,
    url: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(http_async(method, url, key, body))
}

/// Request with any method from async code; returns (status, JSON or Null).
pub async fn http_async(
    method: &str,
    url: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client.request(m, url).timeout(Duration::from_secs(10));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        code,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// A WebSocket client connection.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connect a WebSocket to `path` with an optional `x-api-key` and subprotocol; on an HTTP
/// refusal returns its status code.
pub async fn ws_connect(
    port: u16,
    path: &str,
    key: Option<&str>,
    protocol: Option<&str>,
) -> Result<(Ws, Option<String>), u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .expect("request");
    if let Some(k) = key {
        req.headers_mut()
            .insert("x-api-key", k.parse().expect("header"));
    }
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().expect("header"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            let proto = resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok((ws, proto))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket connect: {e}"),
    }
}

/// Next text message as JSON (skipping pings), or None when closed; panics after 15 s.
pub async fn ws_next(ws: &mut Ws) -> Option<serde_json::Value> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("websocket message within 15 s");
        match msg {
            Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).expect("TMD JSON")),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Next message of the given TMD type.
pub async fn ws_next_of(ws: &mut Ws, kind: &str) -> serde_json::Value {
    loop {
        let m = ws_next(ws)
            .await
            .unwrap_or_else(|| panic!("closed while waiting for {kind}"));
        if m["type"] == kind {
            return m;
        }
    }
}

/// Send a JSON text message.
pub async fn ws_send(ws: &mut Ws, v: serde_json::Value) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        v.to_string().into(),
    ))
    .await
    .expect("send");
}

//! Helpers that start real things for the end-to-end tests: the fieldgate binary on a free
//! loopback port, with a temporary data directory.
#![allow(dead_code)]

pub mod mongo;
pub mod mqtt;
pub mod serial;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of the built binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fieldgate")
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
        let port = free_port();
        let key = "fg_test_key_0123456789".to_string();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["demo", "--listen", &listen, "--api-key", &key];
        let data_s = data.to_string_lossy().to_string();
        args.extend(["--data", &data_s]);
        args.extend(extra);
        // Logs go beside the journal, not in it: a quarantine moves the journal directory.
        let logs = data.parent().unwrap_or(data);
        Gateway::spawn(&args, port, key.clone(), logs)
    }

    /// `fieldgate run --config FILE` where the config listens on `port`.
    pub fn run(config: &Path, port: u16, key: &str, logs_in: &Path) -> Gateway {
        let cfg = config.to_string_lossy().to_string();
        Gateway::spawn(&["run", "--config", &cfg], port, key.to_string(), logs_in)
    }

    fn spawn(args: &[&str], port: u16, key: String, logs_in: &Path) -> Gateway {
        std::fs::create_dir_all(logs_in).expect("log dir");
        let stderr_log = logs_in.join(format!("gateway-{port}.log"));
        let err = std::fs::File::create(&stderr_log).expect("log file");
        let child = Command::new(bin())
            .args(args)
            .env("RUST_LOG", "info")
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

    /// Block until /healthz answers (or panic after 20 s with the log).
    pub fn wait_ready(&self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway did not listen; log:\n{}", self.log());
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
        let t0 = Instant::now();
        loop {
            let (code, body) = self.get("/api/status");
            if code == 200 && pred(&body) {
                return body;
            }
            if t0.elapsed() > limit {
                panic!(
                    "status never matched; last {code} {body}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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

/// Spawn the binary with piped stdout, returning the child and a line reader.
pub fn spawn_lines(args: &[&str]) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fieldgate");
    let out = child.stdout.take().expect("stdout");
    (child, BufReader::new(out))
}

/// Read the next line from a reader, without the newline.
pub fn next_line(r: &mut impl BufRead) -> Option<String> {
    let mut s = String::new();
    match r.read_line(&mut s) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(s.trim_end().to_string()),
    }
}

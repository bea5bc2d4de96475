//! Test helpers for the CAN tests (see mod.rs): the python-can/cantools peer script, socat
//! pseudo-terminal pairs, and comparing fieldgate's decoded values with cantools'.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The test DBC (Intel, Motorola, signed, extended, multiplexed, enum and float signals).
pub fn test_dbc() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/can/vehicle.dbc")
}

/// Python with python-can and cantools: FIELDGATE_TEST_PYTHON or the crate's .venv-test.
pub fn python() -> PathBuf {
    let path = std::env::var_os("FIELDGATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/python"));
    assert!(
        path.exists(),
        "python with python-can and cantools not found at {} (run scripts/test, which installs them)",
        path.display()
    );
    path
}

/// A running `tests/can/peer.py`; killed on drop.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

impl Peer {
    /// Starts the peer with `args` and waits for its first line when `ready` is expected.
    pub fn start(args: &[&str], wait_ready: bool) -> Peer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/can/peer.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn peer.py");
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut p = Peer { child, stdin, out };
        if wait_ready {
            assert_eq!(p.next()["ready"], true);
        }
        p
    }

    /// python-can's SLCAN host on the pty `host`, sending random frames of the test DBC.
    pub fn slcan(host: &Path, seed: u32) -> Peer {
        let dbc = test_dbc();
        let args = [
            "slcan",
            &dbc.to_string_lossy(),
            &host.to_string_lossy(),
            &seed.to_string(),
        ];
        Peer::start(&args.each_ref().map(|a| a.as_ref()), true)
    }

    /// Next JSON line (panics when the peer ends).
    pub fn next(&mut self) -> Value {
        let mut line = String::new();
        let n = self.out.read_line(&mut line).expect("read peer");
        assert!(n > 0, "peer.py ended");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("peer said {line:?}: {e}"))
    }

    /// Sends a request line.
    pub fn send(&mut self, req: Value) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{req}")
            .and_then(|_| stdin.flush())
            .expect("write peer");
    }

    /// Lines up to (not including) one that has `key`; returns them.
    pub fn until(&mut self, key: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let v = self.next();
            if v.get(key).is_some() {
                return out;
            }
            out.push(v);
        }
    }

    /// Every remaining line until the peer exits.
    pub fn rest(mut self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut line = String::new();
        while self.out.read_line(&mut line).unwrap_or(0) > 0 {
            out.push(serde_json::from_str(&line).expect("json line"));
            line.clear();
        }
        out
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A socat pseudo-terminal pair published at `dev` (fieldgate's side) and `host` (the
/// peer's); killed on drop, which is an unplug for both sides.
pub struct Socat {
    child: Child,
}

impl Socat {
    /// Starts socat and waits for both links.
    pub fn start(dev: &Path, host: &Path) -> Socat {
        let _ = std::fs::remove_file(dev);
        let _ = std::fs::remove_file(host);
        let end = |p: &Path| format!("pty,raw,echo=0,link={}", p.display());
        let child = Command::new("socat")
            .args([&end(dev), &end(host)])
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (apt install socat)");
        let t0 = Instant::now();
        while !(dev.exists() && host.exists()) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "socat made no links"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Socat { child }
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that fieldgate's `can` payload has the signals cantools decoded (`expected`,
/// a peer line), each within half its resolution (`resolution` by signal name).
pub fn assert_same_signals(got: &Value, expected: &Value, resolution: impl Fn(&str) -> f64) {
    assert_eq!(got["message"], expected["message"], "{got} vs {expected}");
    assert_eq!(got["id"], expected["id"], "{got} vs {expected}");
    let (g, e) = (&got["signals"], &expected["signals"]);
    let names = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("signals").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(names(g), names(e), "{got} vs {expected}");
    for (name, want) in e.as_object().expect("signals") {
        match (want.as_f64(), g[name].as_f64()) {
            (Some(w), Some(v)) => {
                let tol = resolution(name) / 2.0 + w.abs() * 1e-6;
                assert!(
                    (v - w).abs() <= tol,
                    "{name}: fieldgate {v}, cantools {w} ({got} vs {expected})"
                );
            }
            _ => assert_eq!(&g[name], want, "{name}: {got} vs {expected}"),
        }
    }
}

/// Resolution (factor) of the test DBC's signals.
pub fn test_resolution(signal: &str) -> f64 {
    match signal {
        "Speed" => 0.01,
        "Torque" | "VB" => 0.5,
        "Pressure" | "VA" | "Odometer" => 0.1,
        "Offset" => 0.25,
        "Angle" => 0.05,
        "Total" => 0.001,
        "Level" => 0.4,
        // Floats are compared exactly (up to the relative 1e-6).
        "Ratio" | "Gain" => 0.0,
        _ => 1.0,
    }
}

//! A SecantusDB server (the MongoDB-wire server of DESIGN.md §9) started for a bench or a
//! chaos run: on a loopback port with its own storage directory, and able to die (SIGKILL)
//! and come back on the same port and data, as a crashed `mongod` would.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A SecantusDB process; killed on drop.
pub struct Secantus {
    exe: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Secantus {
    /// The server launcher: `given`, else `$FIELDGATE_TEST_SECANTUSD`, else the checkout's
    /// `.venv-test/bin/secantusd-py` (what `scripts/test` installs); made absolute, as the
    /// server runs in its own directory.
    pub fn launcher(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
        let exe = given
            .or_else(|| std::env::var_os("FIELDGATE_TEST_SECANTUSD").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(".venv-test/bin/secantusd-py"));
        if !exe.exists() {
            bail!(
                "SecantusDB not found at {} (scripts/test installs it; or pass --secantusd, \
                 or a server URI)",
                exe.display()
            );
        }
        Ok(std::path::absolute(&exe)?)
    }

    /// Start `exe` on a free loopback port, keeping its data and log under `dir`.
    pub fn start(exe: &Path, dir: &Path) -> anyhow::Result<Secantus> {
        let port = crate::broker::free_port()?;
        let mut s = Secantus {
            exe: exe.to_path_buf(),
            port,
            dir: dir.to_path_buf(),
            child: None,
        };
        s.restart()?;
        Ok(s)
    }

    /// The URI to reach it (a one-node replica set whose member name may differ from the
    /// address dialled: connect directly).
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The running server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL the server and reap it: an abrupt outage, nothing flushed.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the server (again) on the same port and data, and wait (up to 60 s) until it
    /// accepts connections. The port may be held for a moment after a kill: retried.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "SecantusDB is already running");
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))?;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            let mut child = Command::new(&self.exe)
                .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
                .arg("--storage-path")
                .arg(&data)
                .args(["--cache-size", "256M", "--log-level", "WARNING"])
                // Its own cwd, so no ./secantusd.toml of a checkout is picked up.
                .current_dir(&self.dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log.try_clone()?)
                .spawn()
                .with_context(|| format!("starting {}", self.exe.display()))?;
            while t0.elapsed() < Duration::from_secs(60) {
                if child.try_wait()?.is_some() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.child = Some(child);
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(300));
        }
        bail!(
            "SecantusDB did not listen on port {} within 60 s; its log: {}",
            self.port,
            self.dir.join("server.log").display()
        )
    }
}

impl Drop for Secantus {
    fn drop(&mut self) {
        self.kill();
    }
}

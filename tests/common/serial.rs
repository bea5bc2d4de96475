//! Test helpers for the serial and OBD tests (see mod.rs): real pseudo-terminals published
//! at a stable symlink path, a source task running in-process against a real journal, and
//! the ELM327-emulator.

use fieldgate::journal::{Journal, JournalConfig};
use fieldgate::source::sim_devices::{publish_link, Pty};
use fieldgate::source::{SourceCtx, SourceState, SourceStates};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A device on a pty: the test writes into `master`, the gateway opens `link`.
pub struct Device {
    /// Where the gateway finds the device (a symlink to the current pty slave).
    pub link: PathBuf,
    master: Option<std::fs::File>,
    slave: Option<OwnedFd>,
}

impl Device {
    /// A new pty published at `link`.
    pub fn plug(link: &Path) -> Device {
        let mut d = Device {
            link: link.to_path_buf(),
            master: None,
            slave: None,
        };
        d.replug();
        d
    }

    /// Opens a fresh pty and points the link at it.
    pub fn replug(&mut self) {
        let pty = Pty::open().expect("openpty");
        publish_link(&self.link, &pty.path).expect("publish link");
        self.master = Some(std::fs::File::from(pty.master));
        self.slave = Some(pty.slave);
    }

    /// Closes both ends: the gateway's reads fail with EIO, as when a USB adapter is pulled.
    pub fn unplug(&mut self) {
        self.master = None;
        self.slave = None;
    }

    /// Bytes the gateway wrote to the device, waiting until `want` appear or `limit` passes.
    pub fn read_until(&mut self, want: &[u8], limit: Duration) -> Vec<u8> {
        use std::io::Read;
        let m = self.master.as_ref().expect("device is plugged");
        let mut reader = m.try_clone().expect("clone master");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let t0 = Instant::now();
        let mut got = Vec::new();
        while t0.elapsed() < limit && !got.windows(want.len()).any(|w| w == want) {
            if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
                got.extend(chunk);
            }
        }
        got
    }

    /// Writes all of `bytes` (blocks while the pty buffer is full).
    pub fn write(&mut self, bytes: &[u8]) {
        let m = self.master.as_mut().expect("device is plugged");
        m.write_all(bytes).expect("write to pty master");
    }
}

/// A source task running in-process on a multi-thread runtime, with its own journal.
pub struct InProcess {
    pub rt: tokio::runtime::Runtime,
    pub journal: Journal,
    pub states: SourceStates,
    pub name: String,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcess {
    /// Opens a journal in `dir` and spawns `start(ctx)` as source `name` of `kind`.
    pub fn start<F, Fut>(dir: &Path, name: &str, kind: &'static str, start: F) -> InProcess
    where
        F: FnOnce(SourceCtx) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let journal = Journal::open(JournalConfig {
            path: dir.join("journal"),
            ..JournalConfig::default()
        })
        .expect("journal");
        let states = SourceStates::default();
        let stop = CancellationToken::new();
        let ctx = SourceCtx {
            gateway: "test".into(),
            journal: journal.clone(),
            slot: states.register(name, kind),
            shutdown: stop.clone(),
            commands: Default::default(),
        };
        let task = rt.spawn(start(ctx));
        InProcess {
            rt,
            journal,
            states,
            name: name.to_string(),
            stop,
            task: Some(task),
        }
    }

    /// The source's status entry now.
    pub fn state(&self) -> SourceState {
        self.states.snapshot()[&self.name].clone()
    }

    /// Polls until `pred(state)` holds, or panics with the state after `limit`.
    pub fn wait_for(&self, limit: Duration, what: &str, pred: impl Fn(&SourceState) -> bool) {
        let t0 = Instant::now();
        loop {
            let st = self.state();
            if pred(&st) {
                return;
            }
            if t0.elapsed() > limit {
                panic!("{what}: not reached in {limit:?}; state {st:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every frame journaled so far.
    pub fn frames(&self) -> Vec<fieldgate::frame::Frame> {
        self.journal.range(1, usize::MAX)
    }

    /// Fires shutdown and waits for the task to return (panics if it takes over 10 s).
    pub fn stop(mut self) -> Journal {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let joined = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await });
            assert!(
                matches!(joined, Ok(Ok(()))),
                "source did not stop promptly on shutdown"
            );
        }
        self.journal.clone()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Path of the ELM327-emulator's `elm` (FIELDGATE_TEST_ELM or the crate's .venv-test).
pub fn elm_path() -> PathBuf {
    let path = std::env::var_os("FIELDGATE_TEST_ELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/elm"));
    assert!(
        path.exists(),
        "ELM327-emulator not found at {} (set FIELDGATE_TEST_ELM or run scripts/test, \
         which installs it with pip)",
        path.display()
    );
    path
}

/// A running ELM327-emulator (`elm -s car -b FILE`) serving a pty; killed on drop.
pub struct Emulator {
    child: Child,
    /// The emulator's pty slave.
    pub pty: PathBuf,
    /// Its log file (DEBUG lines include every `Write: '...'` answer).
    pub log: PathBuf,
}

impl Emulator {
    /// Starts the emulator with the `car` scenario in a fresh directory under `dir`.
    pub fn start(dir: &Path) -> Emulator {
        // The emulator writes its DEBUG log (every answer) to `elm.log` in its working dir.
        let cwd = dir.join(format!("elm-{}", fieldgate::frame::now_ms()));
        std::fs::create_dir_all(&cwd).expect("elm dir");
        let out = cwd.join("pty.txt");
        let child = Command::new(elm_path())
            .args(["-s", "car", "-b"])
            .arg(&out)
            .current_dir(&cwd)
            // Batch mode runs while stdin stays open: keep the pipe, never write to it.
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(cwd.join("stdout.txt")).expect("elm stdout"))
            .stderr(std::fs::File::create(cwd.join("stderr.txt")).expect("elm stderr"))
            .spawn()
            .expect("spawn elm");
        let t0 = Instant::now();
        let pty = loop {
            let first = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(line) = first.lines().next().filter(|l| l.starts_with("/dev/")) {
                break PathBuf::from(line.trim());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "elm wrote no pty path to {}",
                out.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Emulator {
            child,
            pty,
            log: cwd.join("elm.log"),
        }
    }

    /// Everything the emulator logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The data bytes of every answer the emulator wrote for mode-01 `pid`, in order.
    pub fn answers(&self, pid: u8) -> Vec<Vec<u8>> {
        let prefix = format!("Write: '41{pid:02X}");
        self.log_text()
            .lines()
            .filter_map(|l| l.split_once(&prefix).map(|(_, rest)| rest))
            .map(|rest| {
                let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
                (0..hex.len() / 2)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
                    .collect()
            })
            .collect()
    }

    /// Kills the emulator (its pty goes away).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

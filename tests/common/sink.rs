//! The Mongo sink in-process: a journal in a temp dir plus the sink on its own runtime, so a
//! test can stop the sink, do things to the journal (close, corrupt, delete) and go on.

use fieldgate::frame::Frame;
use fieldgate::journal::{Journal, JournalConfig};
use fieldgate::sink::mongo::MongoConfig;
use fieldgate::sink::{SinkState, SinkStates};
use fieldgate::units::{HumanDuration, Positive};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A journal in a temp dir plus a running sink on its own runtime.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub journal: Journal,
    pub gateway: String,
    states: SinkStates,
    shutdown: CancellationToken,
    rt: tokio::runtime::Runtime,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Rig {
    /// A fresh journal for `gateway`, no sink yet.
    pub fn new(gateway: &str) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = open(&dir.path().join("journal"));
        Rig {
            dir,
            journal,
            gateway: gateway.into(),
            states: SinkStates::default(),
            shutdown: CancellationToken::new(),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime"),
            task: None,
        }
    }

    /// The journal directory.
    pub fn journal_path(&self) -> PathBuf {
        self.dir.path().join("journal")
    }

    /// Start the sink on `db` (small batches, short backoff).
    pub fn start(&mut self, uri: &str, db: &str) {
        let mut cfg = MongoConfig::with_uri(uri.to_string());
        cfg.database = db.to_string();
        cfg.batch_max = Positive(64);
        cfg.batch_ms = Positive(20);
        cfg.backoff_max = HumanDuration(Duration::from_secs(1));
        let slot = self.states.register("mongo");
        let fut = fieldgate::sink::mongo::run(
            cfg,
            self.gateway.clone(),
            self.journal.clone(),
            slot,
            self.shutdown.clone(),
        );
        self.task = Some(self.rt.spawn(fut));
    }

    /// The sink's status entry.
    pub fn state(&self) -> SinkState {
        self.states
            .snapshot()
            .remove("mongo")
            .expect("mongo sink registered")
    }

    /// Poll the status until `pred` holds (panics after 60 s).
    pub fn until(&self, what: &str, pred: impl Fn(&SinkState) -> bool) -> SinkState {
        let t0 = Instant::now();
        loop {
            let s = self.state();
            if pred(&s) {
                return s;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "{what}: {s:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the sink (the journal stays open for another `start`).
    pub fn stop_sink(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            self.rt.block_on(t).expect("sink task");
        }
        assert_eq!(self.state().state, "stopped");
        self.shutdown = CancellationToken::new();
    }

    /// Stop the sink and close the journal.
    pub fn stop(mut self) {
        self.stop_sink();
        self.journal.close().expect("close");
    }

    /// With the sink stopped: close the journal, run `between` on its directory (corrupt
    /// it, delete it, ...), open it again.
    pub fn reopen(self, between: impl FnOnce(&Path)) -> Rig {
        assert!(self.task.is_none(), "stop the sink first");
        let Rig {
            dir,
            journal,
            gateway,
            states,
            shutdown,
            rt,
            task,
        } = self;
        journal.close().expect("close");
        // sled's lock goes with the last handle.
        drop(journal);
        let path = dir.path().join("journal");
        between(&path);
        Rig {
            journal: open(&path),
            dir,
            gateway,
            states,
            shutdown,
            rt,
            task,
        }
    }

    /// Journal `self.frame(i)` for each `i`; the seqs they got.
    pub fn append(&self, range: std::ops::Range<u64>) -> std::ops::RangeInclusive<u64> {
        self.journal
            .append_many(range.map(|i| self.frame(i)).collect())
            .expect("append")
    }

    /// Test frame number `i`: device `dev{i%3}`, payload `{"i": i}`.
    pub fn frame(&self, i: u64) -> Frame {
        let mut f = Frame::new(
            &self.gateway,
            "test",
            &format!("dev{}", i % 3),
            "json",
            json!({ "i": i }),
        );
        f.vehicle = Some("van-1".into());
        f
    }
}

fn open(path: &Path) -> Journal {
    Journal::open(JournalConfig {
        path: path.to_path_buf(),
        flush_ms: Positive(5),
        ..JournalConfig::default()
    })
    .expect("journal")
}

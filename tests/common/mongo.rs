//! Test helpers for the mongo tests: a real MongoDB-wire server (SecantusDB; see "Test
//! services" in docs/architecture.md) on a free loopback port with its own storage
//! directory, which can be stopped and started again on the same port and data.
//!
//! When `FIELDGATE_TEST_MONGODB_URI` is set (a real mongod), that server is used instead.
//! The tests cannot stop an external server, so it is reached through a loopback TCP
//! forwarder on the test's port, and "stop"/"start" close and reopen the forwarder (severing
//! every connection): to the gateway that is the same outage as a dead server.

use bson::{doc, Document};
use futures_util::TryStreamExt;
use mongodb::options::{ClientOptions, WriteConcern};
use mongodb::Client;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Run a future to completion on a private runtime (the tests are synchronous).
pub fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// A database name no other test (or earlier run on an external server) uses.
pub fn unique_db(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "fgt_{tag}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        ms % 1_000_000
    )
}

/// Path of the SecantusDB launcher: `FIELDGATE_TEST_SECANTUSD` or the crate's test venv.
pub fn secantusd_path() -> PathBuf {
    let p = std::env::var_os("FIELDGATE_TEST_SECANTUSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/secantusd-py")
        });
    assert!(
        p.exists(),
        "SecantusDB server not found at {} — install it as \"Test services\" in docs/architecture.md says \
         (scripts/test does) or set FIELDGATE_TEST_SECANTUSD / FIELDGATE_TEST_MONGODB_URI",
        p.display()
    );
    p
}

/// A MongoDB-wire server for one test.
pub struct MongoServer {
    /// Loopback port the gateway connects to.
    pub port: u16,
    external: Option<String>,
    child: Option<Child>,
    forwarder: Option<Forwarder>,
    dir: Option<tempfile::TempDir>,
    starts: u32,
}

impl MongoServer {
    /// Start a private server on a free port (or use `FIELDGATE_TEST_MONGODB_URI`).
    pub fn start() -> MongoServer {
        Self::start_on(super::free_port())
    }

    /// Start a private server on `port` (or use `FIELDGATE_TEST_MONGODB_URI`).
    pub fn start_on(port: u16) -> MongoServer {
        if let Ok(uri) = std::env::var("FIELDGATE_TEST_MONGODB_URI") {
            let mut s = MongoServer {
                port,
                external: Some(uri),
                child: None,
                forwarder: None,
                dir: None,
                starts: 0,
            };
            s.restart();
            return s;
        }
        let mut s = MongoServer {
            port,
            external: None,
            child: None,
            forwarder: None,
            dir: Some(tempfile::tempdir().expect("tempdir")),
            starts: 0,
        };
        s.restart();
        s
    }

    /// Whether this is an external server (reached through a forwarder).
    pub fn is_external(&self) -> bool {
        self.external.is_some()
    }

    /// URI for the driver and the gateway config (always via `127.0.0.1:port`).
    pub fn uri(&self) -> String {
        match &self.external {
            Some(u) => external_via(u, self.port).0,
            None => Self::uri_for_port(self.port),
        }
    }

    /// URI of a private server on `port` (SecantusDB reports a one-node replica set whose
    /// member name may differ from the address we dial: connect directly).
    pub fn uri_for_port(port: u16) -> String {
        format!("mongodb://127.0.0.1:{port}/?directConnection=true")
    }

    fn storage(&self) -> PathBuf {
        self.dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .expect("private server has a storage dir")
    }

    /// The server's log so far (private servers only).
    pub fn log(&self) -> String {
        match &self.dir {
            Some(d) => std::fs::read_to_string(d.path().join("server.log")).unwrap_or_default(),
            None => String::new(),
        }
    }

    /// Start (again) on the same port and storage directory and wait until it answers.
    pub fn restart(&mut self) {
        if let Some(u) = &self.external {
            assert!(self.forwarder.is_none(), "forwarder already running");
            let target = external_via(u, self.port).1;
            self.forwarder = Some(Forwarder::start(self.port, target));
            self.wait_ready();
            return;
        }
        assert!(self.child.is_none(), "server already running");
        let dir = self.storage();
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("storage dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .expect("server log");
        let err = log.try_clone().expect("log clone");
        self.starts += 1;
        // Bounded: the port may still be in TIME_WAIT/held for a moment after a stop.
        let t0 = Instant::now();
        loop {
            let child = Command::new(secantusd_path())
                .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
                .arg("--storage-path")
                .arg(&data)
                .args(["--cache-size", "256M", "--log-level", "WARNING"])
                // Its own cwd, so no ./secantusd.toml of the checkout is picked up.
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log clone"))
                .stderr(err.try_clone().expect("log clone"))
                .spawn()
                .expect("spawn secantusd");
            self.child = Some(child);
            if self.wait_ready_or_exit(Duration::from_secs(60)) {
                return;
            }
            self.child = None;
            if t0.elapsed() > Duration::from_secs(60) {
                panic!(
                    "SecantusDB did not start on port {}; log:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Stop the server (SIGKILL: an abrupt outage) and wait until it is gone; for an
    /// external server, close the forwarder and sever its connections.
    pub fn stop(&mut self) {
        if let Some(f) = self.forwarder.take() {
            f.stop();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// True once a driver ping succeeds; false if the process exited first.
    fn wait_ready_or_exit(&mut self, limit: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    return false;
                }
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("SecantusDB never answered a ping; log:\n{}", self.log());
    }

    /// Block until a driver ping succeeds (panics after 60 s).
    pub fn wait_ready(&self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("MongoDB at {} never answered a ping", self.uri());
    }

    /// One ping with a short server selection timeout.
    pub fn ping(&self) -> bool {
        block(async {
            let Ok(c) = quick_client(&self.uri()).await else {
                return false;
            };
            c.database("admin")
                .run_command(doc! {"ping": 1})
                .await
                .is_ok()
        })
    }

    /// A driver client for assertions.
    pub async fn client(&self) -> Client {
        quick_client(&self.uri()).await.expect("client")
    }

    /// Every document of `db.coll` (projection applied), sorted by `_id`-insensitive order.
    pub fn docs(&self, db: &str, coll: &str, projection: Document) -> Vec<Document> {
        block(async {
            let c = self.client().await;
            let cur = c
                .database(db)
                .collection::<Document>(coll)
                .find(doc! {})
                .projection(projection)
                .await
                .expect("find");
            cur.try_collect().await.expect("collect")
        })
    }

    /// Number of documents in `db.coll`.
    pub fn count(&self, db: &str, coll: &str) -> u64 {
        block(async {
            let c = self.client().await;
            c.database(db)
                .collection::<Document>(coll)
                .count_documents(doc! {})
                .await
                .expect("count")
        })
    }

    /// Index key patterns on `db.coll`.
    pub fn index_keys(&self, db: &str, coll: &str) -> Vec<Document> {
        block(async {
            let c = self.client().await;
            let cur = c
                .database(db)
                .collection::<Document>(coll)
                .list_indexes()
                .await
                .expect("list indexes");
            let idx: Vec<mongodb::IndexModel> = cur.try_collect().await.expect("indexes");
            idx.into_iter().map(|m| m.keys).collect()
        })
    }

    /// Delete the documents of `db.coll` matching `filter`, durably (`j: true`: a server
    /// killed right after still has them deleted); how many went.
    pub fn delete(&self, db: &str, coll: &str, filter: Document) -> u64 {
        block(async {
            let c = self.client().await;
            c.database(db)
                .collection::<Document>(coll)
                .delete_many(filter)
                .write_concern(WriteConcern::builder().journal(true).build())
                .await
                .expect("delete")
                .deleted_count
        })
    }

    /// Insert documents directly (to stage pre-existing data).
    pub fn insert(&self, db: &str, coll: &str, docs: Vec<Document>) {
        block(async {
            let c = self.client().await;
            c.database(db)
                .collection::<Document>(coll)
                .insert_many(docs)
                .await
                .expect("insert");
        })
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        if let Some(f) = self.forwarder.take() {
            f.stop();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn quick_client(uri: &str) -> mongodb::error::Result<Client> {
    let mut o = ClientOptions::parse(uri).await?;
    o.server_selection_timeout = Some(Duration::from_secs(2));
    o.connect_timeout = Some(Duration::from_secs(2));
    Client::with_options(o)
}

/// Frames in `frames` of database `db`, as (seq, device, _id), sorted by seq; asserts
/// that there are no duplicate `_id`s.
pub fn frame_seqs(server: &MongoServer, db: &str) -> Vec<(u64, String, String)> {
    let docs = server.docs(db, "frames", doc! {"_id": 1, "seq": 1, "device": 1});
    let mut out: Vec<(u64, String, String)> = docs
        .iter()
        .map(|d| {
            (
                d.get_i64("seq").expect("seq") as u64,
                d.get_str("device").expect("device").to_string(),
                d.get_str("_id").expect("_id").to_string(),
            )
        })
        .collect();
    out.sort();
    let ids: std::collections::HashSet<&str> = out.iter().map(|(_, _, id)| id.as_str()).collect();
    assert_eq!(ids.len(), out.len(), "duplicate _id in frames");
    out
}

/// Assert `frames` holds exactly seqs 1..=last of `gateway`, once each, with matching `_id`s.
pub fn assert_exactly_once(server: &MongoServer, db: &str, gateway: &str, last: u64) {
    let got = frame_seqs(server, db);
    assert_eq!(
        got.len() as u64,
        last,
        "frames in MongoDB vs journaled (first missing/extra seq: {:?})",
        first_gap(&got, last)
    );
    for (i, (seq, _, id)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "gap or duplicate at position {i}");
        assert_eq!(id, &format!("{gateway}:{seq}"));
    }
}

fn first_gap(got: &[(u64, String, String)], last: u64) -> Option<u64> {
    let have: std::collections::HashSet<u64> = got.iter().map(|g| g.0).collect();
    (1..=last).find(|s| !have.contains(s))
}

/// For an external single-host URI: (the URI rewritten to `127.0.0.1:port`, the real
/// `host:port`). Multi-host and SRV URIs cannot be forwarded.
fn external_via(uri: &str, port: u16) -> (String, String) {
    let rest = uri
        .strip_prefix("mongodb://")
        .unwrap_or_else(|| panic!("FIELDGATE_TEST_MONGODB_URI must be a single-host mongodb:// URI for these tests, got {uri}"));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    assert!(
        !host.contains(','),
        "FIELDGATE_TEST_MONGODB_URI must name a single host for these tests, got {uri}"
    );
    let target = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:27017")
    };
    let tail = if tail.is_empty() { "/" } else { tail };
    let sep = if tail.contains('?') { "&" } else { "?" };
    (
        format!("mongodb://{user}127.0.0.1:{port}{tail}{sep}directConnection=true"),
        target,
    )
}

/// A loopback TCP forwarder that can be closed, severing every connection.
struct Forwarder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    fn start(port: u16, target: String) -> Forwarder {
        use std::net::{TcpListener, TcpStream};
        let t0 = Instant::now();
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if t0.elapsed() > Duration::from_secs(30) => panic!("bind {port}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let (stop2, conns2) = (stop.clone(), conns.clone());
        let accept = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((inbound, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = inbound.set_nonblocking(false);
                let Ok(outbound) = TcpStream::connect(&target) else {
                    continue;
                };
                let pairs = [
                    (inbound.try_clone(), outbound.try_clone()),
                    (outbound.try_clone(), inbound.try_clone()),
                ];
                if let Ok(mut c) = conns2.lock() {
                    c.extend(inbound.try_clone());
                    c.extend(outbound.try_clone());
                }
                for (from, to) in pairs {
                    if let (Ok(mut from), Ok(mut to)) = (from, to) {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                            let _ = from.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            }
        });
        Forwarder {
            stop,
            conns,
            accept: Some(accept),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        if let Ok(mut c) = self.conns.lock() {
            for s in c.drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

//! Test helpers for the mqtt tests: a real mosquitto on a free loopback port with its own
//! config and persistence directory, a paced QoS1 publisher (rumqttc), and a reader that
//! counts the message ids a journal holds.

use super::free_port;
use fieldgate::journal::{Journal, JournalConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The mosquitto binary: `FIELDGATE_TEST_MOSQUITTO`, else `/usr/sbin/mosquitto`. Panics
/// (fails the test) when it is missing: these tests never skip.
pub fn mosquitto_bin() -> PathBuf {
    let p = std::env::var_os("FIELDGATE_TEST_MOSQUITTO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"));
    assert!(
        p.is_file(),
        "mosquitto not found at {} (install the `mosquitto` package or set FIELDGATE_TEST_MOSQUITTO)",
        p.display()
    );
    p
}

/// A running mosquitto; killed on drop. Its session store survives `restart`.
pub struct Mosquitto {
    /// Listening port on 127.0.0.1.
    pub port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// Start a broker with persistence in `dir`, `max_inflight_messages` per client, no
    /// queue limit for offline persistent sessions.
    pub fn start(dir: &Path, max_inflight: u32) -> Mosquitto {
        Self::start_with(dir, max_inflight, "")
    }

    /// [`Mosquitto::start`] with `extra` appended to its config (e.g. a TLS listener).
    pub fn start_with(dir: &Path, max_inflight: u32, extra: &str) -> Mosquitto {
        let store = dir.join("mosquitto-store");
        std::fs::create_dir_all(&store).expect("store dir");
        Self::start_conf(
            dir,
            &format!(
                "persistence true\npersistence_location {store}/\nautosave_interval 1\n\
                 max_queued_messages 0\nmax_inflight_messages {max_inflight}\nlog_dest stderr\n\
                 log_type error\nlog_type warning\nlog_type notice\nlog_type information\n{extra}",
                store = store.display()
            ),
        )
    }

    /// A broker with a loopback listener, anonymous access and otherwise only `body` in its
    /// config (empty: Debian's defaults, e.g. `max_inflight_messages 20`,
    /// `max_queued_messages 1000`).
    pub fn start_conf(dir: &Path, body: &str) -> Mosquitto {
        mosquitto_bin();
        let port = free_port();
        // As root, mosquitto would switch to the `mosquitto` user and fail to write here.
        let user = if unsafe { libc::getuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("{user}listener {port} 127.0.0.1\nallow_anonymous true\n{body}"),
        )
        .expect("write mosquitto.conf");
        let mut m = Mosquitto {
            port,
            conf,
            log: dir.join("mosquitto.log"),
            child: None,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("mosquitto log");
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("mosquitto exited ({st}); log:\n{}", self.log());
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "mosquitto did not listen; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (mosquitto saves its session store) and wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::signal(&c, libc::SIGTERM);
            if super::wait_exit(&mut c, Duration::from_secs(20)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
                panic!("mosquitto did not stop on SIGTERM");
            }
        }
    }

    /// Stop and start again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Publisher progress, shared with the test thread.
#[derive(Default)]
pub struct Progress {
    /// Publishes handed to the client.
    pub queued: AtomicU64,
    /// PUBACKs received from the broker (a resent message may be counted twice).
    pub acked: AtomicU64,
    /// Set to stop the publisher thread.
    pub stop: AtomicBool,
}

/// A QoS1 publisher on its own thread: `n` messages with payload `{"id": i, ...}` to
/// `topic(i)`, `batch` at a time with `pause` between batches. It uses a persistent session,
/// so unacked messages are resent after a broker restart. Runs until `progress.stop`.
pub struct Publisher {
    /// Progress counters.
    pub progress: Arc<Progress>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Publisher {
    /// Start publishing.
    pub fn start(
        port: u16,
        client_id: &str,
        n: u64,
        batch: u64,
        pause: Duration,
        topic: impl Fn(u64) -> String + Send + 'static,
    ) -> Publisher {
        let progress = Arc::new(Progress::default());
        let p = Arc::clone(&progress);
        let client_id = client_id.to_string();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
                o.set_clean_session(false)
                    .set_keep_alive(Duration::from_secs(5))
                    .set_inflight(200);
                let (client, mut ev) = AsyncClient::new(o, 1000);
                let pp = Arc::clone(&p);
                let poller = tokio::spawn(async move {
                    while !pp.stop.load(Ordering::Relaxed) {
                        match ev.poll().await {
                            Ok(Event::Incoming(Packet::PubAck(_))) => {
                                pp.acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {}
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                });
                for i in 0..n {
                    let payload = serde_json::json!({
                        "id": i,
                        "speed_kmh": (i % 130) as f64 + 0.5,
                        "rpm": 800 + (i % 3000),
                        "lat": 53.54 + (i % 100) as f64 * 1e-4,
                        "lon": 9.96,
                    })
                    .to_string();
                    if client
                        .publish(topic(i), QoS::AtLeastOnce, false, payload)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    p.queued.fetch_add(1, Ordering::Relaxed);
                    if batch > 0 && (i + 1) % batch == 0 {
                        tokio::time::sleep(pause).await;
                    }
                }
                while !p.stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                poller.abort();
            });
        });
        Publisher {
            progress,
            thread: Some(thread),
        }
    }

    /// Publishes handed to the client so far.
    pub fn queued(&self) -> u64 {
        self.progress.queued.load(Ordering::Relaxed)
    }

    /// PUBACKs received so far.
    pub fn acked(&self) -> u64 {
        self.progress.acked.load(Ordering::Relaxed)
    }

    /// Wait until at least `n` PUBACKs arrived (panics after `limit`).
    pub fn wait_acked(&self, n: u64, limit: Duration) {
        let t0 = Instant::now();
        while self.acked() < n {
            assert!(
                t0.elapsed() < limit,
                "publisher got only {} of {n} PUBACKs in {limit:?}",
                self.acked()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.progress.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Create a persistent session for `client_id` subscribed to `filter` (QoS1), then
/// disconnect: the broker queues matching messages for it from now on.
pub fn presubscribe(port: u16, client_id: &str, filter: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_clean_session(false);
        let (client, mut ev) = AsyncClient::new(o, 10);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let done = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => panic!("presubscribe: {e}"),
                }
            }
        })
        .await;
        done.expect("SUBACK in time");
        client.disconnect().await.expect("disconnect");
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while ev.poll().await.is_ok() {}
        })
        .await;
    });
}

/// Publish each `(topic, payload)` at QoS1 and wait for all PUBACKs (20 s limit).
pub fn publish_all(port: u16, client_id: &str, messages: Vec<(String, Vec<u8>)>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_max_packet_size(4 << 20, 4 << 20);
        let n = messages.len();
        // Every publish is queued before the event loop is polled: room for all of them.
        let (client, mut ev) = AsyncClient::new(o, n.max(1));
        for (topic, payload) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
        }
        let mut acked = 0;
        tokio::time::timeout(Duration::from_secs(20), async {
            while acked < n {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => panic!("publish_all: {e}"),
                }
            }
        })
        .await
        .expect("all PUBACKs in time");
        client.disconnect().await.expect("disconnect");
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while ev.poll().await.is_ok() {}
        })
        .await;
    });
}

/// Publish `{}` to `topic` (QoS1) until `received()` (a count of what the subscriber has)
/// grows: a subscription is only known to be active once something arrived through it.
/// One probe a second, for 30 s at most.
pub fn probe_until(port: u16, topic: &str, received: impl Fn() -> u64) {
    let before = received();
    for _ in 0..30 {
        publish_all(port, "probe", vec![(topic.to_string(), b"{}".to_vec())]);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(1) {
            if received() > before {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("nothing arrived through the subscription to {topic} in 30 s");
}

/// Every frame's payload `id` in the journal at `path` → how many frames carry it, plus
/// the frames without an `id`. Opens the journal, so the gateway must have stopped.
pub fn journal_ids(path: &Path) -> (BTreeMap<u64, u64>, Vec<fieldgate::frame::Frame>) {
    let journal = Journal::open(JournalConfig {
        path: path.to_path_buf(),
        ..JournalConfig::default()
    })
    .expect("open journal");
    let mut ids = BTreeMap::new();
    let mut other = Vec::new();
    let mut next = 1;
    loop {
        let chunk = journal.range(next, 1000);
        let Some(last) = chunk.last() else { break };
        next = last.seq + 1;
        for f in chunk {
            match f.payload.get("id").and_then(|v| v.as_u64()) {
                Some(id) => *ids.entry(id).or_insert(0) += 1,
                None => other.push(f),
            }
        }
    }
    journal.close().expect("close journal");
    (ids, other)
}

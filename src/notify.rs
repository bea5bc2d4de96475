//! systemd integration: READY, STATUS, STOPPING, and a watchdog that pings only while the
//! pipeline makes progress.
//!
//! Under `Type=notify` systemd waits for READY=1 (sent once every component started) and,
//! with `WatchdogSec=`, restarts the service when WATCHDOG=1 stops arriving. The watchdog
//! here pings only while the journal writer keeps turning (it turns at least once a
//! second, idle or not) and every running source's loop keeps beating (each beats at
//! least once a second, or once per MQTT keep-alive, idle or not), so a wedged pipeline —
//! a hung disk, a deadlocked source — gets the process restarted instead of silently
//! dropping data. Outside systemd (no `NOTIFY_SOCKET`)
//! everything here is a no-op.

use crate::journal::Journal;
use crate::sink::SinkStates;
use crate::source::SourceStates;
use sd_notify::NotifyState;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The writer is considered wedged when silent this long (its idle turn is 1 s).
pub const WEDGED_AFTER: Duration = Duration::from_secs(5);

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Tell systemd the service is up.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tell systemd the service is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), if it applies to us.
/// Like libsystemd, a missing `WATCHDOG_PID` means "this process".
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// One-line status for `systemctl status`.
fn status_line(journal: &Journal, sinks: &SinkStates, rate: f64) -> String {
    let s = journal.stats();
    let mut line = format!(
        "{rate:.0} frames/s, journal seq {} ({} frames)",
        s.last_seq, s.frames
    );
    for (name, k) in sinks.snapshot() {
        line.push_str(&format!(", {name} {} lag {}", k.state, k.lag));
    }
    line
}

/// What is wedged right now, if anything (journal writer first, then sources).
fn wedged_parts(journal: &Journal, sources: &SourceStates) -> Option<String> {
    let age = journal.heartbeat_age();
    if age > WEDGED_AFTER {
        return Some(format!("journal writer silent {} s", age.as_secs()));
    }
    let stuck = sources.wedged();
    (!stuck.is_empty()).then(|| {
        stuck
            .iter()
            .map(|(name, age)| format!("source {name} silent {} s", age.as_secs()))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Ping the watchdog at half its interval while the journal writer and every running source
/// make progress, and keep STATUS= current, until `shutdown`.
pub async fn watchdog(
    journal: Journal,
    sinks: SinkStates,
    sources: SourceStates,
    shutdown: CancellationToken,
) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let interval = watchdog_interval();
    let tick = interval.map_or(Duration::from_secs(10), |i| {
        (i / 2).max(Duration::from_millis(50))
    });
    let mut last = (std::time::Instant::now(), journal.last_seq());
    let mut wedged = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let now = (std::time::Instant::now(), journal.last_seq());
        let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64().max(1e-3);
        last = now;
        let status = status_line(&journal, &sinks, rate);
        if let Some(what) = wedged_parts(&journal, &sources) {
            if !wedged {
                tracing::error!(
                    wedged = %what,
                    "pipeline is not making progress; withholding the watchdog ping"
                );
                wedged = true;
            }
            send(&[NotifyState::Status(&format!("WEDGED: {what}"))]);
            continue;
        }
        if wedged {
            tracing::info!("pipeline progressing again");
            wedged = false;
        }
        if interval.is_some() {
            send(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
        } else {
            send(&[NotifyState::Status(&status)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::JournalConfig;
    use crate::source::SourceStates;
    use std::os::unix::net::UnixDatagram;

    /// Collects every datagram on a thread (a real receiver never lets the queue fill).
    struct Collector(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl Collector {
        fn start(sock: UnixDatagram) -> Self {
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let out = seen.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = sock.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if let Ok(mut v) = out.lock() {
                        v.push(msg);
                    }
                }
            });
            Collector(seen)
        }

        /// Everything received since the last call.
        fn take(&self) -> String {
            self.0
                .lock()
                .map(|mut v| std::mem::take(&mut *v).join("\n"))
                .unwrap_or_default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ready_watchdog_stops_when_wedged_and_stopping() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let sock = Collector::start(UnixDatagram::bind(&path).expect("bind"));
        // This is the only test in the crate touching these variables.
        std::env::set_var("NOTIFY_SOCKET", &path);
        std::env::set_var("WATCHDOG_USEC", "200000");
        std::env::remove_var("WATCHDOG_PID");
        let journal = Journal::open(JournalConfig {
            path: dir.path().join("journal"),
            ..JournalConfig::default()
        })
        .expect("journal");
        ready("started");
        let stop = CancellationToken::new();
        let sources = SourceStates::default();
        let slot = sources.register("gps", "serial");
        slot.set_state("running", None);
        let task = tokio::spawn(watchdog(
            journal.clone(),
            SinkStates::default(),
            sources.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(800)).await;
        let got = sock.take();
        assert!(got.contains("READY=1"), "{got}");
        assert!(got.matches("WATCHDOG=1").count() >= 3, "{got}");
        assert!(got.contains("frames/s"), "{got}");

        // Wedge the writer from another thread (a lock holder that never lets go).
        let (release, released) = std::sync::mpsc::channel::<()>();
        let wedged = journal.clone();
        let holder = std::thread::spawn(move || {
            let _guard = wedged.wedge();
            let _ = released.recv();
        });
        tokio::time::sleep(WEDGED_AFTER + Duration::from_secs(1)).await;
        sock.take();
        tokio::time::sleep(Duration::from_millis(800)).await;
        let during = sock.take();
        assert!(
            !during.contains("WATCHDOG=1"),
            "pings continued while wedged: {during}"
        );
        assert!(during.contains("WEDGED"), "{during}");
        let _ = release.send(());
        holder.join().expect("lock holder");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(sock.take().contains("WATCHDOG=1"), "pings resume");

        // A running source whose loop stops beating withholds the pings too; a beat (or
        // the source stopping) brings them back.
        slot.set_wedged_after(Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(600)).await;
        sock.take();
        tokio::time::sleep(Duration::from_millis(800)).await;
        let during = sock.take();
        assert!(!during.contains("WATCHDOG=1"), "source wedged: {during}");
        assert!(during.contains("WEDGED: source gps silent"), "{during}");
        slot.set_wedged_after(Duration::from_secs(60));
        slot.beat();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            sock.take().contains("WATCHDOG=1"),
            "pings resume after a beat"
        );

        stopping();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(sock.take().contains("STOPPING=1"));
        stop.cancel();
        task.await.expect("watchdog task");
        journal.close().expect("close");
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
    }
}

//! Driver set-up and the retry policy shared by the frame and registry loops.
//!
//! Timeouts are chosen so that an absent server is noticed in seconds (server selection),
//! and a server that hangs mid-operation cannot stall the sink forever (operation timeout).

use super::health::Health;
use super::MongoConfig;
use mongodb::error::{Error, ErrorKind, IndexedWriteError};
use mongodb::options::ClientOptions;
use mongodb::Client;
use rand::Rng;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long an operation waits for a usable server before it fails (unless the URI says).
const SERVER_SELECTION: Duration = Duration::from_secs(5);
/// TCP/TLS connect timeout (unless the URI says).
const CONNECT: Duration = Duration::from_secs(3);
/// Longest a single operation may take before it is abandoned and retried.
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// First retry delay; doubled per failure up to `backoff_max`.
const BACKOFF_START: Duration = Duration::from_millis(200);

/// The MongoDB duplicate-key error code.
pub(super) const DUPLICATE_KEY: i32 = 11000;
/// The server's "not authorized" code.
pub(super) const UNAUTHORIZED: i32 = 13;

/// Whether `e` is the server refusing a query as not authorized (a user allowed to insert
/// but not to read).
pub(super) fn unauthorized(e: &Error) -> bool {
    matches!(&*e.kind, ErrorKind::Command(c) if c.code == UNAUTHORIZED)
}

/// Capped exponential backoff with jitter.
pub(super) struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    /// Starts at 200 ms, never above `cap` (at least 10 ms).
    pub(super) fn new(cap: Duration) -> Self {
        let cap = cap.max(Duration::from_millis(10));
        Backoff {
            next: BACKOFF_START.min(cap),
            cap,
        }
    }

    /// The delay before the next attempt: uniformly in [d/2, d], d doubling per call.
    pub(super) fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.cap);
        let half = d / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter_ms)
    }

    /// After a success.
    pub(super) fn reset(&mut self) {
        self.next = BACKOFF_START.min(self.cap);
    }
}

/// Sleep for `d`; false if shutdown came first.
pub(super) async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Client options from the config: the URI's own settings plus ours.
pub(crate) async fn options(cfg: &MongoConfig) -> Result<ClientOptions, Error> {
    let mut opts = ClientOptions::parse(&cfg.uri).await?;
    opts.retry_writes = Some(true);
    opts.write_concern = Some(cfg.write_concern());
    opts.server_selection_timeout
        .get_or_insert(SERVER_SELECTION);
    opts.connect_timeout.get_or_insert(CONNECT);
    opts.app_name.get_or_insert_with(|| "fieldgate".into());
    Ok(opts)
}

/// Build the client, retrying while the URI cannot be resolved (a `mongodb+srv://` lookup
/// needs the uplink). `None` on shutdown. Creating a client does not contact the server.
pub(super) async fn connect_until_ok(
    cfg: &MongoConfig,
    health: &Health,
    stop: &CancellationToken,
) -> Option<Client> {
    let mut backoff = Backoff::new(cfg.backoff_max.0);
    loop {
        let built = match options(cfg).await {
            Ok(opts) => Client::with_options(opts),
            Err(e) => Err(e),
        };
        match built {
            Ok(c) => return Some(c),
            Err(e) => health.failed(&format!("cannot set up the MongoDB client: {e}")),
        }
        if !sleep_or_stop(backoff.delay(), stop).await {
            return None;
        }
    }
}

/// The per-document errors of an `insert_many` that otherwise went through: `None` when
/// the error is anything else (a write-concern error, the network, a command error), i.e.
/// when the server may not have every other document.
pub(super) fn write_errors(e: &Error) -> Option<&[IndexedWriteError]> {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(im) if im.write_concern_error.is_none() => {
            let errs = im.write_errors.as_deref().unwrap_or_default();
            (!errs.is_empty()).then_some(errs)
        }
        _ => None,
    }
}

/// Run `op` until it succeeds: each failure marks the link offline and backs off. `None`
/// on shutdown.
pub(super) async fn until_ok<T, Fut>(
    health: &Health,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
    mut op: impl FnMut() -> Fut,
) -> Option<T>
where
    Fut: std::future::Future<Output = Result<T, String>>,
{
    loop {
        let r = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = op() => r,
        };
        match r {
            Ok(v) => {
                health.reachable();
                return Some(v);
            }
            Err(e) => {
                health.failed(&e);
                if !sleep_or_stop(backoff.delay(), shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// A short, single-line description of a driver error for the status page.
pub(crate) fn describe(e: &Error) -> String {
    let s = e.to_string();
    let s = s.replace('\n', " ");
    if s.len() > 400 {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

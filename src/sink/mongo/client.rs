//! Driver set-up and the retry policy shared by the frame and registry loops.
//!
//! Timeouts are chosen so that an absent server is noticed in seconds (server selection),
//! and a server that hangs mid-operation cannot stall the sink forever (operation timeout).

use super::health::Health;
use super::MongoConfig;
use mongodb::error::{Error, ErrorKind};
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
        let jitter_ms = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
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

/// Whether an `insert_many` error only says "these `_id`s are already there": every write
/// error is a duplicate key and there is no write-concern error.
pub(super) fn only_duplicates(e: &Error) -> Option<usize> {
    match e.kind.as_ref() {
        ErrorKind::InsertMany(im) if im.write_concern_error.is_none() => {
            let errs = im.write_errors.as_deref().unwrap_or_default();
            (!errs.is_empty() && errs.iter().all(|w| w.code == DUPLICATE_KEY)).then_some(errs.len())
        }
        _ => None,
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

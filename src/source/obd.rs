//! ELM327 OBD-II poller (`[[sources.obd]]`): engine data from the diagnostic port.
//!
//! An ELM327 adapter is a command/response device on a serial port: we send `010C\r`, it
//! answers `410C145F\r\r>`. The task opens the port ([`super::port`], same unplug/backoff
//! as serial), initialises the adapter (ATZ, ATE0, ATL0, ATS0, ATSP0), then every
//! `interval_ms` asks for each configured mode-01 PID and journals one `obd` frame per
//! cycle with the decoded fields and their units; every `dtc_interval_ms` it reads the
//! stored trouble codes (mode 03) into a `dtc` frame. Each command has a deadline
//! (extended while the adapter is `SEARCHING...`); failures are counted per reason, and
//! after several in a row the adapter is re-initialised. Parsing lives in [`super::elm327`].

use crate::config::ConfigError;
use crate::frame::Frame;
use crate::source::elm327::{self, Reply};
use crate::source::events::{count_append, AdapterReinit, LogLimit, ObdCommandFailed};
use crate::source::port::{self, Backoff, Outage};
use crate::source::SourceCtx;
use crate::units::Positive;
use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_serial::SerialStream;
use tracing::Instrument;

/// One ELM327 adapter on a serial port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObdConfig {
    /// Source name (unique).
    pub name: String,
    /// Serial device path.
    pub path: PathBuf,
    /// Baud rate.
    #[serde(default = "default_baud")]
    pub baud: Positive,
    /// Mode-01 PIDs to poll, as two hex digits.
    #[serde(default = "default_pids")]
    pub pids: Vec<String>,
    /// Poll interval, ms.
    #[serde(default = "default_interval")]
    pub interval_ms: Positive,
    /// DTC (mode 03) read interval, ms.
    #[serde(default = "default_dtc_interval")]
    pub dtc_interval_ms: Positive,
    /// Device id (defaults to the source name).
    pub device: Option<String>,
    /// Vehicle id.
    pub vehicle: Option<String>,
}

fn default_baud() -> Positive {
    Positive(38_400)
}
fn default_pids() -> Vec<String> {
    ["0C", "0D", "05", "0F", "10", "11", "2F", "42"]
        .map(String::from)
        .to_vec()
}
fn default_interval() -> Positive {
    Positive(1000)
}
fn default_dtc_interval() -> Positive {
    Positive(60_000)
}

impl ObdConfig {
    /// Checks beyond types; `key` is this entry's path.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if u32::try_from(self.baud.0).is_err() {
            return Err(ConfigError::invalid(
                format!("{key}.baud"),
                format!("expected a baud rate such as 38400, got {}", self.baud.0),
            ));
        }
        for (i, pid) in self.pids.iter().enumerate() {
            if pid.len() != 2 || u8::from_str_radix(pid, 16).is_err() {
                return Err(ConfigError::invalid(
                    format!("{key}.pids[{i}]"),
                    format!("expected a two-digit hex PID such as \"0C\", got {pid:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// Deadline of an ordinary command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline of `ATZ` (the adapter reboots).
pub(crate) const RESET_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline once the adapter said `SEARCHING...` (protocol detection).
const SEARCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed commands in a row before the adapter is re-initialised.
const REINIT_AFTER: u32 = 5;
/// Most bytes kept of one reply.
const REPLY_MAX: usize = 4096;
/// The init sequence.
const INIT: [&str; 5] = ["ATZ", "ATE0", "ATL0", "ATS0", "ATSP0"];

/// Why a session with the adapter ended.
enum Ended {
    /// Shutdown fired.
    Shutdown,
    /// The journal refused a frame.
    Journal(String),
    /// The port failed or the adapter stopped answering.
    Lost(std::io::Error),
}

/// Why one command got no reply.
pub(crate) enum CommandError {
    /// No prompt before the deadline; what arrived so far.
    Timeout(String),
    /// The port failed.
    Io(std::io::Error),
}

/// An ELM327 on an open port.
pub(crate) struct Adapter {
    stream: SerialStream,
    buf: Vec<u8>,
}

impl Adapter {
    /// The adapter on an open port.
    pub(crate) fn new(stream: SerialStream) -> Adapter {
        Adapter {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends `cmd` and returns the reply text up to the `>` prompt.
    pub(crate) async fn command(
        &mut self,
        cmd: &str,
        timeout: Duration,
    ) -> Result<String, CommandError> {
        let mut scratch = [0u8; 512];
        // A late reply to an earlier, timed-out command must not be taken for this one.
        while let Some(r) = self.stream.read(&mut scratch).now_or_never() {
            match r {
                Ok(0) => return Err(CommandError::Io(eof())),
                Ok(_) => {}
                Err(e) => return Err(CommandError::Io(e)),
            }
        }
        self.buf.clear();
        let mut deadline = Instant::now() + timeout;
        let line = format!("{cmd}\r");
        match tokio::time::timeout_at(deadline, self.stream.write_all(line.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(CommandError::Io(e)),
            Err(_) => return Err(CommandError::Timeout(String::new())),
        }
        let mut searching = false;
        loop {
            if let Some(p) = self.buf.iter().position(|&b| b == b'>') {
                return Ok(String::from_utf8_lossy(&self.buf[..p]).into_owned());
            }
            if !searching && self.buf.windows(9).any(|w| w == b"SEARCHING") {
                searching = true;
                deadline = Instant::now() + SEARCH_TIMEOUT;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut scratch)).await {
                Err(_) => {
                    let partial = String::from_utf8_lossy(&self.buf).into_owned();
                    return Err(CommandError::Timeout(partial));
                }
                Ok(Ok(0)) => return Err(CommandError::Io(eof())),
                Ok(Ok(n)) => {
                    self.buf.extend_from_slice(&scratch[..n]);
                    if self.buf.len() > REPLY_MAX {
                        let cut = self.buf.len() - REPLY_MAX;
                        self.buf.drain(..cut);
                    }
                }
                Ok(Err(e)) => return Err(CommandError::Io(e)),
            }
        }
    }
}

fn eof() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "port closed")
}

/// Run one OBD adapter until shutdown: init, poll, read DTCs; reopen when it comes back.
pub async fn run(cfg: ObdConfig, ctx: SourceCtx) {
    let device = cfg.device.clone().unwrap_or_else(|| cfg.name.clone());
    let span = tracing::info_span!("obd", device = %device,
        vehicle = cfg.vehicle.as_deref().unwrap_or(""));
    Poller::new(cfg, ctx, device).run().instrument(span).await
}

/// The poller's state across sessions.
struct Poller {
    cfg: ObdConfig,
    ctx: SourceCtx,
    device: String,
    source: String,
    pids: Vec<u8>,
    limit: LogLimit,
    outage: Outage,
    backoff: Backoff,
    /// Failed commands in a row.
    failures: u32,
    /// The last poll cycle got no value at all (state `waiting`).
    silent: bool,
}

impl Poller {
    fn new(cfg: ObdConfig, ctx: SourceCtx, device: String) -> Self {
        let pids = cfg
            .pids
            .iter()
            .filter_map(|p| u8::from_str_radix(p, 16).ok())
            .collect();
        Poller {
            source: format!("obd:{}", cfg.name),
            cfg,
            ctx,
            device,
            pids,
            limit: LogLimit::new(),
            outage: Outage::default(),
            backoff: Backoff::default(),
            failures: 0,
            silent: false,
        }
    }

    async fn run(mut self) {
        let baud = u32::try_from(self.cfg.baud.0).unwrap_or(u32::MAX);
        let shutdown = self.ctx.shutdown.clone();
        while !shutdown.is_cancelled() {
            match port::open(&self.cfg.path, baud) {
                Ok(stream) => {
                    let mut adapter = Adapter::new(stream);
                    let ended = tokio::select! {
                        _ = shutdown.cancelled() => Ended::Shutdown,
                        ended = self.session(&mut adapter) => ended,
                    };
                    match ended {
                        Ended::Shutdown => break,
                        Ended::Journal(e) => {
                            tracing::error!(source = %self.cfg.name, error = %e, "cannot journal; source stops");
                            self.ctx.slot.set_state("stopped", Some(e));
                            return;
                        }
                        Ended::Lost(e) => {
                            let (name, path) = (&self.cfg.name, &self.cfg.path);
                            self.outage.failed(name, path, &self.ctx.slot, &e);
                        }
                    }
                }
                Err(e) => {
                    let (name, path) = (&self.cfg.name, &self.cfg.path);
                    self.outage.failed(name, path, &self.ctx.slot, &e);
                }
            }
            if !self.backoff.wait(&shutdown).await {
                break;
            }
        }
        self.ctx.slot.set_state("stopped", None);
    }

    /// Init and poll an open adapter until the port fails; re-inits after repeated failures.
    async fn session(&mut self, adapter: &mut Adapter) -> Ended {
        loop {
            if let Err(e) = self.init(adapter).await {
                return Ended::Lost(e);
            }
            self.outage
                .opened(&self.cfg.name, &self.cfg.path, &self.ctx.slot);
            self.backoff.reset();
            self.failures = 0;
            self.silent = false;
            let every = |ms: u64| {
                let mut t = tokio::time::interval(Duration::from_millis(ms));
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            };
            let mut poll = every(self.cfg.interval_ms.0);
            let mut dtc = every(self.cfg.dtc_interval_ms.0);
            let mut beat = super::beat_interval();
            while self.failures < REINIT_AFTER {
                let result = tokio::select! {
                    biased;
                    _ = poll.tick() => self.poll_cycle(adapter).await,
                    _ = dtc.tick() => self.read_dtcs(adapter).await,
                    _ = beat.tick() => {
                        self.ctx.slot.beat();
                        Ok(())
                    }
                };
                if let Err(ended) = result {
                    return ended;
                }
            }
            AdapterReinit {
                source: &self.cfg.name,
                failures: self.failures,
            }
            .emit(&mut self.limit);
        }
    }

    /// Runs the init sequence; any reply will do, a silent adapter is an error.
    async fn init(&mut self, adapter: &mut Adapter) -> Result<(), std::io::Error> {
        for cmd in INIT {
            let timeout = if cmd == "ATZ" {
                RESET_TIMEOUT
            } else {
                COMMAND_TIMEOUT
            };
            match adapter.command(cmd, timeout).await {
                Ok(reply) => {
                    tracing::debug!(source = %self.cfg.name, command = cmd, reply = %reply.trim(), "init");
                }
                Err(CommandError::Io(e)) => return Err(e),
                Err(CommandError::Timeout(_)) => {
                    self.failed(cmd, "timeout", "");
                    let msg = format!("adapter did not answer {cmd}");
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, msg));
                }
            }
        }
        Ok(())
    }

    /// Counts and logs (rate-limited) a failed command.
    fn failed(&mut self, command: &str, reason: &'static str, detail: &str) {
        ObdCommandFailed {
            source: &self.cfg.name,
            command,
            reason,
            detail,
        }
        .emit(&self.ctx.slot, &mut self.limit);
    }

    /// Sends one request; `Ok(None)` if it failed in a way that was counted.
    async fn request(&mut self, adapter: &mut Adapter, cmd: &str) -> Result<Option<Reply>, Ended> {
        match adapter.command(cmd, COMMAND_TIMEOUT).await {
            Ok(text) => Ok(Some(elm327::parse_reply(&text, cmd))),
            Err(CommandError::Io(e)) => Err(Ended::Lost(e)),
            Err(CommandError::Timeout(partial)) => {
                self.failures += 1;
                self.failed(cmd, "timeout", partial.trim());
                Ok(None)
            }
        }
    }

    /// Notes a reply that carries no usable data.
    fn bad_reply(&mut self, cmd: &str, reply: &Reply) {
        if !matches!(reply, Reply::NoData) {
            self.failures += 1;
        }
        let detail = match reply {
            Reply::Error(_, words) | Reply::Text(words) => words.clone(),
            Reply::Data(_) => "data for another request".into(),
            Reply::NoData => "NO DATA".into(),
            Reply::Unknown => "?".into(),
        };
        self.failed(cmd, reply.reason(), &detail);
    }

    /// Asks for every configured PID; journals one `obd` frame with what came back.
    async fn poll_cycle(&mut self, adapter: &mut Adapter) -> Result<(), Ended> {
        let mut payload = Map::new();
        let mut no_data = Vec::new();
        for pid in self.pids.clone() {
            let cmd = format!("01{pid:02X}");
            let Some(reply) = self.request(adapter, &cmd).await? else {
                continue;
            };
            let decoded = match &reply {
                Reply::Data(m) => {
                    elm327::mode01_data(m, pid).and_then(|d| elm327::decode_pid(pid, d))
                }
                _ => None,
            };
            match decoded {
                Some((field, value, _)) => {
                    self.failures = 0;
                    payload.insert(field, value);
                }
                None => {
                    if reply == Reply::NoData {
                        no_data.push(Value::from(format!("{pid:02X}")));
                    }
                    self.bad_reply(&cmd, &reply);
                }
            }
        }
        if payload.is_empty() {
            // The adapter answers but no ECU does (ignition off, wrong protocol).
            if !self.silent {
                self.silent = true;
                let why = format!("no PID answered ({})", self.cfg.pids.join(", "));
                self.ctx.slot.set_state("waiting", Some(why));
            }
            return Ok(());
        }
        if std::mem::take(&mut self.silent) {
            self.ctx.slot.set_state("running", None);
        }
        let units = elm327::units_for(&payload);
        payload.insert("units".into(), Value::Object(units));
        if !no_data.is_empty() {
            payload.insert("no_data".into(), Value::Array(no_data));
        }
        self.journal("obd", Value::Object(payload))
    }

    /// Reads stored DTCs (mode 03) into a `dtc` frame.
    async fn read_dtcs(&mut self, adapter: &mut Adapter) -> Result<(), Ended> {
        let Some(reply) = self.request(adapter, "03").await? else {
            return Ok(());
        };
        let codes = match &reply {
            Reply::Data(m) if m.iter().any(|m| m.first() == Some(&0x43)) => elm327::dtcs(m),
            // Some adapters say NO DATA when no code is stored.
            Reply::NoData => Vec::new(),
            other => {
                let other = other.clone();
                self.bad_reply("03", &other);
                return Ok(());
            }
        };
        self.failures = 0;
        let count = codes.len();
        let payload = serde_json::json!({ "codes": codes, "count": count });
        self.journal("dtc", payload)
    }

    /// Appends one frame of this adapter.
    fn journal(&mut self, kind: &str, payload: Value) -> Result<(), Ended> {
        let mut f = Frame::new(&self.ctx.gateway, &self.source, &self.device, kind, payload);
        f.vehicle = self.cfg.vehicle.clone();
        let appended = self.ctx.journal.append(f);
        count_append(appended, 1, &self.cfg.name, &self.ctx.slot, &mut self.limit)
            .map(|_| ())
            .map_err(|e| Ended::Journal(e.to_string()))
    }
}

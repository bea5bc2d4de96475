//! The gateway under test: a real `fieldgate run` process with a config written for the
//! scenario, an API key added with `fieldgate keys add`, its log in the scratch directory,
//! and its `/api/status` read over HTTP.

use crate::rig::{until, Ctx};
use anyhow::{bail, Context};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The parts of a gateway config the scenarios vary.
#[derive(Debug, Clone)]
pub struct Spec {
    /// `gateway.id`.
    pub id: String,
    /// `journal.path`.
    pub journal: PathBuf,
    /// `journal.flush_ms`.
    pub flush_ms: u64,
    /// `journal.max_bytes` (TOML value, e.g. `"1MiB"`), default when `None`.
    pub max_bytes: Option<String>,
    /// `[mongo]`: (uri, database).
    pub mongo: Option<(String, String)>,
    /// `[[sources.mqtt]]`: (url, client id), subscribing `chaos/{vehicle}/{device}/{kind}`.
    pub mqtt: Option<(String, String)>,
    /// `[[sources.serial]]` NMEA ports: (name, path).
    pub serial: Vec<(String, PathBuf)>,
    /// `[[sources.sim]]` with this interval (ms).
    pub sim_ms: Option<u64>,
}

impl Spec {
    /// A gateway `id` with its journal at `journal` and nothing else.
    pub fn new(id: &str, journal: &Path) -> Spec {
        Spec {
            id: id.into(),
            journal: journal.into(),
            flush_ms: 20,
            max_bytes: None,
            mongo: None,
            mqtt: None,
            serial: Vec::new(),
            sim_ms: None,
        }
    }

    /// The config file's text, listening on `port`.
    pub fn toml(&self, port: u16) -> String {
        let mut t = format!(
            "[gateway]\nid = \"{}\"\n[journal]\npath = \"{}\"\nflush_ms = {}\n",
            self.id,
            self.journal.display(),
            self.flush_ms
        );
        if let Some(b) = &self.max_bytes {
            let _ = writeln!(t, "max_bytes = \"{b}\"");
        }
        let _ = write!(
            t,
            "[listen]\naddress = \"127.0.0.1:{port}\"\n[log]\nlevel = \"info\"\n"
        );
        if let Some((uri, db)) = &self.mongo {
            // A short backoff cap: the scenarios time the catch-up after an outage.
            let _ = write!(
                t,
                "[mongo]\nuri = \"{uri}\"\ndatabase = \"{db}\"\nbackoff_max = \"2s\"\n"
            );
        }
        if let Some((url, client_id)) = &self.mqtt {
            let _ = write!(
                t,
                "[[sources.mqtt]]\nname = \"broker\"\nurl = \"{url}\"\nclient_id = \"{client_id}\"\n\
                 subscriptions = [{{ topic = \"chaos/{{vehicle}}/{{device}}/{{kind}}\", qos = 1 }}]\n"
            );
        }
        for (name, path) in &self.serial {
            let _ = write!(
                t,
                "[[sources.serial]]\nname = \"{name}\"\npath = \"{}\"\nbaud = 9600\n\
                 framing = \"nmea\"\ndevice = \"{name}\"\nvehicle = \"van-1\"\n",
                path.display()
            );
        }
        if let Some(ms) = self.sim_ms {
            let _ = write!(
                t,
                "[[sources.sim]]\nname = \"sim\"\nvehicle = \"van-sim\"\ninterval_ms = {ms}\n"
            );
        }
        t
    }
}

/// A gateway process (not running until [`Gateway::start`]); killed on drop.
pub struct Gateway {
    bin: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// API port.
    pub port: u16,
    /// A key with the read scope.
    pub key: String,
    /// stderr of every run, appended.
    pub log: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
    rt: tokio::runtime::Handle,
}

impl Gateway {
    /// Write the config for `spec` into the scratch directory (as `<name>.toml`) and add a
    /// read key to its journal.
    pub fn create(ctx: &Ctx, name: &str, spec: &Spec) -> anyhow::Result<Gateway> {
        let port = fieldgate_bench::broker::free_port()?;
        let config = ctx.path(&format!("{name}.toml"));
        std::fs::write(&config, spec.toml(port))?;
        let out = Command::new(&ctx.env.fieldgate)
            .args(["keys", "add", "chaos", "--scopes", "read", "--config"])
            .arg(&config)
            .output()?;
        if !out.status.success() {
            bail!(
                "fieldgate keys add failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Gateway {
            bin: ctx.env.fieldgate.clone(),
            config,
            port,
            key: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            log: ctx.path(&format!("{name}.log")),
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            rt: ctx.rt.handle().clone(),
        })
    }

    /// Start `fieldgate run` (not waiting for it).
    pub fn spawn(&mut self, ctx: &Ctx) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "gateway already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = ctx.spawn(
            Command::new(&self.bin)
                .args(["run", "--config"])
                .arg(&self.config)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )?;
        self.child = Some(child);
        Ok(())
    }

    /// Start and wait (up to 30 s) until `/healthz` answers.
    pub fn start(&mut self, ctx: &Ctx) -> anyhow::Result<()> {
        self.spawn(ctx)?;
        self.wait_ready(Duration::from_secs(30))
    }

    /// Wait until `/healthz` answers 200 (failing early if the process exits).
    pub fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    bail!("gateway exited at start ({st}); log {}", self.log.display());
                }
            }
            if self.get("/healthz").is_ok_and(|(c, _)| c == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("gateway not ready in {limit:?}; log {}", self.log.display())
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self, ctx: &Ctx) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            ctx.reaped(c.id());
        }
    }

    /// SIGTERM and wait (up to 30 s) for the exit; SIGKILL after that.
    pub fn stop(&mut self, ctx: &Ctx) -> anyhow::Result<ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("gateway not running");
        };
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = c.try_wait()? {
                break st;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                let _ = c.kill();
                let _ = c.wait();
                ctx.reaped(c.id());
                bail!("gateway did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        ctx.reaped(c.id());
        Ok(st)
    }

    /// GET `path` with the key: (status, body as JSON or `null`).
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let req = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .header("x-api-key", &self.key);
        self.rt.block_on(async move {
            let r = req.send().await?;
            let code = r.status().as_u16();
            let text = r.text().await?;
            Ok((code, serde_json::from_str(&text).unwrap_or(Value::Null)))
        })
    }

    /// `durable_seq` from `/readyz`, which needs no key (a quarantined journal takes the
    /// API keys stored in it along).
    pub fn durable_seq(&self) -> anyhow::Result<u64> {
        match self.get("/readyz")? {
            (_, v) if v.get("durable_seq").is_some() => Ok(num(&v, "durable_seq")),
            (code, v) => bail!("/readyz answered {code}: {v}"),
        }
    }

    /// `/api/status` (an error unless it answers 200).
    pub fn status(&self) -> anyhow::Result<Value> {
        match self.get("/api/status")? {
            (200, v) => Ok(v),
            (code, v) => bail!("/api/status answered {code}: {v}"),
        }
    }

    /// Poll `/api/status` until `pred` holds.
    pub fn status_until(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        until(limit, what, || Ok(self.status().ok().filter(|s| pred(s))))
            .with_context(|| format!("log {}", self.log.display()))
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A number at `path` (`/`-separated keys) of a status document, 0 when absent.
pub fn num(v: &Value, path: &str) -> u64 {
    path.split('/')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// A float at `path` of a status document, NaN when absent.
pub fn float(v: &Value, path: &str) -> f64 {
    path.split('/')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

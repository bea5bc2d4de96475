//! `fieldgate doctor`: the installer's check, part by part, each with a verdict and a fix.
//!
//! An installer wiring a GPS, an OBD cable and an LTE modem into a van needs to know which
//! part is wrong without reading logs. Each module here checks one kind of part against
//! the real thing — the config file, the journal directory and its disk, every serial/OBD
//! port (does it exist, may the service user open it, does it speak NMEA / answer `ATZ` /
//! answer SLCAN's `V`), every other CAN bus (SocketCAN interface up, SLCAN-over-TCP
//! reachable, candump log readable), every MQTT broker, MongoDB, the listen address, the
//! clock — and says `ok`, `WARN` or
//! `FAIL`, with the fix on failure. It runs beside a running service without disturbing
//! it: nothing the service holds is opened (a port in use is reported with the holder and,
//! given a key, the service's own view from `/api/status`), MQTT uses its own client id
//! and a clean session, and the MongoDB write goes to a scratch collection that is dropped.
//!
//! Extension point: `[listen]` TLS files are checked by [`listen::tls_files`] once the
//! listener has `tls_cert`/`tls_key`.

pub mod access;
mod can;
mod clock;
mod journal;
pub mod listen;
mod mongo;
mod mqtt;
pub mod ports;
pub mod procfs;
mod running;

use crate::config::Config;
use access::Account;
use serde::Serialize;
use std::path::PathBuf;

/// Arguments of `fieldgate doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// The config file to check.
    #[arg(long, short, default_value = "/etc/fieldgate/fieldgate.toml")]
    pub config: PathBuf,
    /// Print one JSON object (for tools) instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Judge permissions for this user instead of the service's (`fieldgate`, from the
    /// systemd unit); `--user` alone means the user running doctor.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "NAME")]
    pub user: Option<String>,
    /// API key (scope read) to show the running gateway's own view of what it holds.
    #[arg(long, env = "FIELDGATE_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Check only the parts whose name starts with one of these, e.g. `serial:gps,mqtt`.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// A part's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Works.
    Ok,
    /// Not broken, but doctor could not fully verify it (or it is worth knowing).
    Warn,
    /// Broken: the fix says what to do.
    Fail,
}

/// One part's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The part, e.g. `serial:gps`, `mqtt:broker`, `journal disk`.
    pub part: String,
    /// Its verdict.
    pub verdict: Verdict,
    /// What doctor found.
    pub detail: String,
    /// What to do about it (failures and warnings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    /// A part that works.
    pub fn ok(part: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            part: part.into(),
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A part doctor could not fully verify.
    pub fn warn(
        part: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::with_fix(part.into(), Verdict::Warn, detail.into(), fix.into())
    }

    /// A broken part and its fix.
    pub fn fail(
        part: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::with_fix(part.into(), Verdict::Fail, detail.into(), fix.into())
    }

    fn with_fix(part: String, verdict: Verdict, detail: String, fix: String) -> Check {
        Check {
            part,
            verdict,
            detail,
            fix: Some(fix),
        }
    }
}

/// Everything doctor found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The config file checked.
    pub config: PathBuf,
    /// Whose permissions were judged.
    pub user: String,
    /// Whether every part passed (no `fail`).
    pub ok: bool,
    /// The running gateway, if one holds the listen address.
    pub service: Option<running::Summary>,
    /// One entry per part, in config order.
    pub checks: Vec<Check>,
}

impl Report {
    /// The process exit code: 0 when no part failed.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.ok)
    }

    /// The report as lines for a terminal.
    pub fn text(&self) -> String {
        let width = self
            .checks
            .iter()
            .map(|c| c.part.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = format!(
            "fieldgate doctor: {}, permissions judged for user {}\n",
            self.config.display(),
            self.user
        );
        for c in &self.checks {
            let label = match c.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            };
            out.push_str(&format!("{label}  {:<width$}  {}\n", c.part, c.detail));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("      {:<width$}  fix: {fix}\n", ""));
            }
        }
        let count = |v| self.checks.iter().filter(|c| c.verdict == v).count();
        let (failed, warned) = (count(Verdict::Fail), count(Verdict::Warn));
        out.push_str(&match (failed, warned) {
            (0, 0) => format!("all {} parts ok\n", self.checks.len()),
            (0, w) => format!("no part failed; {w} warning(s)\n"),
            (f, w) => format!(
                "{f} of {} parts failed; {w} warning(s)\n",
                self.checks.len()
            ),
        });
        out
    }
}

/// What every check may consult.
pub(crate) struct Ctx {
    /// The parsed config.
    pub cfg: Config,
    /// The account whose permissions are judged (`Err`: it does not exist here).
    pub acct: Result<Account, access::NoSuchUser>,
    /// The running gateway, as seen from outside.
    pub service: running::Service,
}

impl Ctx {
    /// The account's name, for messages.
    pub fn user(&self) -> String {
        match &self.acct {
            Ok(a) => a.name.clone(),
            Err(e) => e.0.clone(),
        }
    }
}

/// Run every wanted check against the config `args` names.
pub async fn run(args: &DoctorArgs) -> Report {
    let user_name = match args.user.as_deref() {
        None => access::service_user(),
        Some("") => access::Account::current().map_or_else(|e| e.0, |a| a.name),
        Some(name) => name.to_string(),
    };
    let acct = match args.user.as_deref() {
        None => Account::service(),
        Some(_) => Account::by_name(&user_name, &[]),
    };
    let wanted = |part: &str| args.only.is_empty() || args.only.iter().any(|o| part.starts_with(o));
    let mut report = Report {
        config: args.config.clone(),
        user: user_name,
        ok: false,
        service: None,
        checks: Vec::new(),
    };
    let cfg = match Config::load(&args.config) {
        Ok(cfg) => cfg,
        Err(e) => {
            report.checks.push(config_failure(&args.config, &e));
            return report;
        }
    };
    let service = running::probe(&cfg.listen, args.key.as_deref()).await;
    report.service = service.summary();
    let ctx = Ctx { cfg, acct, service };
    let mut checks = vec![config_ok(&ctx, &args.config)];
    if let Err(e) = &ctx.acct {
        checks.push(Check::fail(
            "user",
            e.to_string(),
            "install the package (it creates the user), or judge permissions for another \
             user with --user NAME (--user alone: yourself)",
        ));
    }
    for c in journal::checks(&ctx) {
        if wanted(&c.part) {
            checks.push(c);
        }
    }
    let ports = ports::configured(&ctx.cfg.sources);
    let probes = ports
        .iter()
        .filter(|p| wanted(&p.part))
        .map(|p| p.check(&ctx));
    let brokers = ctx
        .cfg
        .sources
        .mqtt
        .iter()
        .filter(|m| wanted(&format!("mqtt:{}", m.name)))
        .map(|m| mqtt::check(m, &ctx));
    let buses = ctx
        .cfg
        .sources
        .can
        .iter()
        .filter(|c| wanted(&format!("can:{}", c.name)))
        .map(|c| can::check(c, &ctx));
    let mongo = async {
        match &ctx.cfg.mongo {
            Some(m) if wanted("mongo") => mongo::checks(m, &ctx).await,
            _ => Vec::new(),
        }
    };
    let (ports_done, brokers_done, buses_done, mongo_done) = tokio::join!(
        futures_util::future::join_all(probes),
        futures_util::future::join_all(brokers),
        futures_util::future::join_all(buses),
        mongo
    );
    let mut gnss = Vec::new();
    for (c, offset) in ports_done {
        checks.push(c);
        gnss.extend(offset);
    }
    checks.extend(buses_done.into_iter().flatten());
    checks.extend(brokers_done);
    checks.extend(mongo_done);
    if wanted("listen") {
        checks.push(listen::address(&ctx));
    }
    if wanted("tls") {
        checks.extend(listen::tls_files(&ctx));
    }
    if wanted("clock") {
        checks.push(clock::check(&ctx, &ports, &gnss).await);
    }
    report.ok = checks.iter().all(|c| c.verdict != Verdict::Fail);
    report.checks = checks;
    report
}

/// Text from a device or another program fit for a terminal line: control characters
/// (escape sequences) dropped, at most `max` characters.
pub(crate) fn printable(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// The config line when the file cannot be used.
fn config_failure(path: &std::path::Path, e: &crate::config::ConfigError) -> Check {
    let fix = match e {
        crate::config::ConfigError::Read { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            "give the file with --config FILE; the package installs \
             /etc/fieldgate/fieldgate.toml"
                .to_string()
        }
        crate::config::ConfigError::Read { .. } => {
            "run doctor with sudo, or as a user who may read the file".to_string()
        }
        _ => format!(
            "edit the key named above, then `fieldgate check-config {}` until it says ok",
            path.display()
        ),
    };
    Check::fail("config", e.to_string(), fix)
}

/// The config line when it parsed: valid, and readable by the service user?
fn config_ok(ctx: &Ctx, path: &std::path::Path) -> Check {
    let cfg = &ctx.cfg;
    let summary = format!(
        "valid: gateway {}, {} sources, mongo {}",
        cfg.gateway.id,
        cfg.sources.names().len(),
        if cfg.mongo.is_some() { "on" } else { "off" }
    );
    let Ok(acct) = &ctx.acct else {
        return Check::ok("config", summary);
    };
    match access::check(acct, path, access::Want::Read) {
        Ok(()) => Check::ok("config", format!("{summary}; readable by {}", acct.name)),
        Err(d) => Check::fail(
            "config",
            format!("{summary}, but {}", d.explain(acct, path)),
            access::group_read_fix(acct, path),
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn device_text_loses_control_characters_and_length() {
        assert_eq!(
            super::printable("ELM327 v1.5\u{1b}[2J\u{7}", 64),
            "ELM327 v1.5[2J"
        );
        assert_eq!(super::printable(&"x".repeat(100), 64).len(), 64);
    }
}

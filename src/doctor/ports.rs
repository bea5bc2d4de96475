//! Serial and OBD ports: present, open to the service user, free, and speaking.
//!
//! For each configured port, in order: the path exists (a dangling udev link means the
//! adapter is unplugged); the service user may read and write the device node; nobody
//! holds it (fieldgate and most serial programs take an exclusive lock — a port the
//! running service holds is reported with the service's own view, never opened); and it
//! speaks what the config says within a few seconds: a frame of its `framing` (for `nmea`
//! a sentence with a good checksum), an `ELM327` identification in answer to `ATZ`, or a
//! version in answer to `V` for an SLCAN CAN adapter. CAN buses over TCP, SocketCAN and
//! candump replays are checked in [`super::can`].

use super::access::{self, Want};
use super::procfs;
use super::running::Service;
use super::{printable, Check, Ctx};
use crate::source::framing::{Decoded, FrameDecoder, Framing};
use crate::source::obd::{Adapter, CommandError, RESET_TIMEOUT};
use crate::source::{port, SourcesConfig};
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::FramedRead;

/// How long a port is listened to for a frame.
const LISTEN_FOR: Duration = Duration::from_secs(3);
/// Good NMEA sentences read while waiting for an RMC (for the clock) before giving up on it.
const NMEA_ENOUGH: u64 = 20;
/// How long an SLCAN adapter may take to answer `V`.
const SLCAN_WAIT: Duration = Duration::from_secs(2);

/// What a port is expected to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speak {
    /// Frames of this framing, at most this many bytes each.
    Framing(Framing, usize),
    /// An ELM327 adapter: `ATZ` → `ELM327 v...`.
    Elm327,
    /// An SLCAN CAN adapter (`[[sources.can]] interface = "slcan"`): `V` → `V` + version.
    Slcan,
}

/// One configured port.
#[derive(Debug, Clone)]
pub struct Port {
    /// Report part, e.g. `serial:gps` (the frames' source name).
    pub part: String,
    /// Source name (the key of `/api/status` → `sources`).
    pub name: String,
    /// Device id of its frames (serial ports).
    pub device: Option<String>,
    /// Device path.
    pub path: PathBuf,
    /// Baud rate.
    pub baud: u32,
    /// What it should say.
    pub speak: Speak,
}

/// Every serial, OBD and serial-attached CAN (SLCAN) port of the config.
pub fn configured(sources: &SourcesConfig) -> Vec<Port> {
    let baud = |b: u64| u32::try_from(b).unwrap_or(u32::MAX);
    let serial = sources.serial.iter().map(|s| Port {
        part: format!("serial:{}", s.name),
        name: s.name.clone(),
        device: Some(s.device.clone()),
        path: s.path.clone(),
        baud: baud(s.baud.0),
        speak: Speak::Framing(s.framing, usize::try_from(s.max_frame.0).unwrap_or(4096)),
    });
    let obd = sources.obd.iter().map(|o| Port {
        part: format!("obd:{}", o.name),
        name: o.name.clone(),
        device: o.device.clone(),
        path: o.path.clone(),
        baud: baud(o.baud.0),
        speak: Speak::Elm327,
    });
    let can = sources
        .can
        .iter()
        .filter(|c| c.interface == crate::source::can::config::Interface::Slcan)
        .filter_map(|c| {
            Some(Port {
                part: format!("can:{}", c.name),
                name: c.name.clone(),
                device: Some(c.device().to_string()),
                path: c.path.clone()?,
                baud: c.baud(),
                speak: Speak::Slcan,
            })
        });
    serial.chain(obd).chain(can).collect()
}

/// What listening to a port for frames found.
#[derive(Debug, Default)]
struct Heard {
    good: u64,
    kinds: BTreeSet<String>,
    invalid: BTreeMap<&'static str, u64>,
    /// System time minus the receiver's (RMC with a fix), ms.
    gnss_offset_ms: Option<i64>,
}

/// Whether someone else holds the port open: an exclusive tty (`TIOCEXCL`) or an
/// exclusive `flock`, which fieldgate's serial library takes. Opening without reading
/// takes nothing from the holder. `Err` when this process may not open it.
fn held(path: &Path) -> std::io::Result<bool> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = match nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::EBUSY) => return Ok(true),
        Err(e) => return Err(e.into()),
    };
    // SAFETY: `fd` was just opened by us and is closed exactly once, below.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut excl: libc::c_int = 0;
    // SAFETY: TIOCGEXCL writes one int through the pointer we pass.
    let tty_excl =
        unsafe { libc::ioctl(file.as_raw_fd(), libc::TIOCGEXCL, &mut excl) } == 0 && excl != 0;
    // SAFETY: flock on our own descriptor; a shared lock only conflicts with an exclusive one.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0;
    Ok(tty_excl || locked)
}

impl Port {
    /// This port's line, and the GNSS clock offset if it is a GPS that sent a fix.
    pub(super) async fn check(&self, ctx: &Ctx) -> (Check, Option<i64>) {
        match self.check_inner(ctx).await {
            Ok((detail, offset)) => (Check::ok(&self.part, detail), offset),
            Err(c) => (c, None),
        }
    }

    async fn check_inner(&self, ctx: &Ctx) -> Result<(String, Option<i64>), Check> {
        let path = self.path.display();
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let detail = match std::fs::read_link(&self.path) {
                    Ok(target) => format!(
                        "{path} points at {}, which is gone: the adapter is unplugged or \
                         was renamed",
                        target.display()
                    ),
                    Err(_) => format!("{path} does not exist"),
                };
                return Err(self.fail(detail, unplugged_fix(&self.path)));
            }
            Err(e) => return Err(self.fail(format!("{path}: {e}"), "run doctor with sudo")),
        };
        if !meta.file_type().is_char_device() {
            return Err(self.fail(
                format!("{path} is not a serial device"),
                "point `path` at the adapter's device (e.g. /dev/ttyUSB0 or a /dev/fieldgate/ link)",
            ));
        }
        if let Ok(acct) = &ctx.acct {
            if let Err(d) = access::check(acct, &self.path, Want::ReadWrite) {
                let fix = if d.perms.contains(":dialout ") {
                    format!(
                        "sudo usermod -aG dialout {} (the service gets dialout from its unit)",
                        acct.name
                    )
                } else {
                    "give the port to group dialout, mode 0660, with a udev rule like those in \
                     /lib/udev/rules.d/99-fieldgate.rules"
                        .to_string()
                };
                return Err(self.fail(d.explain(acct, &self.path), fix));
            }
        }
        match held(&self.path) {
            Ok(false) => {}
            Ok(true) => return self.in_use(&ctx.service),
            Err(e) => {
                return Err(Check::warn(
                    &self.part,
                    format!("{path} exists, but doctor itself cannot open it to listen: {e}"),
                    "run doctor with sudo to hear what the port says",
                ))
            }
        }
        match self.speak {
            Speak::Framing(framing, max) => self.listen(framing, max).await,
            Speak::Elm327 => self.elm327().await.map(|d| (d, None)),
            Speak::Slcan => self.slcan().await.map(|d| (d, None)),
        }
    }

    fn fail(&self, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::fail(&self.part, detail, fix)
    }

    /// Opens the port to probe it (8N1 at `baud`, exclusive).
    fn open(&self) -> Result<tokio_serial::SerialStream, Check> {
        port::open(&self.path, self.baud).map_err(|e| {
            self.fail(
                format!("cannot open {}: {e}", self.path.display()),
                "check the path and the baud rate",
            )
        })
    }

    /// The port is held: by the running gateway (report its view) or by something else.
    fn in_use(&self, service: &Service) -> Result<(String, Option<i64>), Check> {
        let path = self.path.display();
        let holders = procfs::holders_of(&self.path);
        let Some(h) = holders
            .iter()
            .find(|h| h.is_fieldgate())
            .or(holders.first())
        else {
            return Err(Check::warn(
                &self.part,
                format!("{path} is in use by another process"),
                "run doctor with sudo to see which",
            ));
        };
        if !h.is_fieldgate() {
            return Err(self.fail(
                format!("{path} is in use by {h}; fieldgate cannot open it while that runs"),
                format!(
                    "stop {} (e.g. `sudo systemctl disable --now {}`; ModemManager and gpsd \
                     are the usual ones)",
                    h.name, h.name
                ),
            ));
        }
        let Some(entry) = service.source(&self.name) else {
            return Err(Check::warn(
                &self.part,
                format!(
                    "{path} is held by the running gateway, {h}; its own view is unknown: {}",
                    service.status_note
                ),
                "pass --key KEY (read scope) to see what the service reads",
            ));
        };
        let view = Service::describe(entry);
        if entry["state"] == "running" {
            Ok((
                format!("{path} is held by the running gateway, {h}, which reads it: {view}"),
                None,
            ))
        } else {
            Err(self.fail(
                format!("{path} is held by the running gateway, {h}, which says: {view}"),
                "see the error above; `journalctl -u fieldgate` has the details",
            ))
        }
    }

    /// Listens for `LISTEN_FOR`: ok at the first good frame (NMEA: with a good checksum).
    async fn listen(&self, framing: Framing, max: usize) -> Result<(String, Option<i64>), Check> {
        let path = self.path.display();
        let stream = self.open()?;
        let mut frames = FramedRead::new(stream, FrameDecoder::new(framing, max));
        let mut heard = Heard::default();
        let deadline = tokio::time::Instant::now() + LISTEN_FOR;
        let t0 = std::time::Instant::now();
        loop {
            let item = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                item = frames.next() => item,
            };
            match item {
                Some(Ok(Ok(decoded))) => {
                    heard.good += 1;
                    if let Decoded::Nmea(s) = &decoded {
                        heard.kinds.insert(format!("{}{}", s.talker, s.kind));
                    }
                    let (payload, ts) = decoded.into_payload();
                    if let (Some(ts), Some(true)) = (ts, payload["valid"].as_bool()) {
                        heard.gnss_offset_ms = Some(crate::frame::now_ms() - ts);
                    }
                    let done = framing != Framing::Nmea
                        || heard.gnss_offset_ms.is_some()
                        || heard.good >= NMEA_ENOUGH;
                    if done {
                        break;
                    }
                }
                Some(Ok(Err(bad))) => *heard.invalid.entry(bad.reason()).or_default() += 1,
                Some(Err(e)) => {
                    return Err(self.fail(
                        format!("reading {path} failed: {e}"),
                        unplugged_fix(&self.path),
                    ))
                }
                None => {
                    return Err(self.fail(
                        format!("{path} closed while doctor listened"),
                        unplugged_fix(&self.path),
                    ))
                }
            }
        }
        let invalid: u64 = heard.invalid.values().sum();
        if heard.good > 0 {
            let what = if framing == Framing::Nmea {
                let kinds: Vec<String> = heard.kinds.into_iter().collect();
                format!("NMEA with good checksums ({})", kinds.join(", "))
            } else {
                format!("{framing} frames")
            };
            let bad = if invalid > 0 {
                format!(", {invalid} bad ({:?})", heard.invalid)
            } else {
                String::new()
            };
            return Ok((
                format!(
                    "{path} speaks {what}: {} good in {:.1} s at {} baud{bad}",
                    heard.good,
                    t0.elapsed().as_secs_f64(),
                    self.baud
                ),
                heard.gnss_offset_ms,
            ));
        }
        let secs = LISTEN_FOR.as_secs();
        if invalid > 0 {
            return Err(self.fail(
                format!(
                    "{path} sends data but no good {framing} frame in {secs} s ({invalid} bad: {:?})",
                    heard.invalid
                ),
                format!(
                    "check `baud` ({} now; GPS receivers use 9600 or 115200) and `framing`",
                    self.baud
                ),
            ));
        }
        Err(self.fail(
            format!(
                "{path} is silent: nothing in {secs} s at {} baud",
                self.baud
            ),
            "is the device powered and its TX wired to the adapter's RX? Is `baud` its rate?",
        ))
    }

    /// Sends `ATZ` (the adapter reboots) and wants an `ELM327` identification.
    async fn elm327(&self) -> Result<String, Check> {
        let path = self.path.display();
        let stream = self.open()?;
        let mut adapter = Adapter::new(stream);
        let fix = format!(
            "is the adapter powered (some only with the ignition on)? ELM327s talk at 38400 \
             baud (some clones 9600 or 115200; `baud` is {} now)",
            self.baud
        );
        match adapter.command("ATZ", RESET_TIMEOUT).await {
            Ok(reply) => {
                let words: Vec<&str> = reply
                    .split(['\r', '\n'])
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && *l != "ATZ")
                    .collect();
                match words.iter().find(|l| l.contains("ELM327")) {
                    Some(id) => Ok(format!("{path} answers ATZ: {}", printable(id, 64))),
                    None => Err(self.fail(
                        format!(
                            "{path} answered ATZ with {:?}, not an ELM327 identification",
                            words.join(" ")
                        ),
                        fix,
                    )),
                }
            }
            Err(CommandError::Timeout(partial)) if partial.trim().is_empty() => Err(self.fail(
                format!("{path}: no answer to ATZ in {} s", RESET_TIMEOUT.as_secs()),
                fix,
            )),
            Err(CommandError::Timeout(partial)) => Err(self.fail(
                format!(
                    "{path} answered ATZ with {:?} and no prompt",
                    partial.trim()
                ),
                fix,
            )),
            Err(CommandError::Io(e)) => {
                Err(self.fail(format!("{path}: {e}"), unplugged_fix(&self.path)))
            }
        }
    }

    /// Sends `V` and wants `V` + a version, as SLCAN adapters answer.
    async fn slcan(&self) -> Result<String, Check> {
        let path = self.path.display();
        let mut stream = self.open()?;
        let fix = "is it an SLCAN adapter (CANable, USBtin, ...) and `baud` its rate?";
        let mut got = Vec::new();
        let ask = async {
            // The leading CR clears a half-typed command; adapters answer it with BEL.
            stream.write_all(b"\rV\r").await?;
            let mut buf = [0u8; 64];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                got.extend_from_slice(&buf[..n]);
                if slcan_version(&got).is_some() || got.len() > 256 {
                    return Ok(());
                }
            }
        };
        if let Ok(Err(e)) = tokio::time::timeout(SLCAN_WAIT, ask).await {
            return Err(self.fail(format!("{path}: {e}"), unplugged_fix(&self.path)));
        }
        match slcan_version(&got) {
            Some(v) => Ok(format!("{path} answers V: {} (SLCAN)", printable(&v, 64))),
            None if got.is_empty() => Err(self.fail(
                format!("{path}: no answer to V in {} s", SLCAN_WAIT.as_secs()),
                fix,
            )),
            None => Err(self.fail(
                format!(
                    "{path} answered V with {:?}",
                    printable(&String::from_utf8_lossy(&got), 64)
                ),
                fix,
            )),
        }
    }
}

/// The `V...` version line in an SLCAN adapter's answer (lines end in CR; BEL is an
/// error reply, e.g. to the empty command before `V`).
fn slcan_version(got: &[u8]) -> Option<String> {
    String::from_utf8_lossy(got)
        .split(['\r', '\x07'])
        .find(|l| l.starts_with('V') && l.len() >= 5)
        .map(str::to_string)
}

/// The fix for a port that is missing or went away.
fn unplugged_fix(path: &Path) -> String {
    let dir = path
        .parent()
        .map_or_else(|| "/dev".into(), |d| d.display().to_string());
    format!(
        "plug the adapter in and look at `ls -l {dir}`; the udev rules \
         (/lib/udev/rules.d/99-fieldgate.rules) name adapters by their serial number: \
         `udevadm info -q property -n /dev/ttyUSB0 | grep ID_SERIAL` shows it"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::sim_devices::Pty;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_slcan_adapter_answers_v_and_a_silent_port_does_not() {
        let pty = Pty::open().expect("pty");
        let master = std::fs::File::from(pty.master.try_clone().expect("dup"));
        // The adapter side: answers `V` with a version, as CANable/USBtin firmware does.
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut r, mut w) = (&master, &master);
            let mut buf = [0u8; 64];
            let mut line = Vec::new();
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    if b == b'\r' {
                        // As the firmware does: BEL for the empty command.
                        let reply: &[u8] = match line.as_slice() {
                            b"V" => b"V1013\r",
                            b"" => b"\x07",
                            _ => b"\r",
                        };
                        let _ = w.write_all(reply);
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
            }
        });
        let port = |path: &Path| Port {
            part: "can:bus".into(),
            name: "bus".into(),
            device: None,
            path: path.to_path_buf(),
            baud: 115_200,
            speak: Speak::Slcan,
        };
        let answer = port(&pty.path).slcan().await;
        if let Err(e) = &answer {
            // qemu-user (the aarch64 unit tests in CI) implements no serial ioctls on a pty.
            if e.detail.contains("Function not implemented") {
                eprintln!("skipped: this platform cannot open a pty as a serial port: {e:?}");
                return;
            }
        }
        assert_eq!(
            answer.expect("answers"),
            format!("{} answers V: V1013 (SLCAN)", pty.path.display())
        );
        let silent = Pty::open().expect("pty");
        let e = port(&silent.path).slcan().await.expect_err("silent");
        assert!(e.detail.contains("no answer to V"), "{e:?}");
    }
}

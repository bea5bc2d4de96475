//! CAN buses that are not a serial port: SocketCAN interfaces, SLCAN over TCP and candump
//! replays (an SLCAN adapter on a serial port is a port: [`super::ports`]).
//!
//! A SocketCAN bus needs a kernel with CAN sockets (`socket(AF_CAN)` fails with
//! `EAFNOSUPPORT` without the `can_raw` module) and the interface present and up, which is
//! what an installer gets wrong: the HAT's overlay missing, `ip link set can0 up` forgotten.
//! Nothing is opened for reading: a bound CAN socket would see the bus, but so does the
//! running gateway, and an interface that is up is all doctor can promise without traffic.

use super::access::{self, Want};
use super::{Check, Ctx};
use crate::source::can::config::Interface;
use crate::source::can::socketcan::{probe, NO_AF_CAN};
use crate::source::can::CanConfig;
use std::path::Path;
use std::time::Duration;

/// How long an SLCAN-over-TCP adapter may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// `IFF_UP` in `/sys/class/net/<if>/flags`.
const IFF_UP: u64 = 0x1;

/// The check of one CAN source that is not a serial SLCAN adapter; `None` for those.
pub async fn check(c: &CanConfig, ctx: &Ctx) -> Option<Check> {
    let part = format!("can:{}", c.name);
    match c.interface {
        Interface::Slcan => None,
        Interface::Socketcan => Some(socketcan(&part, c, Path::new("/sys/class/net"))),
        Interface::SlcanTcp => Some(slcan_tcp(&part, c.address.as_deref().unwrap_or("")).await),
        Interface::Candump => Some(candump(
            &part,
            c.path.as_deref().unwrap_or(Path::new("")),
            ctx,
        )),
    }
}

/// A SocketCAN interface: the kernel has CAN sockets, the interface exists and is up.
fn socketcan(part: &str, c: &CanConfig, sysfs: &Path) -> Check {
    let ifname = c.ifname.as_deref().unwrap_or("");
    let bitrate = c.bitrate.unwrap_or(500_000);
    if let Err(e) = probe() {
        return if e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
            Check::fail(
                part,
                format!("{ifname}: this kernel has no SocketCAN support (EAFNOSUPPORT)"),
                NO_AF_CAN,
            )
        } else {
            Check::fail(
                part,
                format!("{ifname}: cannot open a CAN socket: {e}"),
                "run doctor as the service user or root; see the kernel log (dmesg)",
            )
        };
    }
    interface(part, ifname, bitrate, sysfs)
}

/// The interface `ifname` as `sysfs` (`/sys/class/net`) shows it: present and up?
fn interface(part: &str, ifname: &str, bitrate: u32, sysfs: &Path) -> Check {
    let flags = std::fs::read_to_string(sysfs.join(ifname).join("flags"));
    let Ok(flags) = flags else {
        return Check::fail(
            part,
            format!("no network interface {ifname}"),
            format!(
                "is the CAN HAT's overlay in /boot/firmware/config.txt (e.g. \
                 dtoverlay=mcp2515-can0,oscillator=16000000,interrupt=25) and the board \
                 rebooted, or the USB adapter plugged in? `ip -details link show` lists the \
                 interfaces; then `sudo ip link set {ifname} up type can bitrate {bitrate}`"
            ),
        );
    };
    let flags = u64::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap_or(0);
    if flags & IFF_UP == 0 {
        return Check::fail(
            part,
            format!("{ifname} exists but is down"),
            format!(
                "sudo ip link set {ifname} up type can bitrate {bitrate} (and make it \
                 permanent with a systemd-networkd .network file or /etc/network/interfaces)"
            ),
        );
    }
    Check::ok(part, format!("{ifname} is up; the kernel has CAN sockets"))
}

/// An SLCAN adapter over TCP: it accepts a connection.
async fn slcan_tcp(part: &str, address: &str) -> Check {
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address));
    match connect.await {
        Ok(Ok(_)) => Check::ok(part, format!("tcp://{address} accepts connections")),
        Ok(Err(e)) => Check::fail(
            part,
            format!("tcp://{address}: {e}"),
            "is the adapter powered and on this network (its Wi-Fi or the van's LAN), and \
             `address` its host:port?",
        ),
        Err(_) => Check::fail(
            part,
            format!(
                "tcp://{address}: no answer in {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
            "is the adapter powered and reachable (ping it), and `address` its host:port?",
        ),
    }
}

/// A candump log to replay: present and readable by the service user.
fn candump(part: &str, path: &Path, ctx: &Ctx) -> Check {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return Check::fail(
                part,
                format!("{}: {e}", path.display()),
                "copy the candump -L log there, or correct `path`",
            )
        }
    };
    if !meta.is_file() {
        return Check::fail(
            part,
            format!("{} is not a file", path.display()),
            "point `path` at a candump -L log file",
        );
    }
    if let Ok(acct) = &ctx.acct {
        if let Err(d) = access::check(acct, path, Want::Read) {
            return Check::fail(
                part,
                d.explain(acct, path),
                access::group_read_fix(acct, path),
            );
        }
    }
    Check::ok(
        part,
        format!("{} ({} bytes) to replay", path.display(), meta.len()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;

    fn bus(ifname: &str) -> CanConfig {
        let text = format!("name = \"bus\"\ninterface = \"socketcan\"\nifname = \"{ifname}\"\n");
        toml::from_str(&text).expect("can config")
    }

    /// A sysfs-like directory with one interface and its flags.
    fn sysfs(ifname: &str, flags: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join(ifname)).expect("mkdir");
        std::fs::write(dir.path().join(ifname).join("flags"), flags).expect("flags");
        dir
    }

    #[test]
    fn a_kernel_without_can_sockets_is_the_verdict() {
        let c = socketcan("can:bus", &bus("can0"), Path::new("/nonexistent"));
        match probe() {
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
                assert!(c.detail.contains("EAFNOSUPPORT"), "{c:?}");
                assert_eq!(c.fix.as_deref(), Some(NO_AF_CAN));
            }
            // CAN sockets here: the (missing) interface is the verdict.
            _ => assert!(c.detail.contains("no network interface can0"), "{c:?}"),
        }
    }

    #[test]
    fn an_interface_missing_down_and_up() {
        let up = sysfs("can0", "0x40c1\n");
        let c = interface("can:bus", "can0", 250_000, up.path());
        assert_eq!(c.verdict, Verdict::Ok, "{c:?}");
        let down = sysfs("can0", "0x1080\n");
        let c = interface("can:bus", "can0", 250_000, down.path());
        assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
        assert!(c.detail.contains("down"), "{c:?}");
        let fix = c.fix.unwrap_or_default();
        assert!(
            fix.contains("ip link set can0 up type can bitrate 250000"),
            "{fix}"
        );
        let c = interface("can:bus", "can9", 250_000, up.path());
        assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
        assert!(c.detail.contains("no network interface can9"), "{c:?}");
    }
}

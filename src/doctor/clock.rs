//! The system clock: synchronised, or close to GNSS time when a GPS answered.
//!
//! Every frame carries the gateway's receive time, so a clock that is off puts every frame
//! at the wrong moment. With a GPS that has a fix, its RMC time is the reference; without
//! one, whether the kernel clock is synchronised (`timedatectl`, else `adjtimex`).

use super::ports::{Port, Speak};
use super::{Check, Ctx};
use crate::source::framing::Framing;
use std::time::Duration;

/// Largest offset to GNSS time that passes (NMEA arrives up to ~1 s after its fix time).
const GNSS_TOLERANCE_MS: i64 = 2_000;

/// `clock`: `gnss_offsets` are what the GPS ports doctor listened to said; a GPS the
/// running gateway holds is asked through its journal instead.
pub(super) async fn check(ctx: &Ctx, ports: &[Port], gnss_offsets: &[i64]) -> Check {
    const PART: &str = "clock";
    let nmea: Vec<&Port> = ports
        .iter()
        .filter(|p| matches!(p.speak, Speak::Framing(Framing::Nmea, _)))
        .collect();
    let mut offset = gnss_offsets.first().copied();
    for p in &nmea {
        if offset.is_some() {
            break;
        }
        if let Some(device) = &p.device {
            offset = ctx.service.gnss_offset(device).await;
        }
    }
    if let Some(off) = offset {
        let secs = off as f64 / 1000.0;
        let side = if off >= 0 { "ahead of" } else { "behind" };
        let detail = format!(
            "system clock {:.1} s {side} GNSS time (RMC with a fix)",
            secs.abs()
        );
        if off.abs() <= GNSS_TOLERANCE_MS {
            return Check::ok(PART, detail);
        }
        return Check::fail(
            PART,
            detail,
            "enable time sync (sudo timedatectl set-ntp true) for when the uplink is there; \
             offline, chrony can take its time from the GPS (gpsd refclock)",
        );
    }
    let note = if !nmea.is_empty() {
        " (the GPS gave no time with a fix)"
    } else {
        ""
    };
    match timedatectl().await {
        Some(true) => Check::ok(
            PART,
            format!("synchronised (timedatectl: NTPSynchronized=yes){note}"),
        ),
        Some(false) => Check::fail(
            PART,
            format!("not synchronised (timedatectl: NTPSynchronized=no){note}"),
            "sudo timedatectl set-ntp true (needs the uplink, or a GPS time source for chrony)",
        ),
        None => match kernel_synchronised() {
            Some((true, err_ms)) => Check::ok(
                PART,
                format!("synchronised (kernel: adjtimex, max error {err_ms} ms){note}"),
            ),
            Some((false, _)) => Check::fail(
                PART,
                format!(
                    "not synchronised (kernel: adjtimex reports the clock unsynchronised){note}"
                ),
                "run a time sync service (systemd-timesyncd or chrony); it needs the uplink \
                 or a GPS time source",
            ),
            None => Check::warn(
                PART,
                format!("cannot tell whether the clock is synchronised{note}"),
                "check `timedatectl`",
            ),
        },
    }
}

/// `NTPSynchronized` from `timedatectl show`; `None` when it cannot tell (no systemd).
async fn timedatectl() -> Option<bool> {
    let out = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::process::Command::new("timedatectl")
            .args(["show", "-p", "NTPSynchronized", "--value"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    if !out.status.success() {
        return None;
    }
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// The kernel's view (`adjtimex`): synchronised, and its maximum error in ms.
fn kernel_synchronised() -> Option<(bool, i64)> {
    // SAFETY: `timex` is plain data; with `modes = 0` adjtimex only reads the clock state
    // into it.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return None;
    }
    let unsync = state == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0;
    // `c_long`: i32 on 32-bit ARM (armv7), i64 on 64-bit targets.
    #[allow(clippy::useless_conversion)]
    let maxerror_us = i64::from(tx.maxerror);
    Some((!unsync, maxerror_us / 1000))
}

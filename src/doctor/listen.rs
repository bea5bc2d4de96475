//! The listen address (free, or held by the running gateway) and the listener's TLS files.

use super::access;
use super::{Check, Ctx};
use std::io::ErrorKind;

/// `listen`: can the gateway bind its address?
pub(super) fn address(ctx: &Ctx) -> Check {
    const PART: &str = "listen";
    let addr = ctx.cfg.listen.address;
    let service_unprivileged = ctx.acct.as_ref().map_or(true, |a| !a.is_root());
    if addr.port() < 1024 && service_unprivileged && access::service_has_no_capabilities() {
        return Check::fail(
            PART,
            format!("{addr}: ports below 1024 need a capability the service unit does not grant"),
            "use a port of 1024 or above in [listen] address (3004 is the default)",
        );
    }
    let holder = ctx.service.holder.as_ref();
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Check::ok(PART, format!("{addr} is free")),
        Err(e) if e.kind() == ErrorKind::AddrInUse => match holder {
            Some(h) if h.is_fieldgate() => {
                let health = if ctx.service.healthz {
                    "answers /healthz"
                } else {
                    "does not answer /healthz"
                };
                let c = format!("{addr} is held by the running gateway, {h}, which {health}");
                if ctx.service.healthz {
                    Check::ok(PART, c)
                } else {
                    Check::fail(PART, c, "see `journalctl -u fieldgate`; restart it with `sudo systemctl restart fieldgate`")
                }
            }
            Some(h) => Check::fail(
                PART,
                format!("{addr} is in use by {h}"),
                format!("stop {} or choose another port in [listen] address", h.name),
            ),
            None if ctx.service.healthz => Check::ok(
                PART,
                format!("{addr} is held by a gateway that answers /healthz"),
            ),
            None => Check::warn(
                PART,
                format!("{addr} is in use by another process"),
                "run doctor with sudo to see which, or choose another port",
            ),
        },
        Err(e) if e.kind() == ErrorKind::AddrNotAvailable => Check::fail(
            PART,
            format!("{addr}: no interface of this machine has that address"),
            "use 0.0.0.0:3004 (every interface) or one of `ip -brief addr`",
        ),
        Err(e) => Check::fail(
            PART,
            format!("{addr}: {e}"),
            "choose another [listen] address",
        ),
    }
}

/// `tls`: the listener's certificate and key. The config has no `[listen] tls_cert` /
/// `tls_key` yet; when it has, check here that the service user can read both, that the
/// certificate parses and is valid now, and that the key matches it.
pub(super) fn tls_files(_ctx: &Ctx) -> Vec<Check> {
    Vec::new()
}

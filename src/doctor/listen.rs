//! The listen address (free, or held by the running gateway) and the listener's TLS files.

use super::access::{self, Account, Want};
use super::{Check, Ctx};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::io::ErrorKind;
use std::path::Path;

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

/// A certificate valid now but expiring within this long is a warning.
const EXPIRY_WARN: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// `tls`: the listener's certificate and key. The config has no `[listen] tls_cert` /
/// `tls_key` yet; once it has, call [`tls_pair`] with them here.
pub(super) fn tls_files(_ctx: &Ctx) -> Vec<Check> {
    Vec::new()
}

/// When a certificate stops (or starts) being valid, as `verify_for_usage` reports it.
enum Validity {
    /// Valid at the time asked.
    Valid,
    /// Expired at that time; the date it expired.
    Expired(UnixTime),
    /// Not valid yet at that time; the date it starts.
    NotYet(UnixTime),
    /// It ends before it starts.
    Inverted,
}

/// The certificate's validity at `at`. webpki checks the leaf's dates before looking for
/// its issuer, so verifying against no trust anchor answers exactly this.
fn validity(ee: &webpki::EndEntityCert<'_>, at: UnixTime) -> Validity {
    match ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[],
        &[],
        at,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    ) {
        Err(webpki::Error::CertExpired { not_after, .. }) => Validity::Expired(not_after),
        Err(webpki::Error::CertNotValidYet { not_before, .. }) => Validity::NotYet(not_before),
        Err(webpki::Error::InvalidCertValidity) => Validity::Inverted,
        _ => Validity::Valid,
    }
}

/// A date for messages.
fn date(t: UnixTime) -> String {
    crate::frame::iso8601(
        i64::try_from(t.as_secs())
            .unwrap_or(i64::MAX)
            .saturating_mul(1000),
    )
}

/// `tls` for a certificate and key pair (ready for `[listen] tls_cert`/`tls_key`): both readable by `acct` (the service user), the
/// key the certificate's own, the certificate valid now and for [`EXPIRY_WARN`] more.
pub fn tls_pair(acct: Option<&Account>, cert: &Path, key: &Path) -> Check {
    tls_pair_at(acct, cert, key, UnixTime::now())
}

/// [`tls_pair`] judged at `now`.
fn tls_pair_at(acct: Option<&Account>, cert: &Path, key: &Path, now: UnixTime) -> Check {
    const PART: &str = "tls";
    if let Some(acct) = acct {
        for path in [cert, key] {
            if let Err(d) = access::check(acct, path, Want::Read) {
                return Check::fail(
                    PART,
                    d.explain(acct, path),
                    access::group_read_fix(acct, path),
                );
            }
        }
    }
    let fix_files = "tls_cert is the PEM certificate chain (leaf first), tls_key its PEM private key; `fieldgate tls self-signed` makes a pair";
    let certs: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(cert) {
        Ok(iter) => iter.filter_map(Result::ok).collect(),
        Err(e) => {
            return Check::fail(
                PART,
                format!("cannot read {}: {e}", cert.display()),
                fix_files,
            )
        }
    };
    let Some(leaf) = certs.first() else {
        return Check::fail(
            PART,
            format!("no PEM certificate in {}", cert.display()),
            fix_files,
        );
    };
    let key_der = match PrivateKeyDer::from_pem_file(key) {
        Ok(k) => k,
        Err(e) => {
            return Check::fail(
                PART,
                format!("no private key in {}: {e}", key.display()),
                fix_files,
            )
        }
    };
    let signer = match rustls::crypto::ring::sign::any_supported_type(&key_der) {
        Ok(s) => s,
        Err(e) => {
            return Check::fail(
                PART,
                format!("{}: unsupported key: {e}", key.display()),
                fix_files,
            )
        }
    };
    if let Err(e) = rustls::sign::CertifiedKey::new(certs.clone(), signer).keys_match() {
        return Check::fail(
            PART,
            format!(
                "{} is not the key of {} ({e})",
                key.display(),
                cert.display()
            ),
            fix_files,
        );
    }
    let ee = match webpki::EndEntityCert::try_from(leaf) {
        Ok(ee) => ee,
        Err(e) => {
            return Check::fail(
                PART,
                format!("cannot parse the certificate in {}: {e}", cert.display()),
                fix_files,
            )
        }
    };
    let renew = "renew it (`fieldgate tls self-signed`, or your CA) and restart the service";
    match validity(&ee, now) {
        Validity::Expired(at) => Check::fail(
            PART,
            format!("{} expired on {}", cert.display(), date(at)),
            renew,
        ),
        Validity::NotYet(from) => Check::fail(
            PART,
            format!(
                "{} is not valid before {} (or this clock is wrong)",
                cert.display(),
                date(from)
            ),
            "check the clock (see the clock line), or use a certificate valid now",
        ),
        Validity::Inverted => Check::fail(
            PART,
            format!("{} ends before it starts", cert.display()),
            renew,
        ),
        Validity::Valid => {
            let later = UnixTime::since_unix_epoch(
                std::time::Duration::from_secs(now.as_secs()) + EXPIRY_WARN,
            );
            match validity(&ee, later) {
                Validity::Expired(at) => Check::warn(
                    PART,
                    format!("{} expires on {}", cert.display(), date(at)),
                    renew,
                ),
                _ => Check::ok(
                    PART,
                    format!(
                        "{} and its key are readable, valid for at least {} more days",
                        cert.display(),
                        EXPIRY_WARN.as_secs() / 86_400
                    ),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A P-256 key in `dir/NAME.key` and a self-signed v3 certificate valid from now for
    /// `days` (-1: ending yesterday) in `dir/NAME.pem`, made by the `openssl` command.
    fn pair(dir: &Path, name: &str, days: i32) -> (std::path::PathBuf, std::path::PathBuf) {
        let (key, csr, pem, ext) = (
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.csr")),
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.ext")),
        );
        // Extensions make it an X.509 v3 certificate, as every TLS certificate is.
        std::fs::write(&ext, "subjectAltName=DNS:van-07\n").expect("extfile");
        let ok = Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-subj", "/CN=van-07", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&csr)
            .output()
            .expect("openssl (package openssl)")
            .status
            .success()
            && Command::new("openssl")
                .args(["x509", "-req", "-in"])
                .arg(&csr)
                .arg("-signkey")
                .arg(&key)
                .arg("-extfile")
                .arg(&ext)
                .args(["-days", &days.to_string(), "-out"])
                .arg(&pem)
                .output()
                .expect("openssl")
                .status
                .success();
        assert!(ok, "openssl made the pair");
        (pem, key)
    }

    #[test]
    fn certificate_and_key_valid_expiring_expired_mismatched_unreadable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (good, good_key) = pair(dir.path(), "good", 365);
        let c = tls_pair(None, &good, &good_key);
        assert_eq!(c.verdict, super::super::Verdict::Ok, "{c:?}");
        assert!(
            c.detail.contains("valid for at least 30 more days"),
            "{c:?}"
        );

        let (soon, soon_key) = pair(dir.path(), "soon", 10);
        let c = tls_pair(None, &soon, &soon_key);
        assert_eq!(c.verdict, super::super::Verdict::Warn, "{c:?}");
        assert!(c.detail.contains("expires on 20"), "{c:?}");

        // Valid for 0 days, judged tomorrow: expired.
        let (old, old_key) = pair(dir.path(), "old", 0);
        let tomorrow = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            UnixTime::now().as_secs() + 86_400,
        ));
        let c = tls_pair_at(None, &old, &old_key, tomorrow);
        assert_eq!(c.verdict, super::super::Verdict::Fail, "{c:?}");
        assert!(c.detail.contains("expired on 20"), "{c:?}");
        let (inverted, inverted_key) = pair(dir.path(), "inverted", -1);
        let c = tls_pair(None, &inverted, &inverted_key);
        assert!(c.detail.contains("ends before it starts"), "{c:?}");

        let c = tls_pair(None, &good, &soon_key);
        assert_eq!(c.verdict, super::super::Verdict::Fail, "{c:?}");
        assert!(c.detail.contains("is not the key of"), "{c:?}");

        let c = tls_pair(None, &good_key, &good_key);
        assert!(c.detail.contains("no PEM certificate"), "{c:?}");

        // A key only root may read, judged for another account.
        std::fs::set_permissions(
            &good_key,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        let meta = std::fs::metadata(&good_key).expect("meta");
        let other = Account {
            name: "other".into(),
            uid: std::os::unix::fs::MetadataExt::uid(&meta) + 4242,
            gids: vec![],
            group_names: vec![],
            group: "other".into(),
        };
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let c = tls_pair(Some(&other), &good, &good_key);
        assert_eq!(c.verdict, super::super::Verdict::Fail, "{c:?}");
        assert!(c.detail.contains("other cannot read"), "{c:?}");
    }
}

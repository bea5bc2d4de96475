//! `fieldgate tls self-signed`: a certificate and key for the board's technician interface.
//!
//! The files go where the config's `[listen] tls_cert` / `tls_key` point (or beside the
//! config, or to `--cert` / `--key`); the key is readable by the config file's group (the
//! service's), never by others. The SHA-256 fingerprint it prints is what a technician
//! compares once: in the browser's certificate view, or as `fieldgate tail --pin`.

use anyhow::Context;
use clap::{Args, Subcommand};
use fieldgate::config::Config;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `fieldgate tls ...`.
#[derive(Subcommand)]
pub enum TlsCmd {
    /// Write a self-signed certificate and key for this board and print its fingerprint.
    SelfSigned(SelfSignedArgs),
}

/// Arguments of `fieldgate tls self-signed`.
#[derive(Args)]
pub struct SelfSignedArgs {
    /// A name or address technicians use to reach the board (repeatable), e.g.
    /// `van-07.local` or `192.168.4.1`.
    #[arg(long, required = true)]
    host: Vec<String>,
    /// Config file: the files go to its `[listen] tls_cert` / `tls_key` (or beside it).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Where to write the certificate (overrides the config).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Where to write the private key (overrides the config).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 3650)]
    days: u32,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

/// Run `fieldgate tls ...`.
pub fn run(cmd: TlsCmd) -> anyhow::Result<()> {
    let TlsCmd::SelfSigned(a) = cmd;
    for h in &a.host {
        if h.is_empty() || h.contains(['/', ' ', ':']) && h.parse::<std::net::IpAddr>().is_err() {
            anyhow::bail!("--host: expected a host name or IP address, got {h:?}");
        }
    }
    let cfg = a.config.as_deref().map(Config::load).transpose()?;
    let beside = |name: &str| {
        a.config
            .as_deref()
            .and_then(Path::parent)
            .map(|d| d.join(name))
    };
    let listen = cfg.as_ref().map(|c| &c.listen);
    // The flag, else the config's key, else beside the config.
    let path = |flag: &Option<PathBuf>, configured: Option<&PathBuf>, name: &str| {
        flag.clone()
            .or_else(|| configured.cloned())
            .or_else(|| beside(name))
            .context("where to write: give --config FILE (or --cert and --key)")
    };
    let cert = path(
        &a.cert,
        listen.and_then(|l| l.tls_cert.as_ref()),
        "fieldgate.crt",
    )?;
    let key = path(
        &a.key,
        listen.and_then(|l| l.tls_key.as_ref()),
        "fieldgate.key",
    )?;
    let made = fieldgate::tls::self_signed(&a.host, a.days)?;
    // The key is readable by the config file's group (the service account's), if any.
    let group = a
        .config
        .as_deref()
        .and_then(|c| std::fs::metadata(c).ok())
        .map(|m| m.gid());
    write(&key, made.key_pem.as_bytes(), 0o640, group, a.force)?;
    write(&cert, made.cert_pem.as_bytes(), 0o644, group, a.force)?;
    println!("{}", made.fingerprint);
    eprintln!(
        "wrote {} and {} for {}, valid {} days",
        cert.display(),
        key.display(),
        a.host.join(", "),
        a.days
    );
    eprintln!("SHA-256 fingerprint (above): technicians check it once when they first connect");
    let configured = listen.is_some_and(|l| l.tls_cert.is_some());
    if !configured && a.cert.is_none() {
        eprintln!(
            "add to [listen]: tls_cert = {:?}  tls_key = {:?}",
            cert.display().to_string(),
            key.display().to_string()
        );
    }
    Ok(())
}

/// Write `bytes` to a new file (or over one, with `force`) with `mode`, owned by `group`.
fn write(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    group: Option<u32>,
    force: bool,
) -> anyhow::Result<()> {
    let mut open = std::fs::OpenOptions::new();
    open.write(true).mode(mode);
    if force {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    let mut f = open.open(path).with_context(|| {
        if path.exists() && !force {
            format!("{} exists; --force replaces it", path.display())
        } else {
            format!("cannot write {}", path.display())
        }
    })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    // A replaced file keeps its old mode: set it again.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    if let Some(gid) = group {
        if let Err(e) = std::os::unix::fs::chown(path, None, Some(gid)) {
            eprintln!(
                "warning: cannot give {} to the config file's group: {e}",
                path.display()
            );
        }
    }
    Ok(())
}

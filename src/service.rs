//! Wiring: open the journal, start every component, serve the API, shut down cleanly.
//!
//! Shutdown order matters for "never lose a frame": sources stop first (no new frames),
//! then the listener drains, then the journal flushes and records a clean close.

use crate::api::{self, AppState};
use crate::auth::{KeyStore, Throttle};
use crate::command::CommandRoutes;
use crate::config::Config;
use crate::journal::Journal;
use crate::relay::hub::Hub;
use crate::sink::SinkStates;
use crate::source::{sim, SourceCtx, SourceStates};
use anyhow::Context;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Extra run-time options that are not part of the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// A key accepted for this run only (demo's printed key), with all scopes.
    pub ephemeral_key: Option<String>,
}

/// Resolve on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Run the gateway until SIGINT/SIGTERM.
pub async fn run(cfg: Config, opts: RunOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let jcfg = cfg.journal.clone();
    let journal = tokio::task::spawn_blocking(move || Journal::open(jcfg))
        .await
        .context("journal open task")??;
    let keys = KeyStore::persistent(journal.tree("keys")?);
    if let Some(k) = &opts.ephemeral_key {
        keys.add_ephemeral(k, "demo", &crate::auth::Scope::ALL)?;
    }
    let sources = SourceStates::default();
    let sinks = SinkStates::default();
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let commands = CommandRoutes::default();
    for (_, source, device, takes_commands) in cfg.sources.owned_devices() {
        if let Err(e) = commands.claim(&source, &device, takes_commands) {
            tracing::error!(error = %e, "device claimed twice");
        }
    }
    let hub = Hub::spawn(&journal, shutdown.clone());

    let gateway = cfg.gateway.id.clone();
    let ctx = |name: &str, kind: &'static str| SourceCtx {
        gateway: gateway.clone(),
        journal: journal.clone(),
        slot: sources.register(name, kind),
        shutdown: shutdown.clone(),
        commands: commands.clone(),
    };
    // Simulators first: a pty-mode one has its devices in place before the sources that
    // read them make their first attempt.
    for s in cfg.sources.sim.iter().cloned() {
        tasks.spawn(sim::start(s.clone(), ctx(&s.name, "sim")));
    }
    for s in cfg.sources.serial.iter().cloned() {
        let ctx = ctx(&s.name, "serial");
        tasks.spawn(crate::source::serial::run(s, ctx));
    }
    for s in cfg.sources.obd.iter().cloned() {
        let ctx = ctx(&s.name, "obd");
        tasks.spawn(crate::source::obd::run(s, ctx));
    }
    for s in cfg.sources.can.iter().cloned() {
        let c = ctx(&s.name, "can");
        tasks.spawn(crate::source::can::run(s, c));
    }
    for s in cfg.sources.mqtt.iter().cloned() {
        let c = ctx(&s.name, "mqtt");
        tasks.spawn(crate::source::mqtt::run(s, c));
    }
    if let Some(m) = &cfg.mongo {
        let slot = sinks.register("mongo");
        tasks.spawn(crate::sink::mongo::run(
            m.clone(),
            gateway.clone(),
            journal.clone(),
            slot,
            shutdown.clone(),
        ));
    }

    let sinks_view = sinks.clone();
    let sources_view = sources.clone();
    let limits = cfg.listen.limits();
    let connections = api::conns::Connections::new(limits);
    let events = std::sync::Arc::new(api::events::ListenEvents::default());
    let tls = match (&cfg.listen.tls_cert, &cfg.listen.tls_key) {
        (Some(cert), Some(key)) => {
            Some(crate::tls::server_config(cert, key).context("[listen] tls_cert / tls_key")?)
        }
        _ => None,
    };
    let keys_at_exit = keys.clone();
    let state = AppState {
        gateway: gateway.clone(),
        journal: journal.clone(),
        keys,
        throttle: Throttle::default(),
        events: events.clone(),
        sessions: api::Sessions::new(limits.max_sessions_per_key),
        connections: connections.clone(),
        sources,
        sinks,
        hub,
        commands,
        shutdown: shutdown.clone(),
        started,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen.address)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen.address))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(address = %cfg.listen.address, %scheme, gateway = %gateway, "API listening");
    if tls.is_none() && !cfg.listen.address.ip().is_loopback() {
        tracing::warn!(address = %cfg.listen.address,
            "plain HTTP on a network address: API keys and telemetry cross the network in clear text; set [listen] tls_cert and tls_key (fieldgate tls self-signed)");
    }
    raise_fd_limit(limits.max_connections);
    let router = api::router(state, &cfg.listen);
    let server = tokio::spawn(api::serve::serve(
        listener,
        tls,
        router,
        connections,
        events,
        shutdown.clone(),
    ));

    crate::notify::ready(&format!("serving on {}", cfg.listen.address));
    tokio::spawn(crate::notify::watchdog(
        journal.clone(),
        sinks_view,
        sources_view,
        shutdown.clone(),
    ));
    shutdown_signal().await;
    crate::notify::stopping();
    tracing::info!("shutting down: stopping sources, flushing the journal");
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    if tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .is_err()
    {
        tracing::warn!("API server did not drain in 5 s");
    }
    keys_at_exit.persist_last_used();
    let j = journal.clone();
    tokio::task::spawn_blocking(move || j.close())
        .await
        .context("journal close task")??;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Raise the open-files limit to its hard maximum: every connection is a descriptor, and
/// running out makes `accept` fail for everyone. Warns if `max_connections` cannot fit.
fn raise_fd_limit(max_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let mut raised = lim;
            raised.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    // Journal, sources, sinks and the process itself need some descriptors too.
    let needed =
        libc::rlim_t::try_from(max_connections.saturating_add(128)).unwrap_or(libc::rlim_t::MAX);
    if lim.rlim_cur < needed {
        tracing::warn!(
            open_files = lim.rlim_cur,
            max_connections,
            "the open-files limit is below [listen] max_connections + 128; lower max_connections or raise LimitNOFILE"
        );
    }
}

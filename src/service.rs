//! Wiring: open the journal, start every component, serve the API, shut down cleanly.
//!
//! Shutdown order matters for "never lose a frame": sources stop first (no new frames),
//! then the listener drains, then the journal flushes and records a clean close.

use crate::api::{self, AppState};
use crate::auth::{KeyStore, Throttle};
use crate::config::Config;
use crate::journal::Journal;
use crate::relay::hub::{CommandRoutes, Hub};
use crate::sink::SinkStates;
use crate::source::{sim, SourceCtx, SourceStates};
use anyhow::Context;
use axum::serve::ListenerExt;
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
        keys.add_ephemeral(k, "demo", &crate::auth::Scope::ALL);
    }
    let sources = SourceStates::default();
    let sinks = SinkStates::default();
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let commands = CommandRoutes::default();
    let hub = Hub::spawn(&journal, commands.clone(), shutdown.clone());

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
    // [serial sources]
    for s in cfg.sources.serial.iter().cloned() {
        let ctx = ctx(&s.name, "serial");
        tasks.spawn(crate::source::serial::run(s, ctx));
    }
    // [obd sources]
    for s in cfg.sources.obd.iter().cloned() {
        let ctx = ctx(&s.name, "obd");
        tasks.spawn(crate::source::obd::run(s, ctx));
    }
    // [can sources]
    for s in cfg.sources.can.iter().cloned() {
        let c = ctx(&s.name, "can");
        tasks.spawn(crate::source::can::run(s, c));
    }
    // [mqtt sources]
    for s in cfg.sources.mqtt.iter().cloned() {
        let c = ctx(&s.name, "mqtt");
        tasks.spawn(crate::source::mqtt::run(s, c));
    }
    // [mongo sink]
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
    let keys_at_exit = keys.clone();
    let state = AppState {
        gateway: gateway.clone(),
        journal: journal.clone(),
        keys,
        throttle: Throttle::default(),
        sources,
        sinks,
        hub,
        shutdown: shutdown.clone(),
        started,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen.address)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen.address))?
        // Live frames are small writes: without TCP_NODELAY, Nagle and the client's delayed
        // ACK hold one back for up to 40 ms whenever the previous one is still unacknowledged.
        .tap_io(|tcp: &mut tokio::net::TcpStream| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
    tracing::info!(address = %cfg.listen.address, gateway = %gateway, "API listening");
    let server_stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move { server_stop.cancelled().await })
        .await
    });

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
    match tokio::time::timeout(std::time::Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "API server ended with an error"),
        Err(_) => tracing::warn!("API server did not drain in 5 s"),
        _ => {}
    }
    keys_at_exit.persist_last_used();
    let j = journal.clone();
    tokio::task::spawn_blocking(move || j.close())
        .await
        .context("journal close task")??;
    tracing::info!("stopped cleanly");
    Ok(())
}

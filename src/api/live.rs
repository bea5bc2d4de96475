//! `/` and `/ws`: the WebSocket upgrade (auth before upgrade, seed-compatible subprotocol
//! echo, at most `max_sessions_per_key` sessions per key) and, for plain browser requests
//! to `/`, the dashboard page.

use super::conns::{ConnHandle, Phase};
use super::events::Refusal;
use super::serve::{Stream, Tracked};
use super::{peer, scope, ApiError, AppState, Scoped};
use crate::relay::hub::ClientInfo;
use crate::relay::socket::{tls_pair, Socket};
use crate::relay::ws::{self, SessionCtx};
use crate::sync::lock;
use axum::extract::{FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// `GET /`: WebSocket for the seed client, the dashboard for browsers.
pub async fn root(State(st): State<AppState>, req: Request) -> Response {
    if wants_upgrade(req.headers()) {
        upgrade(st, req).await
    } else {
        super::dashboard::page(req.headers().get(header::HOST))
    }
}

/// `GET /ws`: WebSocket.
pub async fn ws(State(st): State<AppState>, req: Request) -> Response {
    upgrade(st, req).await
}

/// WebSocket sessions open per key, up to a cap.
#[derive(Clone)]
pub struct Sessions {
    max: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open session's place under its key's cap; freed on drop.
struct SessionGuard {
    sessions: Sessions,
    key_id: String,
}

impl Sessions {
    /// At most `max` sessions per key.
    pub fn new(max: usize) -> Self {
        Sessions {
            max,
            open: Arc::default(),
        }
    }

    fn open(&self, key_id: &str) -> Option<SessionGuard> {
        let mut open = lock(&self.open);
        let n = open.entry(key_id.to_string()).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SessionGuard {
            sessions: self.clone(),
            key_id: key_id.to_string(),
        })
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut open = lock(&self.sessions.open);
        if let Some(n) = open.get_mut(&self.key_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key_id);
            }
        }
    }
}

async fn upgrade(st: AppState, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let Scoped(key, _) = match Scoped::<scope::Read>::from_request_parts(&mut parts, &st).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let Some(session) = st.sessions.open(&key.id) else {
        st.events
            .refused(Refusal::SessionsPerKey, peer(&parts).ip(), st.sessions.max);
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sessions",
            format!(
                "this key already has {} WebSocket sessions open (the limit)",
                st.sessions.max
            ),
        )
        .into_response();
    };
    // The relay writes to the client's socket itself (the hub fans frames out straight
    // into every socket), so the session takes the raw connection from hyper, not axum's
    // WebSocket. axum's extractor still validates the handshake; keep hyper's upgrade handle
    // (a shared clone) before it takes it.
    let on_upgrade = parts.extensions.get::<OnUpgrade>().cloned();
    let conn = parts.extensions.get::<ConnHandle>().cloned();
    if let Err(e) = WebSocketUpgrade::from_request_parts(&mut parts, &st).await {
        return ApiError::new(StatusCode::BAD_REQUEST, "bad_upgrade", e.body_text())
            .into_response();
    }
    let accept = parts
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .and_then(|a| HeaderValue::from_str(&a).ok());
    let (Some(on_upgrade), Some(accept)) = (on_upgrade, accept) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_upgrade",
            "only HTTP/1.1 WebSocket upgrades are supported",
        )
        .into_response();
    };
    // The seed client names itself with its first subprotocol; `ws` rejects the handshake
    // unless the server echoes one it offered. Read the header in order.
    let first = parts
        .headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| !p.is_empty())
        .and_then(|p| HeaderValue::from_str(p).ok());
    let name = first
        .as_ref()
        .and_then(|p| p.to_str().ok())
        .unwrap_or("anonymous")
        .to_string();
    let info = ClientInfo {
        id: 0,
        name,
        address: peer(&parts),
        key_id: key.id.clone(),
        connected_at_ms: crate::frame::now_ms(),
        filters: serde_json::json!({}),
        sent: 0,
        dropped: 0,
    };
    let ctx = SessionCtx {
        gateway: st.gateway.clone(),
        journal: st.journal.clone(),
        hub: st.hub.clone(),
        commands: st.commands.clone(),
        shutdown: st.shutdown.clone(),
    };
    if let Some(c) = &conn {
        // The session keeps the connection's slot; the listener's timers leave it alone.
        c.slot().enter(Phase::Upgraded);
    }
    tokio::spawn(async move {
        // Both live as long as the session: its place under the key's cap, and the
        // connection's slot in the listener's table.
        let _held = (session, conn);
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let Ok(parts) = upgraded.downcast::<TokioIo<Tracked>>() else {
            tracing::error!("websocket upgrade is not over the listener's stream");
            return;
        };
        let socket = match parts.io.into_inner().into_inner() {
            Stream::Plain(tcp) => Socket::Tcp(tcp),
            Stream::Tls(tls) => match tls_pair(*tls) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a TLS WebSocket session");
                    return;
                }
            },
        };
        ws::run(socket, parts.read_buf, ctx, key, info).await
    });
    let mut headers = HeaderMap::new();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = first {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    (StatusCode::SWITCHING_PROTOCOLS, headers).into_response()
}

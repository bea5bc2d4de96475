//! `/` and `/ws`: the WebSocket upgrade (auth before upgrade, seed-compatible subprotocol
//! echo) and, for plain browser requests to `/`, the live dashboard page.

use super::{peer, ApiError, AppState, Auth};
use crate::auth::Scope;
use crate::relay::hub::ClientInfo;
use crate::relay::ws::{self, SessionCtx};
use axum::extract::{FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto::upgrade::downcast;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The dashboard page (static; it authenticates its WebSocket with `?api_key=`).
const DASHBOARD: &str = include_str!("dashboard.html");

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
        Html(DASHBOARD).into_response()
    }
}

/// `GET /ws`: WebSocket.
pub async fn ws(State(st): State<AppState>, req: Request) -> Response {
    upgrade(st, req).await
}

async fn upgrade(st: AppState, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let auth = match Auth::from_request_parts(&mut parts, &st).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = auth.require(Scope::Read) {
        return e.into_response();
    }
    // The relay writes to the client's TCP stream itself (the hub fans frames out straight
    // into every socket), so the session takes the raw connection from hyper, not axum's
    // WebSocket. axum's extractor still validates the handshake; keep hyper's upgrade handle
    // (a shared clone) before it takes it.
    let on_upgrade = parts.extensions.get::<OnUpgrade>().cloned();
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
        key_id: auth.0.id.clone(),
        connected_at_ms: crate::frame::now_ms(),
        filters: serde_json::json!({}),
        sent: 0,
        dropped: 0,
    };
    let ctx = SessionCtx {
        gateway: st.gateway.clone(),
        journal: st.journal.clone(),
        hub: st.hub.clone(),
        shutdown: st.shutdown.clone(),
    };
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        match downcast::<TokioIo<TcpStream>>(upgraded) {
            Ok(p) => ws::run(p.io.into_inner(), p.read_buf, ctx, auth.0, info).await,
            Err(_) => tracing::error!("websocket upgrade is not over a TCP stream"),
        }
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

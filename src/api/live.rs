//! `/` and `/ws`: the WebSocket upgrade (auth before upgrade, seed-compatible subprotocol
//! echo) and, for plain browser requests to `/`, the live dashboard page.

use super::{peer, ApiError, AppState, Auth};
use crate::auth::Scope;
use crate::relay::hub::ClientInfo;
use crate::relay::ws::{self, SessionCtx, READ_LIMIT};
use axum::extract::{FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

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
    let mut up = match WebSocketUpgrade::from_request_parts(&mut parts, &st).await {
        Ok(u) => u,
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "bad_upgrade", e.body_text())
                .into_response()
        }
    };
    // The seed client names itself with its first subprotocol; `ws` rejects the handshake
    // unless the server echoes one it offered. Read the header in order (axum's accessor
    // does not keep the client's order).
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
    if let Some(p) = first {
        up.set_selected_protocol(p);
    }
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
    // A burst of live frames is fed, then flushed once: a 16 KiB write buffer (not
    // tungstenite's 128 KiB) still makes it one write, without each of a hundred clients
    // keeping a 100 KiB buffer resident. tungstenite zero-fills `read_buffer_size` bytes
    // on every read attempt, so its 128 KiB default cost a 128 KiB memset per client per
    // live frame (a third of the relay's CPU) and kept 128 KiB resident per client.
    // Messages over MAX_MESSAGE are read whole (up to READ_LIMIT) and refused by the session
    // with 1009, so the close is clean instead of a reset over unread bytes.
    up.max_message_size(READ_LIMIT)
        .max_frame_size(READ_LIMIT)
        .read_buffer_size(4 << 10)
        .write_buffer_size(16 << 10)
        .on_upgrade(move |socket| ws::run(socket, ctx, auth.0, info))
}

//! The HTTP API: one axum listener serving WebSocket, REST, metrics and the dashboard.
//!
//! Routes are assembled in [`router`], read top to bottom. Auth is an extractor
//! ([`Auth`]) that resolves the presented key once (with per-address throttling of
//! failures); handlers state the scope they need. Every error is the same JSON shape,
//! produced by [`ApiError`]'s `IntoResponse`; bodies go through [`ApiJson`], which rejects
//! unknown fields and names the field at fault.

mod frames;
mod live;
pub(crate) mod registry;

use crate::auth::{KeyInfo, KeyStore, Scope, Throttle};
use crate::journal::Journal;
use crate::relay::hub::Hub;
use crate::sink::SinkStates;
use crate::source::SourceStates;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::{header, request::Parts, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest accepted request body.
pub const BODY_LIMIT: usize = 64 * 1024;

/// `[listen]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Address of the HTTP/WebSocket listener.
    pub address: SocketAddr,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: SocketAddr::from(([0, 0, 0, 0], 3004)),
        }
    }
}

/// Everything handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Gateway id.
    pub gateway: String,
    /// The journal.
    pub journal: Journal,
    /// API keys.
    pub keys: KeyStore,
    /// Failed-auth throttling.
    pub throttle: Throttle,
    /// Source status slots.
    pub sources: SourceStates,
    /// Sink status slots.
    pub sinks: SinkStates,
    /// The live hub.
    pub hub: Arc<Hub>,
    /// Fires on shutdown (ends WebSocket sessions).
    pub shutdown: CancellationToken,
    /// When the service started.
    pub started: Instant,
}

/// An API error: status code plus `{"error":{"code","message"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with a status, stable code and human message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with a message naming the field.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 for storage failures (details logged, not leaked).
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "API storage error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "storage error; see the gateway log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of an oversize body may still be in flight: tell the client this
            // connection is done so it never reuses it for the next request.
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}

/// How much of an oversize body is read and discarded before answering 413, so the client
/// receives the answer instead of a reset from a socket closed with unread data.
const DRAIN_LIMIT: usize = 4 * 1024 * 1024;

/// Reads a request body of at most [`BODY_LIMIT`] bytes; a larger one is drained (up to
/// [`DRAIN_LIMIT`]) and answered with 413.
async fn read_body(req: Request) -> Result<Vec<u8>, ApiError> {
    use futures_util::StreamExt;
    let mut stream = req.into_body().into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("reading body: {e}"),
            )
        })?;
        seen = seen.saturating_add(chunk.len());
        if seen <= BODY_LIMIT {
            buf.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > BODY_LIMIT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body is larger than the limit of {BODY_LIMIT} bytes"),
        ));
    }
    Ok(buf)
}

/// The caller's verified key, taken from `x-api-key`, `Authorization: Bearer` or `api_key`.
pub struct Auth(pub KeyInfo);

/// The key a request presents, if any (header first, then bearer, then query).
pub fn presented_key(parts: &Parts) -> Option<String> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(k) = header("x-api-key") {
        return Some(k.trim().to_string());
    }
    if let Some(k) = header("authorization").and_then(|v| v.strip_prefix("Bearer ")) {
        return Some(k.trim().to_string());
    }
    parts.uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "api_key")
            .map(|(_, v)| v.to_string())
    })
}

/// The peer address of a request (loopback if unknown, e.g. in unit tests).
pub fn peer(parts: &Parts) -> SocketAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ip = peer(parts).ip();
        if let Some(retry) = state.throttle.blocked(ip) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                format!("too many failed attempts from {ip}; retry in {retry} s"),
            ));
        }
        let key = presented_key(parts).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing API key (x-api-key header, Authorization: Bearer, or api_key query)",
            )
        })?;
        state.keys.verify(&key).map(Auth).ok_or_else(|| {
            // Only wrong keys count towards throttling: they are what a guesser sends.
            let n = state.throttle.fail(ip);
            if n <= 3 || n.is_power_of_two() {
                tracing::warn!(%ip, failures = n, path = %parts.uri.path(), "unknown API key");
            }
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown API key")
        })
    }
}

impl Auth {
    /// Require a scope, or answer 403.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.0.allows(scope) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this key lacks the {scope} scope"),
            ))
        }
    }
}

/// A JSON body: size-limited, unknown fields rejected, errors naming the field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json_type {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ));
        }
        let bytes = read_body(req).await?;
        parse_body(&bytes).map(ApiJson)
    }
}

/// Parses a JSON request body as [`ApiJson`] does: one JSON document, unknown fields
/// rejected, the error naming the field at fault.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ApiError::invalid(if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        })
    })?;
    // Nothing but whitespace may follow the document.
    de.end().map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(value)
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(live::root))
        .route("/ws", get(live::ws))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/user", get(user))
        .route("/api/connections", get(connections))
        .route("/api/frames", get(frames::query))
        .merge(registry::routes::<registry::Device>("/api/devices"))
        .merge(registry::routes::<registry::Vehicle>("/api/vehicles"))
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({"ok": true}))
}

/// Ready when the journal is open and committing.
async fn readyz(State(st): State<AppState>) -> Response {
    let stats = st.journal.stats();
    let behind = stats.last_seq.saturating_sub(stats.durable_seq);
    let ready = behind < 1_000_000;
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({"ready": ready, "durable_seq": stats.durable_seq, "not_yet_durable": behind})),
    )
        .into_response()
}

/// `GET /api/status`: journal, sources, sinks, uptime.
async fn status(auth: Auth, State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    auth.require(Scope::Read)?;
    Ok(Json(json!({
        "gateway": st.gateway,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": st.started.elapsed().as_secs(),
        "journal": st.journal.stats(),
        "sources": st.sources.snapshot(),
        "sinks": st.sinks.snapshot(),
        "clients": st.hub.clients().len(),
    })))
}

/// `GET /api/user`: who the presented key belongs to.
async fn user(auth: Auth) -> Json<Value> {
    Json(json!({"name": auth.0.name, "id": auth.0.id, "scopes": auth.0.scopes}))
}

/// `GET /api/connections`: WebSocket clients, sources, sinks.
async fn connections(auth: Auth, State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    auth.require(Scope::Read)?;
    Ok(Json(json!({
        "clients": st.hub.clients(),
        "sources": st.sources.snapshot(),
        "sinks": st.sinks.snapshot(),
    })))
}

/// `GET /metrics`: Prometheus text.
async fn metrics(auth: Auth, State(st): State<AppState>) -> Result<Response, ApiError> {
    auth.require(Scope::Read)?;
    let body = crate::metrics::render(&st);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `rest_body` fuzz target (input `{}l`): the body parser stopped after the
    /// first JSON value and accepted whatever followed it.
    #[test]
    fn a_body_is_one_json_document() {
        let ok: registry::Device = parse_body(br#" {"id": "gps0"} "#).expect("valid body");
        assert_eq!(ok.id, "gps0");
        for body in [&b"{}l"[..], br#"{"id":"va","plate":null}ull}"#, b"{} {}"] {
            let err = parse_body::<registry::Vehicle>(body).expect_err("trailing bytes");
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(
                err.message.contains("trailing characters"),
                "{}",
                err.message
            );
        }
    }
}

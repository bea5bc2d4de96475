//! The HTTP API: one axum listener serving status and the REST routes.
//!
//! Routes are assembled in [`router`], read top to bottom. Auth is an extractor
//! ([`Auth`]) that resolves the presented key once; handlers state the scope they need.
//! Every error is the same JSON shape, produced by [`ApiError`]'s `IntoResponse`.

use crate::auth::{KeyInfo, KeyStore, Scope};
use crate::journal::Journal;
use crate::sink::SinkStates;
use crate::source::SourceStates;
use axum::extract::{FromRequestParts, State};
use axum::http::{request::Parts, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Instant;

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
    /// Source status slots.
    pub sources: SourceStates,
    /// Sink status slots.
    pub sinks: SinkStates,
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
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

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = presented_key(parts).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing API key (x-api-key header, Authorization: Bearer, or api_key query)",
            )
        })?;
        state.keys.verify(&key).map(Auth).ok_or_else(|| {
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
                format!("this key lacks the {scope:?} scope").to_lowercase(),
            ))
        }
    }
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/status", get(status))
        .route("/api/user", get(user))
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({"ok": true}))
}

async fn readyz(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    // Ready when the journal's flusher keeps up: the durable seq trails by at most a window.
    let stats = st.journal.stats();
    Ok(Json(
        json!({"ready": true, "durable_seq": stats.durable_seq}),
    ))
}

/// `GET /api/status`: journal, sources, uptime.
async fn status(auth: Auth, State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    auth.require(Scope::Read)?;
    Ok(Json(json!({
        "gateway": st.gateway,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": st.started.elapsed().as_secs(),
        "journal": st.journal.stats(),
        "sources": st.sources.snapshot(),
        "sinks": st.sinks.snapshot(),
    })))
}

/// `GET /api/user`: who the presented key belongs to.
async fn user(auth: Auth) -> Json<Value> {
    Json(json!({"name": auth.0.name, "id": auth.0.id, "scopes": auth.0.scopes}))
}

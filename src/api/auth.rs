//! The auth extractors: [`Auth`] resolves the presented key once; [`Scoped`] also states, in
//! the handler's signature, the scope it needs (`Scoped<Read>`), so no handler checks
//! scopes by hand.
//!
//! A missing or empty key is answered 401 and counted nowhere. A presented wrong key counts
//! against its address in the [`crate::auth::Throttle`]; once an address has sent too many,
//! its wrong keys get 429. A valid key is always served, throttled address or not.

use super::events::Refusal;
use super::{ApiError, AppState};
use crate::auth::{KeyInfo, Scope};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{request::Parts, StatusCode};
use std::marker::PhantomData;
use std::net::SocketAddr;

/// The caller's verified key, taken from `x-api-key`, `Authorization: Bearer` or `api_key`.
pub struct Auth(pub KeyInfo);

/// The key a request presents, if any (header first, then bearer, then query); an empty
/// one counts as none.
pub fn presented_key(parts: &Parts) -> Option<String> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let key = if let Some(k) = header("x-api-key") {
        Some(k.trim().to_string())
    } else if let Some(k) = header("authorization").and_then(|v| v.strip_prefix("Bearer ")) {
        Some(k.trim().to_string())
    } else {
        parts.uri.query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "api_key")
                .map(|(_, v)| v.to_string())
        })
    };
    key.filter(|k| !k.is_empty())
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
        let key = presented_key(parts).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing API key (x-api-key header, Authorization: Bearer, or api_key query)",
            )
        })?;
        if let Some(info) = state.keys.verify(&key) {
            return Ok(Auth(info));
        }
        let ip = peer(parts).ip();
        let failures = state.throttle.fail(ip);
        state.events.wrong_key(ip, failures, parts.uri.path());
        if let Some(retry) = state.throttle.blocked(ip) {
            state
                .events
                .refused(Refusal::Throttled, ip, crate::auth::THROTTLE_LIMIT as usize);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                format!("too many wrong keys from {ip}; retry in {retry} s"),
            ));
        }
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown API key",
        ))
    }
}

/// A scope as a type, for [`Scoped`].
pub trait NeedScope: Send + Sync {
    /// The scope.
    const SCOPE: Scope;
}

/// Marker types for [`Scoped`], one per scope.
pub mod scope {
    use super::{NeedScope, Scope};

    /// Needs `read`.
    pub struct Read;
    /// Needs `write`.
    pub struct Write;

    impl NeedScope for Read {
        const SCOPE: Scope = Scope::Read;
    }
    impl NeedScope for Write {
        const SCOPE: Scope = Scope::Write;
    }
}

/// A verified key that has scope `S` (or `admin`); 403 otherwise.
pub struct Scoped<S: NeedScope>(pub KeyInfo, pub PhantomData<S>);

impl<S: NeedScope> FromRequestParts<AppState> for Scoped<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Auth(key) = Auth::from_request_parts(parts, state).await?;
        if key.allows(S::SCOPE) {
            Ok(Scoped(key, PhantomData))
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this key lacks the {} scope", S::SCOPE),
            ))
        }
    }
}

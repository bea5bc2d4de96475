//! The dashboard: one page, one script, one style sheet, all embedded in the binary (no
//! CDN, works offline on the vehicle's Wi-Fi).
//!
//! The page builds no HTML from data: every value reaches the DOM through `textContent`
//! or an attribute set from a number. The Content-Security-Policy below enforces it: only
//! this origin's script and style run, no inline script or style, no `eval`, no framing.
//! The key is kept in memory or the tab's `sessionStorage`, never in the page URL.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// The dashboard's policy: its own script, style and connections (REST and WebSocket on
/// this origin), images only as `data:`, nothing else.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            // A gateway upgrade changes the assets: revalidate, never serve a stale script.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// The page. Browsers older than CSP level 3 (some tablets) do not count `ws:`/`wss:` of
/// this host as `'self'`, so the page's policy also names them, from a `Host` that is a
/// plain host name or address (anything else keeps the policy as it is).
pub fn page(host: Option<&HeaderValue>) -> Response {
    let mut resp = asset(INDEX, "text/html; charset=utf-8");
    let host = host.and_then(|h| h.to_str().ok()).filter(|h| {
        h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    });
    if let Some(h) = host {
        let csp = CSP.replace(
            "connect-src 'self'",
            &format!("connect-src 'self' ws://{h} wss://{h}"),
        );
        if let Ok(v) = HeaderValue::from_str(&csp) {
            resp.headers_mut()
                .insert(header::CONTENT_SECURITY_POLICY, v);
        }
    }
    resp
}

/// `GET /ui/app.js`.
pub async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /ui/app.css`.
pub async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

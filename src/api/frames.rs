//! `GET /api/frames`: query the journal — recent history while the uplink is down.

use super::{scope, ApiError, AppState, Scoped};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// Most frames one request may return.
pub const MAX_LIMIT: usize = 10_000;
/// Most frames one request scans (filters may match few); the reply says where to resume.
const MAX_SCAN: usize = 200_000;
const READ_CHUNK: usize = 1_000;

/// Query parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameQuery {
    /// Only this device.
    pub device: Option<String>,
    /// Only this vehicle.
    pub vehicle: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Start at this seq (default: the oldest stored).
    pub from_seq: Option<u64>,
    /// Only frames received at or after this unix ms.
    pub since: Option<i64>,
    /// Only frames received before this unix ms.
    pub until: Option<i64>,
    /// Most frames to return (default 100, at most 10,000).
    pub limit: Option<usize>,
    /// The key, for browsers (already checked by `Scoped`).
    #[serde(rename = "api_key")]
    pub _api_key: Option<String>,
}

/// `GET /api/frames`.
pub async fn query(
    _: Scoped<scope::Read>,
    State(st): State<AppState>,
    q: Result<Query<FrameQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::invalid(format!(
            "limit: expected 1 to {MAX_LIMIT}, got {limit}"
        )));
    }
    let journal = st.journal.clone();
    let (frames, next_seq) = tokio::task::spawn_blocking(move || {
        let mut next = q.from_seq.unwrap_or(0);
        let mut out = Vec::new();
        let mut scanned = 0;
        while out.len() < limit && scanned < MAX_SCAN {
            let chunk = journal.range(next, READ_CHUNK);
            let Some(last) = chunk.last().map(|f| f.seq) else {
                break;
            };
            scanned += chunk.len();
            for f in chunk {
                if out.len() >= limit {
                    next = f.seq;
                    return (out, Some(next));
                }
                let keep = q.device.as_ref().is_none_or(|d| *d == f.device)
                    && q.vehicle
                        .as_ref()
                        .is_none_or(|v| f.vehicle.as_ref() == Some(v))
                    && q.kind.as_ref().is_none_or(|k| *k == f.kind)
                    && q.since.is_none_or(|s| f.ts_ms >= s)
                    && q.until.is_none_or(|u| f.ts_ms < u);
                if keep {
                    out.push(f);
                }
            }
            next = last + 1;
        }
        let more = journal.last_seq() >= next;
        (out, more.then_some(next))
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(
        json!({"count": frames.len(), "frames": frames, "next_seq": next_seq}),
    ))
}

//! `GET /api/frames`: query the journal — recent history while the uplink is down.
//!
//! Frames are read as stored (payloads stay JSON text, never a `Value` tree) and a reply
//! carries at most [`MAX_BYTES`] of payloads: a page of large frames stops early, says so
//! (`truncated`), and `next_seq` continues where it stopped.

use super::{ApiError, AppState, Auth};
use crate::auth::Scope;
use crate::frame::RawFrame;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

/// Most frames one request may return.
pub const MAX_LIMIT: usize = 10_000;
/// Most payload bytes one reply carries (a single larger frame still comes, alone).
pub const MAX_BYTES: usize = 4 << 20;
/// Most frames one request scans (filters may match few); the reply says where to resume.
const MAX_SCAN: usize = 200_000;

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
    /// The key, for browsers (already checked by `Auth`).
    #[serde(rename = "api_key")]
    pub _api_key: Option<String>,
}

/// The reply.
#[derive(Serialize)]
pub struct FramesPage {
    /// Frames returned.
    pub count: usize,
    /// The frames, in seq order.
    pub frames: Vec<RawFrame>,
    /// Where the next page starts; absent when the journal has nothing further.
    pub next_seq: Option<u64>,
    /// The page stopped at [`MAX_BYTES`] of payloads before reaching `limit`.
    pub truncated: bool,
}

/// `GET /api/frames`.
pub async fn query(
    auth: Auth,
    State(st): State<AppState>,
    q: Result<Query<FrameQuery>, QueryRejection>,
) -> Result<Json<FramesPage>, ApiError> {
    auth.require(Scope::Read)?;
    let Query(q) = q.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::invalid(format!(
            "limit: expected 1 to {MAX_LIMIT}, got {limit}"
        )));
    }
    let journal = st.journal.clone();
    let page = tokio::task::spawn_blocking(move || {
        let from = q.from_seq.unwrap_or(0);
        let mut frames: Vec<RawFrame> = Vec::new();
        let (mut bytes, mut truncated) = (0usize, false);
        // The lowest seq not looked at yet.
        let mut next = from;
        journal.scan(from, MAX_SCAN, |v| {
            let keep = q.device.as_ref().is_none_or(|d| d == v.device)
                && q.vehicle
                    .as_ref()
                    .is_none_or(|x| v.vehicle == Some(x.as_str()))
                && q.kind.as_ref().is_none_or(|k| k == v.kind)
                && q.since.is_none_or(|s| v.ts_ms >= s)
                && q.until.is_none_or(|u| v.ts_ms < u);
            if keep {
                if frames.len() >= limit {
                    return false;
                }
                let size = v.payload.get().len();
                if !frames.is_empty() && bytes + size > MAX_BYTES {
                    truncated = true;
                    return false;
                }
                bytes += size;
                frames.push(v.to_raw());
            }
            next = v.seq + 1;
            true
        });
        let more = journal.last_seq() >= next.max(1);
        FramesPage {
            count: frames.len(),
            frames,
            next_seq: more.then_some(next),
            truncated,
        }
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(page))
}

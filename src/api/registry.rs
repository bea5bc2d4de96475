//! `/api/devices` and `/api/vehicles`: CRUD over the journal's registry trees.
//!
//! Both registries are the same code over a [`Record`] type: JSON records keyed by id in a
//! sled tree (which the MongoDB sink mirrors), and a live view derived from frames. Tree
//! reads and writes (each write is fsynced) run on the blocking pool, never on the async
//! workers that serve the relay.

use super::{ApiError, ApiJson, AppState, Auth};
use crate::auth::Scope;
use crate::relay::hub::Hub;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A registry record type.
pub trait Record: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The sled tree (and MongoDB collection) holding records.
    const TREE: &'static str;
    /// Singular noun for messages.
    const NOUN: &'static str;
    /// The record's id.
    fn id(&self) -> &str;
    /// Set the id (PUT takes it from the path).
    fn set_id(&mut self, id: String);
    /// Field checks beyond types.
    fn validate(&self) -> Result<(), ApiError>;
    /// Live status derived from frames.
    fn live(hub: &Hub, id: &str) -> Value;
}

fn check_text(field: &str, v: &Option<String>) -> Result<(), ApiError> {
    match v {
        Some(s) if s.len() > 200 => Err(ApiError::invalid(format!(
            "{field}: expected at most 200 characters, got {}",
            s.len()
        ))),
        _ => Ok(()),
    }
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if crate::config::valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "id: expected 1-64 characters of A-Z a-z 0-9 . _ -, got {id:?}"
        )))
    }
}

/// `impl Record` for a registry type: its tree, noun, hub lookup and optional text fields.
macro_rules! record {
    ($ty:ty, $tree:literal, $noun:literal, $live:ident, [$($field:ident),*]) => {
        impl Record for $ty {
            const TREE: &'static str = $tree;
            const NOUN: &'static str = $noun;
            fn id(&self) -> &str {
                &self.id
            }
            fn set_id(&mut self, id: String) {
                self.id = id;
            }
            fn validate(&self) -> Result<(), ApiError> {
                check_id(&self.id)?;
                $(check_text(stringify!($field), &self.$field)?;)*
                Ok(())
            }
            fn live(hub: &Hub, id: &str) -> Value {
                json!(hub.$live(id))
            }
        }
    };
}

/// A device registered with the gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Device id (matches the `device` of its frames).
    #[serde(default)]
    pub id: String,
    /// Human name.
    pub name: Option<String>,
    /// Vehicle it is installed in.
    pub vehicle: Option<String>,
    /// What it is (gps, obd, mcu, ...).
    pub kind: Option<String>,
    /// Free text.
    pub notes: Option<String>,
}

record!(
    Device,
    "devices",
    "device",
    device,
    [name, vehicle, kind, notes]
);

/// A vehicle registered with the gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vehicle {
    /// Vehicle id (matches the `vehicle` of its frames).
    #[serde(default)]
    pub id: String,
    /// Human name.
    pub name: Option<String>,
    /// Number plate.
    pub plate: Option<String>,
    /// Free text.
    pub notes: Option<String>,
}

record!(
    Vehicle,
    "vehicles",
    "vehicle",
    vehicle,
    [name, plate, notes]
);

/// Routes for one registry under `base`.
pub fn routes<R: Record>(base: &str) -> Router<AppState> {
    Router::new()
        .route(base, get(list::<R>).post(create::<R>))
        .route(
            &format!("{base}/{{id}}"),
            get(get_one::<R>).put(replace::<R>).delete(remove::<R>),
        )
}

fn tree<R: Record>(st: &AppState) -> Result<sled::Tree, ApiError> {
    st.journal.tree(R::TREE).map_err(ApiError::internal)
}

/// Run `f` on the registry's tree on the blocking pool.
async fn on_tree<R: Record, T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&sled::Tree) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let t = tree::<R>(st)?;
    tokio::task::spawn_blocking(move || f(&t))
        .await
        .map_err(ApiError::internal)?
}

fn with_live<R: Record>(hub: &Hub, r: &R) -> Value {
    let mut v = json!(r);
    v["live"] = R::live(hub, r.id());
    v
}

fn load<R: Record>(t: &sled::Tree, id: &str) -> Result<Option<R>, ApiError> {
    match t.get(id.as_bytes()).map_err(ApiError::internal)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(ApiError::internal),
        None => Ok(None),
    }
}

async fn list<R: Record>(auth: Auth, State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    auth.require(Scope::Read)?;
    let records = on_tree::<R, _>(&st, |t| {
        let mut out = Vec::new();
        for item in t.iter() {
            let (_, v) = item.map_err(ApiError::internal)?;
            match serde_json::from_slice::<R>(&v) {
                Ok(r) => out.push(r),
                Err(e) => tracing::error!(error = %e, tree = R::TREE, "unreadable registry record"),
            }
        }
        Ok(out)
    })
    .await?;
    let out = records.iter().map(|r| with_live(&st.hub, r)).collect();
    Ok(Json(Value::Array(out)))
}

async fn get_one<R: Record>(
    auth: Auth,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Scope::Read)?;
    let r: R = on_tree::<R, _>(&st, move |t| {
        load(t, &id)?.ok_or_else(|| ApiError::not_found(format!("no {} {id:?}", R::NOUN)))
    })
    .await?;
    Ok(Json(with_live(&st.hub, &r)))
}

async fn create<R: Record>(
    auth: Auth,
    State(st): State<AppState>,
    ApiJson(r): ApiJson<R>,
) -> Result<Response, ApiError> {
    auth.require(Scope::Write)?;
    r.validate()?;
    let bytes = serde_json::to_vec(&r).map_err(ApiError::internal)?;
    let id = r.id().to_string();
    on_tree::<R, _>(&st, move |t| {
        let swapped = t
            .compare_and_swap(id.as_bytes(), None as Option<&[u8]>, Some(bytes))
            .map_err(ApiError::internal)?;
        if swapped.is_err() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "exists",
                format!("{} {id:?} already exists; PUT to replace it", R::NOUN),
            ));
        }
        t.flush().map_err(ApiError::internal)?;
        Ok(())
    })
    .await?;
    tracing::info!(id = r.id(), by = %auth.0.name, "{} created", R::NOUN);
    Ok((StatusCode::CREATED, Json(with_live(&st.hub, &r))).into_response())
}

async fn replace<R: Record>(
    auth: Auth,
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiJson(mut r): ApiJson<R>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Scope::Write)?;
    if !r.id().is_empty() && r.id() != id {
        return Err(ApiError::invalid(format!(
            "id: body says {:?} but the path says {id:?}",
            r.id()
        )));
    }
    r.set_id(id);
    r.validate()?;
    let bytes = serde_json::to_vec(&r).map_err(ApiError::internal)?;
    let id = r.id().to_string();
    on_tree::<R, _>(&st, move |t| {
        t.insert(id.as_bytes(), bytes).map_err(ApiError::internal)?;
        t.flush().map_err(ApiError::internal)?;
        Ok(())
    })
    .await?;
    tracing::info!(id = r.id(), by = %auth.0.name, "{} replaced", R::NOUN);
    Ok(Json(with_live(&st.hub, &r)))
}

async fn remove<R: Record>(
    auth: Auth,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.require(Scope::Write)?;
    let key = id.clone();
    on_tree::<R, _>(&st, move |t| {
        let old = t.remove(key.as_bytes()).map_err(ApiError::internal)?;
        if old.is_none() {
            return Err(ApiError::not_found(format!("no {} {key:?}", R::NOUN)));
        }
        t.flush().map_err(ApiError::internal)?;
        Ok(())
    })
    .await?;
    tracing::info!(id = %id, by = %auth.0.name, "{} deleted", R::NOUN);
    Ok(StatusCode::NO_CONTENT)
}

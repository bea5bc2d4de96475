//! MongoDB: reachable, a write acknowledged with the configured write concern, the
//! `frames` indexes present.
//!
//! The write goes to a scratch collection of the configured database that is dropped right
//! after, so `frames` and the registries are never touched.

use super::running::Service;
use super::{Check, Ctx};
use crate::sink::mongo::{client_options, describe_error, index_keys, MongoConfig};
use bson::{doc, Document};
use futures_util::TryStreamExt;
use mongodb::error::ErrorKind;
use mongodb::Client;
use std::future::IntoFuture;
use std::time::Duration;

/// How long one operation may take.
const OP_WAIT: Duration = Duration::from_secs(10);
/// How long finding a usable server may take.
const SELECT_WAIT: Duration = Duration::from_secs(5);
/// MongoDB's "namespace not found" (no such collection yet).
const NAMESPACE_NOT_FOUND: i32 = 26;

/// `mongo` (reachable, write acknowledged) and `mongo indexes`.
pub(super) async fn checks(cfg: &MongoConfig, ctx: &Ctx) -> Vec<Check> {
    let view = ctx
        .service
        .sink("mongo")
        .map(|e| format!("; the service: {}", Service::describe(e)))
        .unwrap_or_default();
    let mut opts = match client_options(cfg).await {
        Ok(o) => o,
        Err(e) => {
            return vec![Check::fail(
                "mongo",
                format!("cannot use mongo.uri: {}", describe_error(&e)),
                "fix [mongo] uri (mongodb://host:27017/?replicaSet=... )",
            )]
        }
    };
    opts.server_selection_timeout = Some(SELECT_WAIT);
    opts.app_name = Some("fieldgate-doctor".into());
    let hosts: Vec<String> = opts.hosts.iter().map(|h| h.to_string()).collect();
    let client = match Client::with_options(opts) {
        Ok(c) => c,
        Err(e) => return vec![Check::fail("mongo", describe_error(&e), "fix [mongo] uri")],
    };
    let db = client.database(&cfg.database);
    let scratch = format!("doctor_scratch_{}", std::process::id());
    let coll = db.collection::<Document>(&scratch);
    let wrote = tokio::time::timeout(
        OP_WAIT,
        coll.insert_one(doc! {"_id": "doctor", "at": bson::DateTime::now()})
            .into_future(),
    )
    .await;
    let wc = format!("w: {}, j: true", cfg.write_concern);
    let first = match wrote {
        Ok(Ok(_)) => {
            let _ = tokio::time::timeout(OP_WAIT, coll.drop().into_future()).await;
            Check::ok(
                "mongo",
                format!(
                    "{} reachable; a write to {}.{scratch} acknowledged with {wc} (dropped again){view}",
                    hosts.join(","),
                    cfg.database
                ),
            )
        }
        Ok(Err(e)) => {
            let (detail, fix) = explain(&e, &hosts, &wc);
            client.shutdown().immediate(true).await;
            return vec![Check::fail("mongo", format!("{detail}{view}"), fix)];
        }
        Err(_) => {
            client.shutdown().immediate(true).await;
            return vec![Check::fail(
                "mongo",
                format!("{}: the write got no answer in {} s{view}", hosts.join(","), OP_WAIT.as_secs()),
                "is the server overloaded, or can the write concern not be met (too few members up)?",
            )];
        }
    };
    let second = indexes(&db.collection::<Document>("frames")).await;
    client.shutdown().immediate(true).await;
    vec![first, second]
}

/// What a failed write means for the installer.
fn explain(e: &mongodb::error::Error, hosts: &[String], wc: &str) -> (String, String) {
    let hosts = hosts.join(",");
    let msg = describe_error(e);
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. } => (
            format!("{hosts} unreachable: {msg}"),
            "is the server up and the uplink there? Check [mongo] uri; the gateway keeps \
             journaling and syncs when it is back"
                .into(),
        ),
        ErrorKind::Authentication { .. } => (
            format!("{hosts}: credentials refused: {msg}"),
            "check the user and password in [mongo] uri (and authSource)".into(),
        ),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(_)) => (
            format!("{hosts}: the write was not acknowledged with {wc}: {msg}"),
            "set [mongo] write_concern to what the deployment can meet (\"majority\" or a \
             member count)"
                .into(),
        ),
        _ => (
            format!("{hosts}: the write failed: {msg}"),
            "the user in [mongo] uri needs readWrite on the database".into(),
        ),
    }
}

/// Same keys in the same order and direction (servers may return 1 as int or double).
fn same_keys(a: &Document, b: &Document) -> bool {
    let dir = |v: &bson::Bson| match v {
        bson::Bson::Int32(n) => f64::from(*n).signum(),
        bson::Bson::Int64(n) => (*n as f64).signum(),
        bson::Bson::Double(n) => n.signum(),
        _ => 0.0,
    };
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && dir(va) == dir(vb))
}

/// `mongo indexes`: the query indexes the gateway creates on `frames`.
async fn indexes(frames: &mongodb::Collection<Document>) -> Check {
    const PART: &str = "mongo indexes";
    let listed = tokio::time::timeout(OP_WAIT, async {
        frames.list_indexes().await?.try_collect::<Vec<_>>().await
    })
    .await;
    let have: Vec<Document> = match listed {
        Ok(Ok(models)) => models.into_iter().map(|m| m.keys).collect(),
        Ok(Err(e)) => {
            if matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == NAMESPACE_NOT_FOUND) {
                return Check::warn(
                    PART,
                    "no frames collection yet",
                    "nothing to do: the gateway creates it and its indexes when it first syncs",
                );
            }
            return Check::fail(
                PART,
                format!("cannot list the indexes of frames: {}", describe_error(&e)),
                "the user in [mongo] uri needs read access to the database",
            );
        }
        Err(_) => {
            return Check::fail(
                PART,
                format!("listing indexes got no answer in {} s", OP_WAIT.as_secs()),
                "check the server's load",
            )
        }
    };
    let missing: Vec<String> = index_keys()
        .iter()
        .filter(|want| !have.iter().any(|h| same_keys(want, h)))
        .map(|k| k.to_string())
        .collect();
    if missing.is_empty() {
        return Check::ok(
            PART,
            format!("frames has the {} query indexes", index_keys().len()),
        );
    }
    Check::fail(
        PART,
        format!("frames lacks the index(es) {}", missing.join(", ")),
        "the gateway creates them at start; look for \"mongo indexes not created\" in its log \
         (the user may lack createIndex), or create them with mongosh: \
         db.frames.createIndex({...})",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_compare_by_name_order_and_direction() {
        let want = doc! {"device": 1, "ts": -1};
        assert!(same_keys(&want, &doc! {"device": 1.0, "ts": -1i64}));
        assert!(!same_keys(&want, &doc! {"ts": -1, "device": 1}));
        assert!(!same_keys(&want, &doc! {"device": 1, "ts": 1}));
        assert!(!same_keys(&want, &doc! {"device": 1}));
    }
}

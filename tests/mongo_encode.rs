//! One bad document never stops the Mongo sink (docs/mongodb.md), against a real
//! MongoDB-wire server: payloads BSON cannot hold as-is (a `\0` in a key, an integer beyond
//! i64, more than 16 MiB) and a document the server refuses (a collection validator) sit in
//! the middle of a batch, and the whole batch arrives, the odd ones in their exact form.

mod common;

use bson::{doc, Bson, Document};
use common::mongo::{block, unique_db, MongoServer};
use common::sink::Rig;
use fieldgate::frame::Frame;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Create `frames` with a validator refusing documents whose payload has `forbidden`.
fn with_validator(server: &MongoServer, db: &str) {
    block(async {
        let c = server.client().await;
        c.database(db)
            .run_command(doc! {
                "create": "frames",
                "validator": {"payload.forbidden": {"$exists": false}},
            })
            .await
            .expect("create frames with a validator");
    });
}

/// Every document of `frames` by seq.
fn stored(server: &MongoServer, db: &str) -> BTreeMap<u64, Document> {
    server
        .docs(db, "frames", doc! {})
        .into_iter()
        .map(|d| (d.get_i64("seq").expect("seq") as u64, d))
        .collect()
}

#[test]
fn odd_frames_in_the_middle_of_a_batch_arrive_with_the_rest() {
    let server = MongoServer::start();
    let db = unique_db("encode");
    with_validator(&server, &db);
    let mut rig = Rig::new("gw-enc");
    let big = Value::Array(vec![json!(0); 1_100_000]);
    // The odd ones out, each between ordinary frames, all inside one 64-frame batch.
    let odd: Vec<(Value, Option<&str>)> = vec![
        (json!({"ok": 1, "a\u{0}b": {"x": 1}}), Some("nul_in_key")),
        (json!({"odo": u64::MAX, "i": 1}), None),
        (json!({"$set": {"a.b": 1}, "k.l": [1]}), None),
        (json!({"zeros": big}), Some("too_large")),
        (
            json!({"forbidden": "yes", "keep": [1, 2.5, "x"]}),
            Some("refused"),
        ),
    ];
    let mut frames: Vec<Frame> = Vec::new();
    for (k, (payload, _)) in odd.iter().enumerate() {
        for i in 0..6 {
            frames.push(rig.frame((k * 10 + i) as u64));
        }
        let mut f = rig.frame(1_000 + k as u64);
        f.payload = payload.clone();
        frames.push(f);
    }
    frames.push(rig.frame(999));
    let n = frames.len() as u64;
    assert!(n < 64, "one batch");
    let seqs = rig.journal.append_many(frames).expect("append");
    rig.start(&server.uri(), &db);
    let s = rig.until("the whole batch acked", |s| s.acked_seq == *seqs.end());
    assert_eq!(s.delivered, n);
    let counts: BTreeMap<&str, u64> = s
        .encode_fallbacks
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("big_integer", 1),
            ("nul_in_key", 1),
            ("refused", 1),
            ("too_large", 1)
        ])
    );

    let docs = stored(&server, &db);
    assert_eq!(
        docs.keys().copied().collect::<Vec<_>>(),
        seqs.clone().collect::<Vec<_>>()
    );
    let journaled = rig.journal.range(*seqs.start(), n as usize);
    for f in &journaled {
        let d = &docs[&f.seq];
        assert_eq!(d.get_str("_id").expect("_id"), f.doc_id());
        let Some(k) = odd.iter().position(|(p, _)| *p == f.payload) else {
            assert!(
                d.get_document("payload").is_ok(),
                "ordinary frame {}",
                f.seq
            );
            continue;
        };
        match odd[k].1 {
            Some(reason) => {
                assert!(d.get("payload").is_none(), "{reason}: no payload");
                assert_eq!(
                    d.get_str("payload_json").expect("payload_json"),
                    f.payload.to_string(),
                    "{reason}: the exact JSON the journal holds"
                );
                let why = d.get_str("encode_error").expect("encode_error");
                assert!(why.starts_with(reason), "{why}");
            }
            None => assert!(d.get("encode_error").is_none()),
        }
    }
    let p = |seq: u64| docs[&seq].get_document("payload").expect("payload").clone();
    let odo = journaled
        .iter()
        .find(|f| f.payload["odo"].is_u64())
        .expect("odo frame");
    match p(odo.seq).get("odo") {
        Some(Bson::Decimal128(d)) => assert_eq!(d.to_string(), u64::MAX.to_string()),
        other => panic!("odo stored as {other:?}"),
    }
    let dollar = journaled
        .iter()
        .find(|f| f.payload.get("$set").is_some())
        .expect("$ frame");
    assert_eq!(
        p(dollar.seq)
            .get_document("$set")
            .expect("$set")
            .get_i64("a.b")
            .expect("a.b"),
        1
    );

    // Frames after the odd batch flow as usual.
    let more = rig.append(2_000..2_010);
    rig.until("later frames", |s| s.acked_seq == *more.end());
    rig.stop();
}

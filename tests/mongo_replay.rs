//! The MongoDB sink in-process against a real MongoDB-wire server: a replay over documents
//! that are already there is not an error, frames the server lost after acknowledging them
//! are sent again, and the device/vehicle registries are mirrored.

mod common;

use bson::doc;
use common::mongo::{assert_exactly_once, block, unique_db, MongoServer};
use common::sink::Rig;
use fieldgate::sink::mongo::encode;
use serde_json::json;
use std::time::{Duration, Instant};

const GATEWAY: &str = "gw-replay";

#[test]
fn replayed_documents_are_delivered_not_errors() {
    let server = MongoServer::start();
    let db = unique_db("replay");
    let mut rig = Rig::new(GATEWAY);
    let seqs = rig.append(0..300);
    assert_eq!(*seqs.end(), 300);
    block(rig.journal.flush()).expect("flush");
    // A previous run (or another replay) already wrote some of these documents: every
    // fifth frame, and a solid range that spans batch boundaries.
    let pre: Vec<_> = rig
        .journal
        .range(1, 300)
        .into_iter()
        .filter(|f| f.seq % 5 == 0 || (100..=180).contains(&f.seq))
        .map(|f| {
            let mut d = encode::encode(&f).doc.to_document().expect("document");
            // Documents written before the content hash existed have no `h`: the same frame
            // is recognised by seq, gateway, ts and device.
            if f.seq % 3 == 0 {
                d.remove("h");
            }
            d
        })
        .collect();
    let pre_n = pre.len();
    server.insert(&db, "frames", pre);

    rig.start(&server.uri(), &db);
    let s = rig.until("all acked", |s| s.acked_seq == 300);
    assert_eq!(s.state, "online");
    assert_eq!(s.delivered, 300);
    assert_eq!(s.lag, 0);
    assert_eq!(s.last_error, None, "duplicates are not errors");
    assert_eq!(
        s.collisions, 0,
        "a replay of the same frames is no collision"
    );
    assert_exactly_once(&server, &db, GATEWAY, 300);
    assert!(pre_n > 80);

    // New frames after the replay keep flowing.
    rig.append(300..350);
    rig.until("new frames acked", |s| s.acked_seq == 350);
    assert_exactly_once(&server, &db, GATEWAY, 350);
    rig.stop();
}

/// A server that loses frames after acknowledging them (a crash of a server that does not
/// journal, a replica-set rollback): the sink finds out when it reconnects, or when it
/// starts, and sends them again.
#[test]
fn acknowledged_frames_the_server_lost_are_sent_again() {
    let mut server = MongoServer::start();
    let db = unique_db("lost");
    let mut rig = Rig::new(GATEWAY);
    rig.append(0..300);
    rig.start(&server.uri(), &db);
    rig.until("all acked", |s| s.acked_seq == 300);
    let lost = |server: &MongoServer, from: i64, to: i64| {
        let filter = doc! {"seq": {"$gte": from, "$lte": to}};
        server.delete(&db, "frames", filter)
    };
    // Lost across batch boundaries (64 frames a batch), and the very last one.
    assert_eq!(lost(&server, 250, 271), 22);
    assert_eq!(lost(&server, 300, 300), 1);

    // An outage: the sink notices when frames fail to go out.
    server.stop();
    rig.append(300..350);
    rig.until("offline", |s| s.state == "offline");
    server.restart();
    let s = rig.until("caught up", |s| s.acked_seq == 350 && s.state == "online");
    assert_eq!(s.resent, 23, "{s:?}");
    assert_exactly_once(&server, &db, GATEWAY, 350);

    // A gateway restart re-checks too, before anything new is sent.
    rig.stop_sink();
    assert_eq!(lost(&server, 340, 345), 6);
    rig.start(&server.uri(), &db);
    let s = rig.until("re-sent", |s| s.resent == 6 && s.acked_seq == 350);
    assert_eq!(s.state, "online");
    assert_exactly_once(&server, &db, GATEWAY, 350);
    rig.stop();
}

#[test]
fn registries_are_mirrored_by_upsert_and_delete() {
    let server = MongoServer::start();
    let db = unique_db("registry");
    let mut rig = Rig::new(GATEWAY);
    let devices = rig.journal.tree("devices").expect("devices");
    let vehicles = rig.journal.tree("vehicles").expect("vehicles");
    let put = |t: &sled::Tree, id: &str, v: serde_json::Value| {
        t.insert(id.as_bytes(), v.to_string().into_bytes())
            .expect("insert");
    };
    put(
        &devices,
        "gps0",
        json!({"id": "gps0", "kind": "gps", "vehicle": "van-1"}),
    );
    put(&devices, "obd0", json!({"id": "obd0", "kind": "obd"}));
    put(
        &vehicles,
        "van-1",
        json!({"id": "van-1", "plate": "HH-FG 1"}),
    );
    // An existing document for a registry entry is replaced, not duplicated.
    server.insert(&db, "devices", vec![doc! {"_id": "gps0", "kind": "old"}]);

    rig.start(&server.uri(), &db);
    let docs_of = |coll: &str| server.docs(&db, coll, doc! {});
    let t0 = Instant::now();
    while docs_of("devices").len() < 2 || docs_of("vehicles").is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(60), "initial mirror");
        std::thread::sleep(Duration::from_millis(100));
    }
    let wait_for = |coll: &str, pred: &dyn Fn(&[bson::Document]) -> bool| {
        let t0 = Instant::now();
        loop {
            let d = docs_of(coll);
            if pred(&d) {
                return d;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "{coll}: {d:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let d = wait_for("devices", &|d| {
        d.iter()
            .any(|x| x.get_str("_id") == Ok("gps0") && x.get_str("kind") == Ok("gps"))
    });
    assert_eq!(d.len(), 2, "{d:?}");

    // Changes while running: update, add, remove.
    put(
        &devices,
        "obd0",
        json!({"id": "obd0", "kind": "obd", "vehicle": "van-1"}),
    );
    put(&vehicles, "van-2", json!({"id": "van-2"}));
    devices.remove("gps0").expect("remove");
    wait_for("devices", &|d| {
        d.len() == 1 && d[0].get_str("_id") == Ok("obd0") && d[0].get_str("vehicle") == Ok("van-1")
    });
    wait_for("vehicles", &|d| d.len() == 2);
    rig.stop();
}

//! Seqs never repeat for a gateway id (docs/architecture.md, "Invariants"), against a real
//! MongoDB-wire server: after the journal is quarantined or deleted, new frames continue
//! above every seq ever issued (the floor file beside the journal), and when the floor file
//! is gone too, the sink lifts the floor above what `frames` holds and sends frames
//! journaled before that under fresh seqs, counting the collisions. Every frame arrives,
//! exactly once.

mod common;

use bson::doc;
use common::mongo::{frame_seqs, unique_db, MongoServer};
use common::sink::Rig;
use std::collections::BTreeMap;
use std::path::Path;

/// `payload.i` → `_id` of every document in `frames`; asserts each `i` is there once.
fn by_payload(server: &MongoServer, db: &str) -> BTreeMap<i64, String> {
    let docs = server.docs(db, "frames", doc! {"_id": 1, "payload.i": 1});
    let mut out = BTreeMap::new();
    for d in &docs {
        let i = d
            .get_document("payload")
            .and_then(|p| p.get_i64("i"))
            .expect("payload.i");
        let id = d.get_str("_id").expect("_id").to_string();
        if let Some(prev) = out.insert(i, id.clone()) {
            panic!("frame {i} is in MongoDB twice: {prev} and {id}");
        }
    }
    out
}

/// Sync frames 0..1000, stop the sink, do `to_journal` to the closed journal, journal
/// 1000..1300 and sync again: all 1,300 frames are in `frames` under distinct `_id`s.
fn run_on_after(tag: &str, to_journal: impl FnOnce(&Path)) -> Rig {
    let server = MongoServer::start();
    let db = unique_db(tag);
    let mut rig = Rig::new(&format!("gw-{tag}"));
    assert_eq!(rig.append(0..1000), 1..=1000);
    rig.start(&server.uri(), &db);
    rig.until("first 1000 acked", |s| s.acked_seq == 1000);
    rig.stop_sink();
    let mut rig = rig.reopen(to_journal);
    let new = rig.append(1000..1300);
    assert!(
        *new.start() > 1000,
        "a new journal reissued seqs {new:?} that MongoDB already holds"
    );
    rig.start(&server.uri(), &db);
    let last = *new.end();
    let s = rig.until("new frames acked", |s| s.acked_seq == last);
    let stored = by_payload(&server, &db);
    assert_eq!(stored.len(), 1300, "frames missing: {s:?}");
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (0..1300).collect::<Vec<_>>()
    );
    assert_eq!(frame_seqs(&server, &db).len(), 1300);
    assert_eq!(s.collisions, 0, "the floor file kept the seqs apart");
    rig
}

#[test]
fn a_quarantined_journal_never_reuses_a_seq() {
    let rig = run_on_after("seqquar", |path| {
        // A journal sled cannot open: quarantined at the next open.
        std::fs::write(path.join("conf"), b"\xff\x00not a sled config").expect("corrupt");
    });
    let q = rig
        .journal
        .stats()
        .quarantine
        .expect("journal was quarantined");
    assert!(q.moved_to.exists());
    rig.stop();
}

#[test]
fn a_deleted_journal_never_reuses_a_seq() {
    let rig = run_on_after("seqdel", |path| {
        std::fs::remove_dir_all(path).expect("rm -rf journal");
    });
    assert!(rig.journal.stats().quarantine.is_none());
    rig.stop();
}

/// The journal and its floor file are both gone (a new SD card) and frames were journaled
/// before the sink could ask MongoDB: they reuse seqs MongoDB holds. The sink lifts the
/// floor above them, counts each as a collision and sends it under a fresh seq.
#[test]
fn colliding_seqs_are_counted_and_their_frames_still_arrive() {
    let server = MongoServer::start();
    let db = unique_db("seqcoll");
    let mut rig = Rig::new("gw-coll");
    rig.append(0..1000);
    rig.start(&server.uri(), &db);
    rig.until("first 1000 acked", |s| s.acked_seq == 1000);
    rig.stop_sink();
    let dir = rig.dir.path().to_path_buf();
    let mut rig = rig.reopen(|path| {
        std::fs::remove_dir_all(path).expect("rm -rf journal");
        std::fs::remove_file(dir.join("journal.seq")).expect("rm floor file");
    });
    // Journaled offline: seqs 1..=200 again, different frames.
    assert_eq!(rig.append(1000..1200), 1..=200);
    rig.start(&server.uri(), &db);
    let s = rig.until("collisions settled", |s| s.collisions == 200 && s.lag == 0);
    assert_eq!(s.delivered, 200, "collisions are not deliveries: {s:?}");
    // New frames after the lift land above everything MongoDB held.
    let more = rig.append(1200..1300);
    assert!(*more.start() > 1000, "{more:?}");
    let last = *more.end();
    let s = rig.until("all acked", |s| s.acked_seq == last && s.lag == 0);
    assert_eq!(s.collisions, 200);
    assert_eq!(s.delivered, 300);
    let stored = by_payload(&server, &db);
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (0..1300).collect::<Vec<_>>()
    );
    // The old documents are untouched: frame 0..999 still under seqs 1..=1000.
    for i in 0..1000 {
        assert_eq!(stored[&i], format!("gw-coll:{}", i + 1));
    }
    rig.stop();
}

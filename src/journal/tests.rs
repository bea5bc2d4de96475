use super::*;
use serde_json::json;

fn cfg(dir: &std::path::Path) -> JournalConfig {
    JournalConfig {
        path: dir.join("journal"),
        flush_ms: Positive(5),
        ..JournalConfig::default()
    }
}

/// A test frame with `pad` bytes of incompressible hex, so byte caps mean something.
fn frame(n: u64, pad: usize) -> Frame {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let hex: String = (0..pad)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).unwrap_or('0')
        })
        .collect();
    Frame::new(
        "gw",
        "test",
        &format!("dev{}", n % 3),
        "json",
        json!({"n": n, "pad": hex}),
    )
}

#[tokio::test]
async fn append_range_get_and_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = Journal::open(cfg(dir.path())).expect("open");
    let mut live = j.subscribe();
    let mut last = 0;
    for n in 0..100 {
        let seq = j.append(frame(n, 10)).expect("append");
        assert_eq!(seq, last + 1, "seqs are contiguous within a run");
        last = seq;
    }
    assert!(j.wait_durable(last).await.expect("durable") >= last);
    let got = j.range(1, 1000);
    assert_eq!(got.len(), 100);
    assert!(got.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    assert_eq!(got[41].payload["n"], 41);
    assert_eq!(j.get(50).expect("seq 50").seq, 50);
    assert_eq!(
        j.range(90, 5).iter().map(|f| f.seq).collect::<Vec<_>>(),
        vec![90, 91, 92, 93, 94]
    );
    let first_live = live.recv().await.expect("live frame");
    assert_eq!(first_live.seq, 1);
    assert_eq!(
        first_live.view().expect("view").payload.get(),
        frame(0, 10).payload.to_string()
    );
    let s = j.stats();
    assert_eq!((s.first_seq, s.last_seq, s.frames), (1, 100, 100));
    j.close().expect("close");
    assert!(matches!(j.append(frame(0, 1)), Err(JournalError::Closed)));
}

#[test]
fn clean_reopen_continues_without_gap_and_keeps_cursors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = Journal::open(cfg(dir.path())).expect("open");
    let range = j
        .append_many((0..10).map(|n| frame(n, 5)).collect())
        .expect("append");
    assert_eq!(range, 1..=10);
    j.cursor("mongo").ack(7).expect("ack");
    j.close().expect("close");
    drop(j);
    let j = Journal::open(cfg(dir.path())).expect("reopen");
    assert_eq!(j.append(frame(10, 5)).expect("append"), 11);
    let c = j.cursor("mongo");
    assert_eq!(c.acked(), 7);
    assert_eq!(c.read(100).first().map(|f| f.seq), Some(8));
    assert_eq!(j.stats().frames, 11);
    j.close().expect("close");
}

#[test]
fn byte_cap_evicts_oldest_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(dir.path());
    c.max_bytes = ByteSize(64 * 1024);
    let j = Journal::open(c).expect("open");
    let mut appended = 0u64;
    let mut max_seen = 0u64;
    for round in 0..40 {
        let batch: Vec<Frame> = (0..50).map(|n| frame(round * 50 + n, 200)).collect();
        let r = j.append_many(batch).expect("append");
        appended += 50;
        j.wait_durable_blocking(*r.end()).expect("durable");
        j.maintain().expect("maintain");
        max_seen = max_seen.max(j.stats().bytes);
    }
    let s = j.stats();
    let one_batch = 50 * (8 + frame(0, 200).encode().len() as u64);
    assert!(
        s.bytes <= 64 * 1024,
        "bytes {} over cap after maintenance",
        s.bytes
    );
    assert!(
        max_seen <= 64 * 1024 + one_batch,
        "peak {max_seen} over cap + one batch"
    );
    assert!(s.evicted > 0);
    let stored = j.range(0, usize::MAX);
    assert_eq!(stored.len() as u64, s.frames);
    assert_eq!(
        s.evicted,
        appended - s.frames,
        "evicted counter equals frames removed"
    );
    assert_eq!(stored.first().map(|f| f.seq), Some(s.first_seq));
    assert_eq!(stored.last().map(|f| f.seq), Some(appended));
    j.close().expect("close");
    drop(j);
    let j = Journal::open(cfg(dir.path())).expect("reopen");
    assert_eq!(
        j.stats().evicted,
        s.evicted,
        "evicted count survives restart"
    );
    j.close().expect("close");
}

#[test]
fn retention_prunes_only_what_every_sink_acked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(dir.path());
    c.retention = HumanDuration(Duration::ZERO);
    let j = Journal::open(c).expect("open");
    let a = j.cursor("mongo");
    let b = j.cursor("other");
    for c in 0..10 {
        // Ten commits of ten frames: retention works in whole chunks.
        let r = j
            .append_many((0..10).map(|n| frame(c * 10 + n, 5)).collect())
            .expect("append");
        j.wait_durable_blocking(*r.end()).expect("durable");
    }
    std::thread::sleep(Duration::from_millis(5));
    a.ack(60).expect("ack");
    b.ack(30).expect("ack");
    j.maintain().expect("maintain");
    assert_eq!(j.stats().first_seq, 31, "pruned up to the slowest sink");
    b.ack(80).expect("ack");
    j.maintain().expect("maintain");
    let s = j.stats();
    assert_eq!((s.first_seq, s.frames, s.pruned), (61, 40, 60));
    j.close().expect("close");
}

#[test]
fn undecodable_record_is_skipped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = Journal::open(cfg(dir.path())).expect("open");
    let r = j
        .append_many((0..3).map(|n| frame(n, 5)).collect())
        .expect("append");
    j.wait_durable_blocking(*r.end()).expect("durable");
    let r = j
        .append_many((0..3).map(|n| frame(n, 5)).collect())
        .expect("append");
    j.wait_durable_blocking(*r.end()).expect("durable");
    let tree = j.tree("frames").expect("tree");
    assert_eq!(tree.len(), 2, "one chunk per commit");
    tree.insert(seq_key(1), &b"\x01garbage"[..])
        .expect("insert");
    let got: Vec<u64> = j.range(0, 10).iter().map(|f| f.seq).collect();
    assert_eq!(got, vec![4, 5, 6]);
    assert_eq!(j.stats().decode_errors, 1);
    j.close().expect("close");
}

#[test]
fn garbage_journal_is_quarantined_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path());
    std::fs::create_dir_all(&c.path).expect("mkdir");
    std::fs::write(c.path.join("conf"), b"\xff\x00not a sled config\x13\x37").expect("write");
    std::fs::write(c.path.join("db"), vec![0xA5u8; 100_000]).expect("write");
    let j = Journal::open(c.clone()).expect("open must survive garbage");
    let q = j.stats().quarantine.expect("quarantine reported");
    assert!(q.moved_to.to_string_lossy().contains(".corrupt-"));
    assert!(
        q.moved_to.join("db").exists(),
        "old files kept for inspection"
    );
    assert_eq!(j.append(frame(0, 5)).expect("fresh journal works"), 1);
    j.close().expect("close");
}

#[test]
fn a_locked_journal_is_reported_not_quarantined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path());
    let j = Journal::open(c.clone()).expect("open");
    match Journal::open(c.clone()) {
        Err(JournalError::Locked(_)) => {}
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("second open must fail"),
    }
    assert!(c.path.join("db").exists(), "the live journal was not moved");
    j.close().expect("close");
}

/// Commits stalled from another thread (holding the `stall` hook) until released.
struct Stalled {
    release: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Stalled {
    /// Stall `j`'s commits; returns once the hook is held.
    fn hold(j: &Journal) -> Stalled {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (held, holding) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn({
            let j = j.clone();
            move || {
                let _stalled = j.stall();
                let _ = held.send(());
                let _ = released.recv();
            }
        });
        holding.recv().expect("stall hook held");
        Stalled { release, thread }
    }

    /// Let commits run again.
    fn release(self) {
        let _ = self.release.send(());
        self.thread.join().expect("staller");
    }
}

#[tokio::test]
async fn a_full_write_queue_refuses_appends_and_nothing_unwritten_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(dir.path());
    c.pending_max_bytes = ByteSize(64 * 1024);
    let j = Journal::open(c).expect("open");
    let first = j.append(frame(0, 10)).expect("append");
    j.wait_durable(first).await.expect("durable");
    // The disk stops answering: commits stall (a thread holds the hook), appends queue up
    // to the bound.
    let stalled = Stalled::hold(&j);
    let mut last = first;
    let mut refused = loop {
        let mut batch: Vec<Frame> = (0..4).map(|n| frame(last + n, 1000)).collect();
        match j.try_append_many(&mut batch) {
            Ok(r) => {
                assert!(batch.is_empty(), "appended frames are taken");
                last = *r.end();
            }
            Err(JournalError::Full { needed, frames, .. }) => {
                assert_eq!(batch.len(), 4, "a refused batch is left whole");
                assert_eq!(frames, 4);
                break (batch, needed);
            }
            Err(e) => panic!("append: {e}"),
        }
    };
    let s = j.stats();
    assert!(
        s.pending_bytes <= 64 * 1024,
        "queue {} over its bound",
        s.pending_bytes
    );
    assert_eq!(s.pending_peak_bytes, s.pending_bytes);
    assert_eq!(s.full, 1);
    assert!(matches!(
        j.append(frame(9, 8000)),
        Err(JournalError::Full { .. })
    ));
    assert_eq!(j.durable_seq(), first, "nothing written, nothing durable");
    let waiting = tokio::time::timeout(Duration::from_millis(200), j.wait_room(4, refused.1)).await;
    assert!(waiting.is_err(), "no room while the disk is stalled");
    let room = tokio::spawn({
        let j = j.clone();
        async move { j.wait_room(4, refused.1).await }
    });
    stalled.release();
    tokio::time::timeout(Duration::from_secs(5), room)
        .await
        .expect("room once the disk answers")
        .expect("task")
        .expect("room");
    // Durable covers exactly what was written: up to the last accepted frame.
    assert_eq!(j.wait_durable(last).await.expect("durable"), last);
    let r = j
        .try_append_many(&mut refused.0)
        .expect("append after room");
    assert_eq!(*r.start(), last + 1);
    let stored: Vec<u64> = j.range(1, usize::MAX).iter().map(|f| f.seq).collect();
    assert_eq!(
        stored,
        (1..=last + 4).collect::<Vec<_>>(),
        "no gap, nothing lost"
    );
    j.close().expect("close");
}

#[tokio::test]
async fn commit_now_cuts_the_flush_window_short() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(dir.path());
    c.flush_ms = Positive(30_000);
    let j = Journal::open(c).expect("open");
    // The first append after a quiet spell is committed at once, then the window starts.
    let a = j.append(frame(0, 10)).expect("append");
    tokio::time::timeout(Duration::from_secs(5), j.wait_durable(a))
        .await
        .expect("first commit")
        .expect("durable");
    let b = j.append(frame(1, 10)).expect("append");
    let held = tokio::time::timeout(Duration::from_millis(300), j.wait_durable(b)).await;
    assert!(held.is_err(), "a second append waits for the window");
    j.commit_now();
    tokio::time::timeout(Duration::from_secs(5), j.wait_durable(b))
        .await
        .expect("commit_now commits without waiting out the window")
        .expect("durable");
    j.close().expect("close");
}

#[test]
fn raw_reads_match_frames_and_stop_at_their_byte_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = Journal::open(cfg(dir.path())).expect("open");
    let r = j
        .append_many((0..20).map(|n| frame(n, 1000)).collect())
        .expect("append");
    j.wait_durable_blocking(*r.end()).expect("durable");
    j.append_many((20..25).map(|n| frame(n, 1000)).collect())
        .expect("append");
    let frames = j.range(1, 100);
    let raw = j.range_raw(1, 100, usize::MAX);
    assert_eq!(raw.len(), 25, "stored and queued frames");
    for (f, r) in frames.iter().zip(&raw) {
        assert_eq!(
            serde_json::to_string(f).expect("json"),
            serde_json::to_string(r).expect("json")
        );
    }
    let payload = frames[0].payload.to_string().len();
    let some = j.range_raw(3, 100, 5 * payload + payload / 2);
    assert_eq!(
        some.iter().map(|f| f.seq).collect::<Vec<_>>(),
        vec![3, 4, 5, 6, 7],
        "stops before the frame that would pass the budget"
    );
    assert_eq!(j.range_raw(3, 100, 1).len(), 1, "one frame always comes");
    let mut seen = Vec::new();
    j.scan(18, 4, |v| {
        seen.push((v.seq, v.device.to_string()));
        true
    });
    assert_eq!(
        seen,
        vec![
            (18, "dev2".into()),
            (19, "dev0".into()),
            (20, "dev1".into()),
            (21, "dev2".into())
        ]
    );
    j.close().expect("close");
}

#[test]
fn a_stalled_disk_refuses_appends_past_the_seq_lease_instead_of_waiting_for_it() {
    // Extending the lease needs the disk; with commits stalled and frames queued, an
    // append past the lease is refused rather than left waiting for the disk under the
    // writer lock (a serial or MQTT task would hang with it).
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(dir.path());
    c.pending_max_bytes = ByteSize(1 << 30);
    let j = Journal::open(c).expect("open");
    let stalled = Stalled::hold(&j);
    let mut last = 0;
    let refused = loop {
        let mut batch: Vec<Frame> = (0..500).map(|n| frame(last + n, 5)).collect();
        match j.try_append_many(&mut batch) {
            Ok(r) => last = *r.end(),
            Err(JournalError::Full { frames, .. }) => break frames,
            Err(e) => panic!("append: {e}"),
        }
        assert!(last <= 2 * SEQ_LEASE, "appends ran past the lease");
    };
    assert_eq!(refused, 500);
    assert!(last >= SEQ_LEASE / 2, "the lease ran out early, at {last}");
    stalled.release();
    j.wait_durable_blocking(last).expect("durable");
    let r = j
        .append_many((0..500).map(|n| frame(n, 5)).collect())
        .expect("the next commit extends the lease");
    assert_eq!(*r.start(), last + 1);
    j.close().expect("close");
}

/// Append `n` frames and close; returns the last seq.
fn fill_and_close(c: &JournalConfig, n: u64) -> u64 {
    let j = Journal::open(c.clone()).expect("open");
    let last = *j
        .append_many((0..n).map(|i| frame(i, 5)).collect())
        .expect("append")
        .end();
    j.close().expect("close");
    last
}

#[test]
fn a_deleted_journal_continues_above_the_floor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path());
    let last = fill_and_close(&c, 25);
    assert_eq!(last, 25);
    std::fs::remove_dir_all(&c.path).expect("rm -rf journal");
    let j = Journal::open(c.clone()).expect("reopen");
    assert_eq!(
        j.stats().seq_floor,
        SEQ_LEASE + 25,
        "the floor covers the new lease"
    );
    assert_eq!(j.append(frame(0, 5)).expect("append"), 26, "no seq reused");
    j.close().expect("close");
}

#[test]
fn the_stored_frames_alone_say_where_seqs_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path());
    assert_eq!(fill_and_close(&c, 25), 25);
    // Lose every other record of the last seq: the clean-close mark, the lease, the floor.
    {
        let db = sled::open(&c.path).expect("sled");
        let meta = db.open_tree("meta").expect("meta");
        meta.remove("clean_next").expect("rm");
        meta.remove("lease_end").expect("rm");
        db.flush().expect("flush");
    }
    std::fs::remove_file(c.path.with_extension("seq")).expect("rm floor");
    let j = Journal::open(c.clone()).expect("reopen");
    assert_eq!(j.last_seq(), 25, "the last stored chunk's last seq");
    assert_eq!(j.append(frame(0, 5)).expect("append"), 26, "no seq reused");
    j.close().expect("close");
}

#[test]
fn a_quarantined_journal_continues_above_the_floor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path());
    assert_eq!(fill_and_close(&c, 40), 40);
    std::fs::write(c.path.join("conf"), b"\xff\x00not a sled config").expect("corrupt");
    let j = Journal::open(c.clone()).expect("open quarantines");
    assert!(j.stats().quarantine.is_some());
    assert_eq!(j.append(frame(0, 5)).expect("append"), 41, "no seq reused");
    j.close().expect("close");
}

#[test]
fn lifting_the_floor_is_durable_and_never_lowers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path());
    let j = Journal::open(c.clone()).expect("open");
    assert_eq!(j.append(frame(0, 5)).expect("append"), 1);
    assert!(j.lift_floor(5_000_000).expect("lift"));
    assert!(!j.lift_floor(10).expect("below: no-op"));
    assert_eq!(j.append(frame(1, 5)).expect("append"), 5_000_001);
    assert!(j.stats().seq_floor >= 5_000_001);
    // Lifted seqs survive the journal: the floor file outlives it.
    j.close().expect("close");
    drop(j);
    std::fs::remove_dir_all(&c.path).expect("rm -rf journal");
    let j = Journal::open(c.clone()).expect("reopen");
    assert_eq!(j.append(frame(2, 5)).expect("append"), 5_000_002);
    j.close().expect("close");
}

#[test]
fn the_lease_reaches_the_floor_file_before_its_seqs_are_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path());
    let j = Journal::open(c.clone()).expect("open");
    let floor_file = || {
        std::fs::read_to_string(dir.path().join("journal.seq"))
            .expect("floor file")
            .trim()
            .parse::<u64>()
            .expect("number")
    };
    // Well past the first lease, in bursts the flusher keeps extending.
    for burst in 0..30u64 {
        let r = j
            .append_many((0..1_000).map(|i| frame(burst * 1_000 + i, 1)).collect())
            .expect("append");
        j.wait_durable_blocking(*r.end()).expect("durable");
        assert!(
            floor_file() >= j.durable_seq(),
            "durable seq {} above the floor file",
            j.durable_seq()
        );
    }
    j.close().expect("close");
    assert_eq!(
        floor_file(),
        30_000,
        "a clean close records the exact last seq"
    );
}

#[test]
fn a_second_opener_is_stopped_by_the_lock_file_before_sled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(dir.path());
    let j = Journal::open(c.clone()).expect("open");
    // Even a journal that would look corrupt to a second opener is not touched by it.
    match Journal::open(c.clone()) {
        Err(JournalError::Locked(p)) => assert_eq!(p, c.path),
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("second open must fail"),
    }
    assert!(dir.path().join("journal.lock").exists());
    j.close().expect("close");
    drop(j);
    Journal::open(c).expect("free again once closed and dropped");
}

#[tokio::test]
async fn range_starts_inside_chunks_of_every_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = Journal::open(cfg(dir.path())).expect("open");
    // Chunks of 1, 2, 3, 20, 1 and 300 frames (the last split at CHUNK_MAX_FRAMES): every
    // lookup window of `chunk_start` (the seq itself, the 15 below, the rest) is used.
    let mut n = 0;
    for size in [1, 2, 3, 20, 1, 300] {
        let mut last = 0;
        for _ in 0..size {
            last = j.append(frame(n, 4)).expect("append");
            n += 1;
        }
        j.wait_durable(last).await.expect("durable");
    }
    for from in 1..=n {
        let want: Vec<u64> = (from..=n).take(3).collect();
        let got: Vec<u64> = j.range(from, 3).iter().map(|f| f.seq).collect();
        assert_eq!(got, want, "range({from}, 3)");
    }
    j.close().expect("close");
}

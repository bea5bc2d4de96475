//! The ground truth after a fault: what the journal holds (opened with the gateway's own
//! library once the process is gone) and what MongoDB holds, and the comparisons every
//! scenario makes between them and the messages the broker or the gateway acknowledged.

use fieldgate::frame::Frame;
use fieldgate::journal::{Journal, JournalConfig};
use fieldgate::sink::mongo::encode::content_hash;
use fieldgate::units::ByteSize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// One journaled frame, reduced to what the checks compare.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Its seq.
    pub seq: u64,
    /// Its device id.
    pub device: String,
    /// The message number of an MQTT load frame (see `load`).
    pub n: Option<u64>,
    /// The content hash MongoDB's document must carry (`h`).
    pub hash: i64,
}

impl Seen {
    fn of(f: &Frame) -> Seen {
        Seen {
            seq: f.seq,
            device: f.device.clone(),
            n: f.payload.get("n").and_then(serde_json::Value::as_u64),
            hash: content_hash(f),
        }
    }
}

/// Open the journal at `path` (the gateway must be stopped) and read every frame with a
/// seq ≥ `from`; also returns the seq the journal would issue next. Nothing is evicted or
/// pruned while it is open here (no cap, no retention within the run).
pub fn read_journal(path: &Path, from: u64) -> anyhow::Result<(Vec<Seen>, u64)> {
    let j = Journal::open(JournalConfig {
        path: path.to_path_buf(),
        max_bytes: ByteSize(u64::MAX / 4),
        ..JournalConfig::default()
    })?;
    let stats = j.stats();
    anyhow::ensure!(
        stats.quarantine.is_none(),
        "the journal at {} was quarantined on open: {:?}",
        path.display(),
        stats.quarantine
    );
    let mut out = Vec::new();
    let mut next = from.max(1);
    loop {
        let frames = j.range(next, 10_000);
        let Some(last) = frames.last().map(|f| f.seq) else {
            break;
        };
        out.extend(frames.iter().map(Seen::of));
        next = last + 1;
    }
    let decode_errors = j.stats().decode_errors;
    let next_seq = j.next_seq();
    j.close()?;
    anyhow::ensure!(
        decode_errors == 0,
        "{decode_errors} undecodable journal records at {}",
        path.display()
    );
    Ok((out, next_seq))
}

/// How often each message number appears among `frames`.
pub fn copies(frames: &[Seen]) -> HashMap<u64, u32> {
    let mut m: HashMap<u64, u32> = HashMap::new();
    for n in frames.iter().filter_map(|f| f.n) {
        *m.entry(n).or_default() += 1;
    }
    m
}

/// The messages of `wanted` that are missing from `have`, with the first few of them.
pub fn missing(wanted: impl IntoIterator<Item = u64>, have: &HashMap<u64, u32>) -> (u64, Vec<u64>) {
    let mut count = 0;
    let mut first = Vec::new();
    for n in wanted {
        if !have.contains_key(&n) {
            count += 1;
            if first.len() < 5 {
                first.push(n);
            }
        }
    }
    (count, first)
}

/// Messages journaled more than once (redelivered after a crash), as extra copies.
pub fn duplicates(have: &HashMap<u64, u32>) -> u64 {
    have.values().map(|c| u64::from(c.saturating_sub(1))).sum()
}

/// Per device, message numbers must rise with the seq: the order the devices sent in.
/// Returns the number of inversions and the first one. Duplicates (a redelivery) are not
/// inversions of the device's order and are skipped.
pub fn order_inversions(frames: &[Seen]) -> (u64, Option<String>) {
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    let mut seen: HashSet<u64> = HashSet::new();
    let (mut bad, mut first) = (0, None);
    let mut sorted: Vec<&Seen> = frames.iter().collect();
    sorted.sort_by_key(|f| f.seq);
    for f in sorted {
        let Some(n) = f.n else { continue };
        if !seen.insert(n) {
            continue;
        }
        if let Some(prev) = last.insert(&f.device, n) {
            if n < prev {
                bad += 1;
                first.get_or_insert_with(|| {
                    format!(
                        "{}: message {n} at seq {} after message {prev}",
                        f.device, f.seq
                    )
                });
            }
        }
    }
    (bad, first)
}

/// One document of `frames`, reduced to what the checks compare.
#[derive(Debug, Clone)]
pub struct Doc {
    /// `seq`.
    pub seq: u64,
    /// `h`, the content hash.
    pub hash: i64,
}

/// How the documents in MongoDB compare with the journal.
#[derive(Debug, Default)]
pub struct Sync {
    /// Journal frames with no document.
    pub missing: u64,
    /// Documents with no journal frame (the sink sends only durable frames, so none).
    pub extra: u64,
    /// Documents whose content is not their frame's (an `_id` collision).
    pub mismatched: u64,
    /// The first problem, for the report.
    pub first: Option<String>,
}

impl Sync {
    /// Whether MongoDB holds exactly the journal's frames, each as itself.
    pub fn exact(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.mismatched == 0
    }
}

/// Compare the journal's frames with the documents (both for one gateway).
pub fn compare(frames: &[Seen], docs: &[Doc]) -> Sync {
    let by_seq: HashMap<u64, i64> = docs.iter().map(|d| (d.seq, d.hash)).collect();
    let journal: HashSet<u64> = frames.iter().map(|f| f.seq).collect();
    let mut s = Sync::default();
    for f in frames {
        match by_seq.get(&f.seq) {
            None => {
                s.missing += 1;
                s.first
                    .get_or_insert_with(|| format!("seq {} is not in MongoDB", f.seq));
            }
            Some(h) if *h != f.hash => {
                s.mismatched += 1;
                s.first.get_or_insert_with(|| {
                    format!("seq {}: MongoDB holds another frame's content", f.seq)
                });
            }
            Some(_) => {}
        }
    }
    for d in docs {
        if !journal.contains(&d.seq) {
            s.extra += 1;
            s.first
                .get_or_insert_with(|| format!("seq {} is in MongoDB, not in the journal", d.seq));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(seq: u64, device: &str, n: u64) -> Seen {
        Seen {
            seq,
            device: device.into(),
            n: Some(n),
            hash: seq as i64 * 7,
        }
    }

    #[test]
    fn counts_losses_duplicates_and_inversions() {
        let frames = vec![
            seen(1, "a", 0),
            seen(2, "b", 1),
            seen(3, "a", 2),
            seen(10_004, "a", 2),
            seen(10_005, "b", 3),
        ];
        let have = copies(&frames);
        assert_eq!(missing(0..5, &have), (1, vec![4]));
        assert_eq!(duplicates(&have), 1);
        assert_eq!(
            order_inversions(&frames).0,
            0,
            "a redelivered copy is no inversion"
        );
        let swapped = vec![seen(1, "a", 2), seen(2, "a", 0)];
        assert_eq!(order_inversions(&swapped).0, 1);
    }

    #[test]
    fn mongo_must_hold_exactly_the_journal() {
        let frames = vec![seen(1, "a", 0), seen(2, "a", 1), seen(3, "a", 2)];
        let doc = |seq: u64, hash: i64| Doc { seq, hash };
        assert!(compare(&frames, &[doc(1, 7), doc(2, 14), doc(3, 21)]).exact());
        let s = compare(&frames, &[doc(1, 7), doc(2, 99), doc(4, 28)]);
        assert_eq!((s.missing, s.mismatched, s.extra), (1, 1, 1));
    }
}

//! kill -9 at random moments: every frame reported durable survives intact, and seqs are
//! never reused. A child `fieldgate-bench journal --report` appends in a loop and prints
//! `start N`, `issued N`, `durable N`; the parent SIGKILLs it and checks the journal.

use fieldgate::journal::{Journal, JournalConfig};
use fieldgate_bench::synthetic::synthetic_frame;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PAYLOAD: usize = 200;

/// Spawn the bench binary with piped stdout, returning the child and a line reader.
fn spawn_lines(args: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fieldgate-bench"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fieldgate-bench");
    let out = child.stdout.take().expect("stdout");
    (child, BufReader::new(out))
}

/// The next line, without the newline; `None` at EOF.
fn next_line(r: &mut impl BufRead) -> Option<String> {
    let mut s = String::new();
    match r.read_line(&mut s) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(s.trim_end().to_string()),
    }
}

struct Run {
    start: u64,
    issued: u64,
    durable: u64,
}

/// One child run, SIGKILLed `after` its first durable report.
fn crash_once(data: &str, after: Duration) -> Run {
    let (mut child, mut out) = spawn_lines(&[
        "journal",
        "--report",
        "--frames",
        "0",
        "--data",
        data,
        "--flush-ms",
        "3",
        "--batch",
        "37",
    ]);
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        while let Some(line) = next_line(&mut out) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut run = Run {
        start: 0,
        issued: 0,
        durable: 0,
    };
    let mut killed_at: Option<Instant> = None;
    let t0 = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(line) => {
                let (what, n) = line.split_once(' ').expect("report line");
                let n: u64 = n.parse().expect("number");
                match what {
                    "start" => run.start = n,
                    "issued" => run.issued = run.issued.max(n),
                    "durable" => {
                        run.durable = run.durable.max(n);
                        killed_at.get_or_insert_with(Instant::now);
                    }
                    other => panic!("unexpected report {other}"),
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if killed_at.is_some_and(|t| t.elapsed() >= after) {
            child.kill().expect("SIGKILL");
            killed_at = Some(Instant::now() + Duration::from_secs(3600));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "child never reported"
        );
    }
    child.wait().expect("reap");
    reader.join().expect("reader");
    // Lines still in the pipe at the kill were read to EOF above: nothing reported is missed.
    assert!(
        run.start > 0 && run.durable >= run.start,
        "child reported nothing durable"
    );
    run
}

#[test]
fn kill9_loses_no_reported_frame_and_never_reuses_a_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("journal");
    let data_s = data.to_string_lossy().to_string();
    let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ fieldgate::frame::now_ms() as u64;
    let mut runs: Vec<Run> = Vec::new();
    for trial in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let after = Duration::from_millis(seed % 250);
        let run = crash_once(&data_s, after);
        if let Some(prev) = runs.last() {
            assert!(
                run.start > prev.issued,
                "trial {trial}: seq {} reused (previous run issued up to {})",
                run.start,
                prev.issued
            );
        }
        runs.push(run);
    }
    let journal = Journal::open(JournalConfig {
        path: data,
        ..JournalConfig::default()
    })
    .expect("reopen after kill -9");
    let mut checked = 0u64;
    for run in &runs {
        let frames = journal.range(run.start, (run.durable - run.start + 1) as usize);
        assert_eq!(
            frames.len() as u64,
            run.durable - run.start + 1,
            "lost frames"
        );
        for f in frames {
            let n = f.seq - run.start;
            let want = synthetic_frame(n, PAYLOAD);
            assert_eq!(f.payload, want.payload, "seq {} damaged", f.seq);
            assert_eq!(
                (f.device.as_str(), f.vehicle.as_deref()),
                ("dev0", Some("van-01"))
            );
            checked += 1;
        }
    }
    let max_issued = runs.iter().map(|r| r.issued).max().unwrap_or(0);
    let next = journal
        .append(synthetic_frame(0, PAYLOAD))
        .expect("append after crashes");
    assert!(
        next > max_issued,
        "new seq {next} not above highest issued {max_issued}"
    );
    journal.close().expect("close");
    eprintln!("20 kill -9 trials: {checked} durable frames verified, next seq {next}");
}

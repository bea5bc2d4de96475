//! `fieldgate-bench mongo`: how fast the MongoDB sink drains a backlog compared with the
//! server's raw `insert_many` rate for the same documents, and its lag at a steady rate.
//!
//! Both numbers come from one run against one server, so the server's own speed (SecantusDB
//! is Python) is visible next to the sink's: the sink can only be judged relative to it.

use crate::secantus::Secantus;
use crate::synthetic::synthetic_frame;
use anyhow::bail;
use bson::{doc, Document, RawDocumentBuf};
use clap::Args;
use fieldgate::journal::{Journal, JournalConfig};
use fieldgate::sink::mongo::{encode, MongoConfig};
use fieldgate::sink::SinkStates;
use fieldgate::units::{ByteSize, Positive};
use mongodb::options::ClientOptions;
use mongodb::{Client, IndexModel};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Arguments of `bench mongo`.
#[derive(Args)]
pub struct MongoArgs {
    /// Frames journaled offline and then drained (and inserted raw for comparison).
    #[arg(long, default_value_t = 1_000_000)]
    frames: u64,
    /// Approximate JSON payload size, bytes.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// `mongo.batch_max` of the sink, also the raw insert batch size.
    #[arg(long, default_value_t = 1000)]
    batch_max: u64,
    /// Steady-state rate, frames/s.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Steady-state duration, s.
    #[arg(long, default_value_t = 30)]
    steady_secs: u64,
    /// What to run: `drain`, `steady` or `all`.
    #[arg(long, default_value = "all")]
    mode: String,
    /// A running server to use (default: start SecantusDB on a free port).
    #[arg(long)]
    uri: Option<String>,
    /// SecantusDB launcher (default: $FIELDGATE_TEST_SECANTUSD or .venv-test/bin/secantusd-py).
    #[arg(long)]
    secantusd: Option<PathBuf>,
}

fn scratch(tag: &str) -> anyhow::Result<PathBuf> {
    let p = std::env::temp_dir().join(format!(
        "fieldgate-bench-mongo-{tag}-{}-{}",
        std::process::id(),
        fieldgate::frame::now_ms()
    ));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

async fn client(uri: &str) -> anyhow::Result<Client> {
    let mut o = ClientOptions::parse(uri).await?;
    o.server_selection_timeout = Some(Duration::from_secs(2));
    let c = Client::with_options(o)?;
    let t0 = Instant::now();
    loop {
        match c.database("admin").run_command(doc! {"ping": 1}).await {
            Ok(_) => return Ok(c),
            Err(e) if t0.elapsed() > Duration::from_secs(60) => bail!("server never answered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn frames_indexes() -> Vec<IndexModel> {
    [
        doc! {"device": 1, "ts": -1},
        doc! {"vehicle": 1, "ts": -1},
        doc! {"gateway": 1, "seq": 1},
    ]
    .into_iter()
    .map(|k| IndexModel::builder().keys(k).build())
    .collect()
}

fn open_journal(dir: &std::path::Path) -> anyhow::Result<Journal> {
    Ok(Journal::open(JournalConfig {
        path: dir.join("journal"),
        max_bytes: ByteSize(16 << 30),
        ..JournalConfig::default()
    })?)
}

fn start_sink(
    uri: &str,
    db: &str,
    batch_max: u64,
    journal: &Journal,
) -> (SinkStates, CancellationToken, tokio::task::JoinHandle<()>) {
    let mut cfg = MongoConfig::with_uri(uri.to_string());
    cfg.database = db.to_string();
    cfg.batch_max = Positive(batch_max.max(1));
    let states = SinkStates::default();
    let stop = CancellationToken::new();
    let task = tokio::spawn(fieldgate::sink::mongo::run(
        cfg,
        "bench".into(),
        journal.clone(),
        states.register("mongo"),
        stop.clone(),
    ));
    (states, stop, task)
}

fn acked(states: &SinkStates) -> u64 {
    states.snapshot().get("mongo").map_or(0, |s| s.acked_seq)
}

/// Run `bench mongo`.
pub fn run(args: MongoArgs) -> anyhow::Result<()> {
    let dir = scratch("run")?;
    let result = run_in(&args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(args: &MongoArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let (_server, uri) = match args.uri.clone() {
        Some(u) => {
            println!("server: {u}");
            (None, u)
        }
        None => {
            let exe = Secantus::launcher(args.secantusd.clone())?;
            let server = Secantus::start(&exe, &dir.join("secantus"))?;
            println!(
                "server: SecantusDB ({}) on 127.0.0.1:{}",
                exe.display(),
                server.port()
            );
            let uri = server.uri();
            (Some(server), uri)
        }
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let c = client(&uri).await?;
        let db = format!("fieldgate_bench_{}", fieldgate::frame::now_ms());
        if matches!(args.mode.as_str(), "drain" | "all") {
            drain(args, &uri, &c, &db, dir).await?;
        }
        if matches!(args.mode.as_str(), "steady" | "all") {
            steady(args, &uri, &db, dir).await?;
        }
        let _ = c.database(&db).drop().await;
        anyhow::Ok(())
    })
}

async fn drain(
    args: &MongoArgs,
    uri: &str,
    c: &Client,
    db: &str,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let n = args.frames;
    let batch = args.batch_max.max(1) as usize;
    println!(
        "drain: {n} frames of ~{} B payload, batch_max {batch}",
        args.payload_bytes
    );
    // 1. Journal everything while no sink runs (the uplink is down).
    let jdir = dir.join("drain");
    let journal = open_journal(&jdir)?;
    let t0 = Instant::now();
    let mut i = 0;
    while i < n {
        let k = (n - i).min(10_000);
        journal.append_many(
            (i..i + k)
                .map(|j| synthetic_frame(j, args.payload_bytes))
                .collect(),
        )?;
        i += k;
    }
    journal.flush().await?;
    println!(
        "  journaled offline: {n} frames in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // 2. Raw: the same documents straight into a collection with the same indexes, under
    // the sink's write concern (`majority`, `j: true`).
    let raw = c.database(db).collection::<RawDocumentBuf>("raw_frames");
    let wc = MongoConfig::with_uri(uri.to_string()).write_concern();
    raw.create_indexes(frames_indexes()).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<RawDocumentBuf>>(4);
    let j = journal.clone();
    // Documents are built on another thread, overlapping the inserts, so this measures
    // the server (and the driver), not our document building.
    let producer = std::thread::spawn(move || {
        let mut seq = 1;
        while seq <= n {
            let docs: Vec<RawDocumentBuf> = j
                .range(seq, batch)
                .iter()
                .map(|f| encode::encode(f).doc)
                .collect();
            let Some(last) = docs.last().and_then(|d| d.get_i64("seq").ok()) else {
                break;
            };
            seq = last as u64 + 1;
            if tx.blocking_send(docs).is_err() {
                break;
            }
        }
    });
    let t0 = Instant::now();
    let mut raw_n = 0u64;
    while let Some(docs) = rx.recv().await {
        raw_n += docs.len() as u64;
        raw.insert_many(&docs)
            .ordered(false)
            .write_concern(wc.clone())
            .await?;
    }
    let raw_s = t0.elapsed().as_secs_f64();
    let _ = producer.join();
    let raw_rate = raw_n as f64 / raw_s;
    println!("  raw insert_many: {raw_n} docs in {raw_s:.1} s = {raw_rate:.0} docs/s");
    raw.drop().await?;

    // 3. The sink drains the backlog (starting it is "the server came up").
    let t0 = Instant::now();
    let (states, stop, task) = start_sink(uri, db, args.batch_max, &journal);
    let last = journal.last_seq();
    let mut last_print = Instant::now();
    while acked(&states) < last {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_print.elapsed() > Duration::from_secs(10) {
            last_print = Instant::now();
            println!("  ... acked {} of {last}", acked(&states));
        }
        if t0.elapsed() > Duration::from_secs(3600) {
            bail!("drain did not finish in an hour");
        }
    }
    let sink_s = t0.elapsed().as_secs_f64();
    stop.cancel();
    let _ = task.await;
    let count = c
        .database(db)
        .collection::<Document>("frames")
        .count_documents(doc! {})
        .await?;
    let sink_rate = n as f64 / sink_s;
    println!("  sink drain: {n} docs in {sink_s:.1} s = {sink_rate:.0} docs/s ({count} documents in frames)");
    println!(
        "  sink / raw = {:.2} (target >= 0.80)",
        sink_rate / raw_rate
    );
    c.database(db)
        .collection::<Document>("frames")
        .drop()
        .await?;
    let j = journal.clone();
    tokio::task::spawn_blocking(move || j.close()).await??;
    Ok(())
}

async fn steady(
    args: &MongoArgs,
    uri: &str,
    db: &str,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let rate = args.rate.max(1);
    println!(
        "steady: {rate} frames/s for {} s, batch_max {}, batch_ms 200 (default)",
        args.steady_secs, args.batch_max
    );
    let journal = open_journal(&dir.join("steady"))?;
    let (states, stop, task) = start_sink(uri, &format!("{db}_steady"), args.batch_max, &journal);
    // Append every 10 ms; record when each append happened.
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let mut sent: std::collections::VecDeque<(u64, Instant)> = Default::default();
    let mut lags: Vec<f64> = Vec::new();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let t0 = Instant::now();
    let warmup = Duration::from_secs(2);
    let mut n = 0u64;
    let end = Duration::from_secs(args.steady_secs.max(1));
    while t0.elapsed() < end || !sent.is_empty() {
        interval.tick().await;
        if t0.elapsed() < end {
            let frames = (n..n + per_tick)
                .map(|j| synthetic_frame(j, args.payload_bytes))
                .collect();
            let r = journal.append_many(frames)?;
            n += per_tick;
            sent.push_back((*r.end(), Instant::now()));
        }
        let a = acked(&states);
        while sent.front().is_some_and(|(s, _)| *s <= a) {
            if let Some((_, at)) = sent.pop_front() {
                if at.duration_since(t0) >= warmup {
                    lags.push(at.elapsed().as_secs_f64());
                }
            }
        }
        if t0.elapsed() > end + Duration::from_secs(120) {
            bail!("sink did not catch up within 120 s after the load stopped");
        }
    }
    stop.cancel();
    let _ = task.await;
    lags.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lags.get(((lags.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "  appended {n} frames ({:.0}/s); sync lag (append -> server ack, 10 ms resolution): p50 {:.3} s, p99 {:.3} s, max {:.3} s (target p99 < 1 s)",
        n as f64 / end.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        lags.last().copied().unwrap_or(0.0)
    );
    let j = journal.clone();
    tokio::task::spawn_blocking(move || j.close()).await??;
    Ok(())
}

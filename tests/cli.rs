//! The command line: check-config messages, keys, and `run` from a config file.

mod common;

use common::{free_port, run_cli, Gateway};
use std::collections::HashSet;

const BASE: &str = r#"
[gateway]
id = "van-07"
[journal]
path = "JOURNAL"
max_bytes = "16MiB"
flush_ms = 10
[listen]
address = "127.0.0.1:PORT"
[[sources.sim]]
name = "sim"
interval_ms = 50
"#;

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join(format!("cfg-{}.toml", fieldgate::frame::now_ms()));
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn check_config_accepts_good_and_names_the_bad_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write_config(dir.path(), &BASE.replace("PORT", "3999"));
    let (code, out, _) = run_cli(&["check-config", &good.to_string_lossy()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (gateway van-07, 1 sources"));

    let bad: Vec<(String, &str)> = vec![
        (BASE.replace("interval_ms = 50", "interval_ms = \"fast\""),
         "sources.sim[0].interval_ms: expected a positive integer, got string \"fast\""),
        (BASE.replace("flush_ms = 10", "flush_ms = -3"),
         "journal.flush_ms: expected a positive integer, got integer `-3`"),
        (BASE.replace("max_bytes = \"16MiB\"", "max_bytes = \"16 bananas\""),
         "journal.max_bytes: expected a byte size such as 512MiB"),
        (BASE.replace("[listen]", "[listen]\nport = 80"),
         "listen.port: unknown field `port`, expected one of `address`"),
        (BASE.replace("id = \"van-07\"", "id = \"\""),
         "gateway.id: expected 1-64 characters"),
        (BASE.replace("127.0.0.1:PORT", "localhost"),
         "listen.address: "),
        (BASE.replace("[[sources.sim]]", "[[sources.sim]]\nspeed = 3"),
         "sources.sim[0].speed: unknown field `speed`"),
        (format!("{BASE}\n[mongo]\nuri = \"postgres://x\"\n"),
         "mongo.uri: expected a mongodb:// or mongodb+srv:// URI, got \"postgres://x\""),
        (format!("{BASE}\n[[sources.obd]]\nname = \"obd\"\npath = \"/dev/x\"\npids = [\"0C\", \"G1\"]\n"),
         "sources.obd[0].pids[1]: expected a two-digit hex PID"),
        (BASE.replace("[gateway]", "[gatway]"), "unknown field `gatway`"),
        (format!("{BASE}\n[log]\nlevel = \"fieldgate=loud\"\n"),
         "log.level: expected a level or target=level list"),
    ];
    let mut messages = HashSet::new();
    for (text, want) in &bad {
        let path = write_config(dir.path(), &text.replace("PORT", "3999"));
        let (code, _, err) = run_cli(&["check-config", &path.to_string_lossy()]);
        assert_eq!(code, 2, "bad config accepted: {want}");
        assert!(err.contains(want), "want {want:?} in {err:?}");
        messages.insert(err);
    }
    assert_eq!(
        messages.len(),
        bad.len(),
        "every bad config gets its own message"
    );
    let (code, _, err) = run_cli(&["check-config", "/nonexistent/fieldgate.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"));
}

#[test]
fn keys_then_run_from_config_serves_status_with_that_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let journal = dir.path().join("journal");
    let text = BASE
        .replace("JOURNAL", &journal.to_string_lossy())
        .replace("PORT", &port.to_string());
    let cfg = write_config(dir.path(), &text);
    let cfg_s = cfg.to_string_lossy().to_string();
    let (code, key, err) = run_cli(&[
        "keys", "add", "tech", "--scopes", "read", "--config", &cfg_s,
    ]);
    assert_eq!(code, 0, "{err}");
    let key = key.trim().to_string();
    assert!(key.starts_with("fg_"));
    let (_, list, _) = run_cli(&["keys", "list", "--config", &cfg_s]);
    assert!(list.contains("tech") && list.contains("read"));
    assert!(!list.contains(&key), "keys list must never show a key");

    let gw = Gateway::run(&cfg, port, &key, dir.path());
    let st = gw.status_until(std::time::Duration::from_secs(10), |s| {
        s["journal"]["last_seq"].as_u64().unwrap_or(0) >= 10
    });
    assert_eq!(st["gateway"], "van-07");
    assert_eq!(st["sources"]["sim"]["state"], "running");
    let (code, user) = gw.get("/api/user");
    assert_eq!((code, user["name"].as_str()), (200, Some("tech")));
    assert!(!gw.log().contains(&key), "a key appeared in the log");
    assert!(gw.stop().success());

    let (code, out, _) = run_cli(&["journal", "stats", "--config", &cfg_s]);
    assert_eq!(code, 0);
    let stats: serde_json::Value = serde_json::from_str(&out).expect("stats json");
    assert!(stats["frames"].as_u64().unwrap_or(0) >= 10);
    let (_, export, _) = run_cli(&["journal", "export", "--config", &cfg_s, "--limit", "3"]);
    let seqs: Vec<u64> = export
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("frame json")["seq"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    let (code, out, _) = run_cli(&["keys", "revoke", "tech", "--config", &cfg_s]);
    assert_eq!((code, out.trim()), (0, "revoked 1 key(s)"));
}

#[test]
fn shipped_example_config_and_hardware_profiles_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("hardware/fieldgate.toml");
    let (code, out, err) = run_cli(&["check-config", &example.to_string_lossy()]);
    assert_eq!(code, 0, "hardware/fieldgate.toml: {err}");
    assert!(out.contains("ok"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut n = 0;
    for entry in std::fs::read_dir(root.join("hardware/profiles")).expect("profiles") {
        let path = entry.expect("entry").path();
        let snippet = std::fs::read_to_string(&path).expect("profile");
        let cfg = write_config(dir.path(), &format!("[gateway]\nid = \"t\"\n{snippet}"));
        let (code, _, err) = run_cli(&["check-config", &cfg.to_string_lossy()]);
        assert_eq!(code, 0, "{}: {err}", path.display());
        n += 1;
    }
    assert!(n >= 4, "expected the four hardware profiles, found {n}");
}

/// Peak RSS (kB) of one run of the fieldgate binary, from the kernel's own accounting.
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which also reports its rusage
fn peak_rss_kb(args: &[&str]) -> i64 {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn fieldgate");
    let mut status = 0;
    // SAFETY: plain libc call on our own child's pid with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4");
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    usage.ru_maxrss
}

#[test]
fn opening_the_journal_does_not_touch_sleds_metrics_memory() {
    // sled 0.34 builds 41 × 512 KiB metrics histograms at open even with metrics off; the
    // `miri_optimizations` feature makes them calloc'd, untouched pages. Debug build: 18.7 MB
    // with it, 40 MB without.
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("journal");
    let data = data.to_str().expect("utf-8 path");
    let kb = peak_rss_kb(&["journal", "stats", "--data", data]);
    eprintln!("journal stats peak RSS: {kb} kB");
    assert!(kb < 30_000, "journal stats peaked at {kb} kB");
}

#[test]
fn empty_or_short_api_keys_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("journal");
    let data = data.to_string_lossy();
    let demo = |key: Option<&str>, env: Option<&str>| {
        let mut c = std::process::Command::new(common::bin());
        c.args(["demo", "--listen", "127.0.0.1:0", "--data", &data]);
        if let Some(k) = key {
            c.args(["--api-key", k]);
        }
        match env {
            Some(v) => c.env("FIELDGATE_API_KEY", v),
            None => c.env_remove("FIELDGATE_API_KEY"),
        };
        let err_file = dir.path().join("demo.err");
        c.stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err_file).expect("stderr file"));
        let mut child = c.spawn().expect("run demo");
        // A demo that accepted the key would run until stopped.
        let status = common::wait_exit(&mut child, std::time::Duration::from_secs(20));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let err = std::fs::read_to_string(&err_file).unwrap_or_default();
        (status.and_then(|s| s.code()), err)
    };
    for (key, env) in [
        (Some(""), None),
        (Some("short"), None),
        (Some("has spaces in the key"), None),
        (None, Some("")),
        (None, Some("fg_123")),
    ] {
        let (code, err) = demo(key, env);
        assert!(code.is_some_and(|c| c != 0), "{key:?}/{env:?} accepted");
        assert!(err.contains("API key refused"), "{key:?}/{env:?}: {err}");
    }
    let (code, _, err) = run_cli(&["tail", "--key", "", "--count", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("empty"), "{err}");
}

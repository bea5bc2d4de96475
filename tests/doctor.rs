//! `fieldgate doctor` against real parts, each in a good and a broken state: a pty with a
//! live NMEA talker, a silent one and a missing path; the ELM327-emulator and a pty that
//! answers nothing; mosquitto up, down and with wrong credentials; the Mongo-wire server up
//! and down; a journal directory owned by another user; a nearly full disk; and a running
//! gateway holding its port, journal and listen address.

mod common;

use common::mongo::{block, unique_db, MongoServer};
use common::mqtt::Mosquitto;
use common::serial::{Device, Emulator};
use common::{chown, free_port, Gateway};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A config in `dir` with a journal in `dir/journal`, a free listen port and `extra`.
fn config(dir: &Path, extra: &str) -> PathBuf {
    config_with_journal(dir, &dir.join("journal"), "16MiB", extra)
}

fn config_with_journal(dir: &Path, journal: &Path, max_bytes: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("doctor-{}.toml", fieldgate::frame::now_ms()));
    let text = format!(
        "[gateway]\nid = \"van-07\"\n[journal]\npath = \"{}\"\nmax_bytes = \"{max_bytes}\"\n\
         [listen]\naddress = \"127.0.0.1:{}\"\n{extra}",
        journal.display(),
        free_port()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// `fieldgate doctor --json --config CFG ARGS...`: exit code and the report.
fn doctor(cfg: &Path, args: &[&str]) -> (i32, Value) {
    let out = Command::new(common::bin())
        .args(["doctor", "--json", "--config"])
        .arg(cfg)
        .args(args)
        .env_remove("FIELDGATE_API_KEY")
        .output()
        .expect("run doctor");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// The check of `part` in a report.
fn part<'a>(report: &'a Value, part: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["part"] == part))
        .unwrap_or_else(|| panic!("no {part} in {report:#}"))
}

/// Asserts `part`'s verdict and that its detail contains `text`.
fn assert_part(report: &Value, name: &str, verdict: &str, text: &str) {
    let c = part(report, name);
    assert_eq!(c["verdict"], verdict, "{name}: {c:#}");
    let detail = c["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(text), "{name}: want {text:?} in {detail:?}");
    if verdict != "ok" {
        assert!(c["fix"].is_string(), "{name} says how to fix it: {c:#}");
    }
}

/// A GPS on a pty: RMC/GGA/VTG with the current time and a fix, every 100 ms.
struct Talker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Device>>,
}

impl Talker {
    fn start(mut dev: Device) -> Talker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut vehicle = fieldgate::source::sim::Vehicle::new(7);
            while !flag.load(Ordering::Relaxed) {
                let s = vehicle.step(0.1);
                let text =
                    fieldgate::source::sim_devices::nmea_sentences(&s, fieldgate::frame::now_ms());
                dev.write(text.as_bytes());
                std::thread::sleep(Duration::from_millis(100));
            }
            dev
        });
        Talker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Talker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn gps(link: &Path) -> String {
    format!(
        "[[sources.serial]]\nname = \"gps\"\npath = \"{}\"\nbaud = 9600\nframing = \"nmea\"\ndevice = \"gps0\"\n",
        link.display()
    )
}

#[test]
fn nmea_port_live_silent_missing_and_unplugged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("dev/gps");
    let cfg = config(dir.path(), &gps(&link));

    // Live talker: every part passes, the clock is judged against GNSS time. `--user`
    // alone judges permissions for the user running the test.
    let talker = Talker::start(Device::plug(&link));
    let (code, r) = doctor(&cfg, &["--user"]);
    assert_part(&r, "serial:gps", "ok", "speaks NMEA with good checksums");
    assert_part(&r, "clock", "ok", "GNSS time");
    assert_eq!((code, &r["ok"]), (0, &Value::Bool(true)), "{r:#}");
    drop(talker);

    // A silent pty (the device is there, nothing talks).
    let _silent = Device::plug(&link);
    let (code, r) = doctor(&cfg, &["--user", "--only", "serial"]);
    assert_part(&r, "serial:gps", "fail", "is silent");
    assert_eq!(code, 1);

    // Unplugged: the link dangles (a manual link to a device that is gone).
    drop(_silent);
    fieldgate::source::sim_devices::publish_link(&link, &dir.path().join("dev/ttyUSB9"))
        .expect("relink");
    let (code, r) = doctor(&cfg, &["--user", "--only", "serial"]);
    assert_part(&r, "serial:gps", "fail", "which is gone");
    assert_eq!(code, 1);

    // Never there.
    std::fs::remove_file(&link).expect("remove link");
    let (code, r) = doctor(&cfg, &["--user", "--only", "serial"]);
    assert_part(&r, "serial:gps", "fail", "does not exist");
    assert_eq!(code, 1);
}

#[test]
fn obd_port_emulator_answers_atz_and_a_mute_pty_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let elm = Emulator::start(dir.path());
    let obd = |path: &Path| {
        format!(
            "[[sources.obd]]\nname = \"obd\"\npath = \"{}\"\nbaud = 38400\n",
            path.display()
        )
    };
    let cfg = config(dir.path(), &obd(&elm.pty));
    let (code, r) = doctor(&cfg, &["--user", "--only", "obd"]);
    assert_part(&r, "obd:obd", "ok", "answers ATZ: ELM327");
    assert_eq!(code, 0, "{r:#}");

    let mute = Device::plug(&dir.path().join("mute"));
    let cfg = config(dir.path(), &obd(&mute.link));
    let (code, r) = doctor(&cfg, &["--user", "--only", "obd"]);
    assert_part(&r, "obd:obd", "fail", "no answer to ATZ");
    assert_eq!(code, 1);
}

#[test]
fn mqtt_broker_up_wrong_credentials_and_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("passwd");
    let st = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&pw)
        .args(["gw", "s3cret"])
        .status()
        .expect("mosquitto_passwd (package mosquitto)");
    assert!(st.success());
    let mut broker =
        Mosquitto::start_with(dir.path(), 20, &format!("password_file {}\n", pw.display()));
    let mqtt = |password: &str| {
        format!(
            "[[sources.mqtt]]\nname = \"broker\"\nurl = \"{}\"\nclient_id = \"fg-van-07\"\n\
             username = \"gw\"\npassword = \"{password}\"\n\
             subscriptions = [{{ topic = \"fleet/{{vehicle}}/{{device}}/{{kind}}\", qos = 1 }}]\n",
            broker.url()
        )
    };
    let good = config(dir.path(), &mqtt("s3cret"));
    let (code, r) = doctor(&good, &["--user", "--only", "mqtt"]);
    assert_part(
        &r,
        "mqtt:broker",
        "ok",
        "connected as gw, 1 subscription(s) granted (fleet/+/+/+)",
    );
    assert_eq!(code, 0, "{r:#}");

    let wrong = config(dir.path(), &mqtt("guess"));
    let (code, r) = doctor(&wrong, &["--user", "--only", "mqtt"]);
    assert_part(&r, "mqtt:broker", "fail", "refused the credentials");
    assert_eq!(code, 1);

    broker.stop();
    let (code, r) = doctor(&good, &["--user", "--only", "mqtt"]);
    assert_part(&r, "mqtt:broker", "fail", "unreachable");
    assert_eq!(code, 1);
}

#[test]
fn mongo_up_with_and_without_indexes_and_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = MongoServer::start();
    let db = unique_db("doctor");
    let cfg = config(
        dir.path(),
        &format!(
            "[mongo]\nuri = \"{}\"\ndatabase = \"{db}\"\nwrite_concern = \"1\"\n",
            server.uri()
        ),
    );
    let (code, r) = doctor(&cfg, &["--user", "--only", "mongo"]);
    assert_part(&r, "mongo", "ok", "acknowledged with w: 1, j: true");
    assert_part(&r, "mongo indexes", "warn", "no frames collection yet");
    assert_eq!(code, 0, "{r:#}");
    // The scratch collection is gone again.
    let names = block(async {
        server
            .client()
            .await
            .database(&db)
            .list_collection_names()
            .await
            .expect("collections")
    });
    assert!(
        names.iter().all(|n| !n.starts_with("doctor_scratch")),
        "{names:?}"
    );

    // Two of the three indexes: the third is named as missing.
    block(async {
        let coll = server
            .client()
            .await
            .database(&db)
            .collection::<bson::Document>("frames");
        for keys in [
            bson::doc! {"device": 1, "ts": -1},
            bson::doc! {"vehicle": 1, "ts": -1},
        ] {
            coll.create_index(mongodb::IndexModel::builder().keys(keys).build())
                .await
                .expect("create index");
        }
    });
    let (code, r) = doctor(&cfg, &["--user", "--only", "mongo"]);
    assert_part(
        &r,
        "mongo indexes",
        "fail",
        "lacks the index(es) { \"gateway\": 1, \"seq\": 1 }",
    );
    assert_eq!(code, 1);
    block(async {
        server
            .client()
            .await
            .database(&db)
            .collection::<bson::Document>("frames")
            .create_index(
                mongodb::IndexModel::builder()
                    .keys(bson::doc! {"gateway": 1, "seq": 1})
                    .build(),
            )
            .await
            .expect("create index");
    });
    let (code, r) = doctor(&cfg, &["--user", "--only", "mongo"]);
    assert_part(&r, "mongo indexes", "ok", "the 3 query indexes");
    assert_eq!(code, 0, "{r:#}");

    server.stop();
    let (code, r) = doctor(&cfg, &["--user", "--only", "mongo"]);
    assert_part(&r, "mongo", "fail", "unreachable");
    assert_eq!(code, 1);
}

#[test]
fn journal_owned_by_another_user() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test changes file owners: run the tests as root (scripts/test does in CI)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("journal");
    std::fs::create_dir(&journal).expect("mkdir");
    std::fs::write(journal.join("db"), b"").expect("db file");
    let cfg = config_with_journal(dir.path(), &journal, "16MiB", "");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    chown(&journal, "nobody");
    std::fs::set_permissions(
        &journal,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");

    // For its owner: fine.
    let (code, r) = doctor(&cfg, &["--user", "nobody", "--only", "journal"]);
    assert_part(&r, "journal", "ok", "owned by nobody");
    assert_eq!(code, 0, "{r:#}");

    // For another user (as if the service ran as `daemon`): the fix hands it over.
    let (code, r) = doctor(&cfg, &["--user", "daemon", "--only", "journal"]);
    assert_part(&r, "journal", "fail", "daemon cannot write");
    assert!(part(&r, "journal")["fix"]
        .as_str()
        .is_some_and(|f| f.starts_with("sudo chown -R daemon: ")));
    assert_eq!(code, 1);

    // A file inside that its owner cannot write (left by a command run as root).
    std::fs::write(journal.join("snap.0000000000000042"), b"x").expect("root file");
    let (code, r) = doctor(&cfg, &["--user", "nobody", "--only", "journal"]);
    assert_part(
        &r,
        "journal",
        "fail",
        "1 of the journal's files cannot be written by nobody",
    );
    assert_eq!(code, 1);
}

/// A size-capped tmpfs at a temporary mount point, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "fieldgate-test",
            ])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(st.success(), "mount a tmpfs (the tests run as root)");
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_nearly_full_disk_fails_the_journal_disk_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SmallDisk::mount("4m");
    let journal = disk.path().join("journal");

    let fits = config_with_journal(dir.path(), &journal, "2MiB", "");
    let (code, r) = doctor(&fits, &["--user", "--only", "journal disk"]);
    assert_part(
        &r,
        "journal disk",
        "ok",
        "may grow to journal.max_bytes = 2.0 MiB",
    );
    assert_eq!(code, 0, "{r:#}");

    let too_big = config_with_journal(dir.path(), &journal, "64MiB", "");
    let (code, r) = doctor(&too_big, &["--user", "--only", "journal disk"]);
    assert_part(&r, "journal disk", "fail", "it does not fit");
    assert_eq!(
        part(&r, "journal disk")["fix"],
        "set journal.max_bytes to at most \"3MiB\", or free space on that disk"
    );
    assert_eq!(code, 1);

    // Fill it: what fit a moment ago no longer does.
    std::fs::write(disk.path().join("fill"), vec![7u8; 3 << 20]).expect("fill the disk");
    let (code, r) = doctor(&fits, &["--user", "--only", "journal disk"]);
    assert_part(&r, "journal disk", "fail", "it does not fit");
    assert_eq!(code, 1);
}

#[test]
fn a_running_gateway_keeps_its_port_journal_and_address_and_says_how_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("dev/gps");
    let _talker = Talker::start(Device::plug(&link));
    let port = free_port();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"van-07\"\n[journal]\npath = \"{}\"\n[listen]\naddress = \"127.0.0.1:{port}\"\n{}",
            dir.path().join("journal").display(),
            gps(&link)
        ),
    )
    .expect("config");
    let cfg_s = cfg.to_string_lossy().to_string();
    let (code, key, err) = common::run_cli(&[
        "keys", "add", "doctor", "--scopes", "read", "--config", &cfg_s,
    ]);
    assert_eq!(code, 0, "{err}");
    let key = key.trim().to_string();
    let gw = Gateway::run(&cfg, port, &key, dir.path());
    gw.status_until(Duration::from_secs(15), |s| {
        s["sources"]["gps"]["frames"].as_u64().unwrap_or(0) > 0
    });
    let pid = gw.child.id();

    let (code, r) = doctor(&cfg, &["--user", "--key", &key]);
    let held = format!("fieldgate (pid {pid})");
    assert_part(
        &r,
        "serial:gps",
        "ok",
        &format!("held by the running gateway, {held}, which reads it: running"),
    );
    assert_part(
        &r,
        "journal lock",
        "ok",
        &format!("held by the running gateway, {held}"),
    );
    assert_part(
        &r,
        "listen",
        "ok",
        &format!("held by the running gateway, {held}, which answers /healthz"),
    );
    // The GPS is the service's: its time comes from the frames the service journaled.
    assert_part(&r, "clock", "ok", "GNSS time");
    assert_eq!(r["service"]["pid"], pid);
    assert_eq!(code, 0, "{r:#}");

    // Without a key the service's own view is unknown: a warning, not a failure.
    let (code, r) = doctor(&cfg, &["--user", "--only", "serial"]);
    assert_part(&r, "serial:gps", "warn", "its own view is unknown");
    assert_eq!(code, 0, "{r:#}");
    // The gateway kept reading through all of it.
    let before = gw.get("/api/status").1["sources"]["gps"]["frames"]
        .as_u64()
        .unwrap_or(0);
    gw.status_until(Duration::from_secs(10), |s| {
        s["sources"]["gps"]["frames"].as_u64().unwrap_or(0) > before
            && s["sources"]["gps"]["state"] == "running"
    });
    assert!(gw.stop().success());
}

#[test]
fn text_output_has_one_line_per_part_with_the_fix_and_a_bad_config_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("nowhere/gps");
    let cfg = config(dir.path(), &gps(&link));
    let out = Command::new(common::bin())
        .args(["doctor", "--user", "--only", "serial", "--config"])
        .arg(&cfg)
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("fieldgate doctor: "), "{text}");
    assert!(
        lines.iter().any(|l| l.starts_with("ok    config")),
        "{text}"
    );
    let fail = lines
        .iter()
        .position(|l| l.starts_with("FAIL  serial:gps"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        lines[fail + 1]
            .trim_start()
            .starts_with("fix: plug the adapter in"),
        "{text}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("1 of 2 parts failed; 0 warning(s)")
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[gateway]\nid = \"van-07\"\n[journal]\nmax_bytes = \"lots\"\n",
    )
    .expect("write");
    let (code, r) = doctor(&bad, &[]);
    assert_part(
        &r,
        "config",
        "fail",
        "journal.max_bytes: expected a byte size",
    );
    assert_eq!(r["checks"].as_array().map(Vec::len), Some(1));
    assert_eq!(code, 1);
}

#[test]
fn slcan_adapter_answers_v_and_a_mute_pty_does_not() {
    // The gateway's own simulated CAN adapter (a pty-mode simulator with nobody reading
    // its devices) is the SLCAN adapter doctor talks to.
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let links = dir.path().join("sim");
    let gw_cfg = dir.path().join("sim.toml");
    std::fs::write(
        &gw_cfg,
        format!(
            "[gateway]\nid = \"van-07\"\n[journal]\npath = \"{}\"\n[listen]\naddress = \"127.0.0.1:{port}\"\n\
             [[sources.sim]]\nname = \"sim\"\nmode = \"pty\"\ngps_link = \"{l}/gps\"\nobd_link = \"{l}/obd\"\ncan_link = \"{l}/can\"\n",
            dir.path().join("journal").display(),
            l = links.display()
        ),
    )
    .expect("config");
    let gw = Gateway::run(&gw_cfg, port, "unused", dir.path());
    let can = |path: &Path| {
        format!(
            "[[sources.can]]\nname = \"bus\"\ninterface = \"slcan\"\npath = \"{}\"\nbitrate = 500000\n",
            path.display()
        )
    };
    let cfg = config(dir.path(), &can(&links.join("can")));
    let (code, r) = doctor(&cfg, &["--user", "--only", "can"]);
    assert_part(&r, "can:bus", "ok", "answers V: V1013 (SLCAN)");
    assert_eq!(code, 0, "{r:#}");

    let mute = Device::plug(&dir.path().join("mute"));
    let cfg = config(dir.path(), &can(&mute.link));
    let (code, r) = doctor(&cfg, &["--user", "--only", "can"]);
    assert_part(&r, "can:bus", "fail", "no answer to V");
    assert_eq!(code, 1);
    assert!(gw.stop().success());
}

#[test]
fn can_buses_over_tcp_socketcan_and_candump() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = |body: &str| format!("[[sources.can]]\nname = \"bus\"\n{body}");

    // SLCAN over TCP: a listening adapter vs a closed port.
    let adapter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = adapter.local_addr().expect("addr");
    let cfg = config(
        dir.path(),
        &bus(&format!(
            "interface = \"slcan-tcp\"\naddress = \"{addr}\"\n"
        )),
    );
    let (code, r) = doctor(&cfg, &["--user", "--only", "can"]);
    assert_part(&r, "can:bus", "ok", "accepts connections");
    assert_eq!(code, 0, "{r:#}");
    drop(adapter);
    let (code, r) = doctor(&cfg, &["--user", "--only", "can"]);
    assert_part(&r, "can:bus", "fail", &format!("tcp://{addr}"));
    assert_eq!(code, 1);

    // A candump log: present vs missing.
    let log = dir.path().join("bus.log");
    std::fs::write(&log, "(1700000000.000000) can0 123#DEADBEEF\n").expect("log");
    let candump = |p: &Path| {
        bus(&format!(
            "interface = \"candump\"\npath = \"{}\"\n",
            p.display()
        ))
    };
    let cfg = config(dir.path(), &candump(&log));
    let (code, r) = doctor(&cfg, &["--user", "--only", "can"]);
    assert_part(&r, "can:bus", "ok", "to replay");
    assert_eq!(code, 0, "{r:#}");
    let cfg = config(dir.path(), &candump(&dir.path().join("gone.log")));
    let (code, r) = doctor(&cfg, &["--user", "--only", "can"]);
    assert_part(&r, "can:bus", "fail", "gone.log");
    assert_eq!(code, 1);

    // SocketCAN: an interface this box does not have; a kernel without CAN sockets says so.
    let cfg = config(
        dir.path(),
        &bus("interface = \"socketcan\"\nifname = \"fgnone0\"\n"),
    );
    let (code, r) = doctor(&cfg, &["--user", "--only", "can"]);
    // SAFETY: socket(2) with constant arguments; closed right away.
    let fd = unsafe { libc::socket(libc::AF_CAN, libc::SOCK_RAW, libc::CAN_RAW) };
    let no_af_can = fd < 0;
    if fd >= 0 {
        // SAFETY: the descriptor socket(2) just returned.
        unsafe { libc::close(fd) };
    }
    let want = if no_af_can {
        "EAFNOSUPPORT"
    } else {
        "no network interface fgnone0"
    };
    assert_part(&r, "can:bus", "fail", want);
    assert_eq!(code, 1);
}

//! The dashboard in a real browser: runs tests/browser/dashboard.test.mjs (Debian's
//! chromium driven by playwright-core) against the built binary and a real mosquitto.
//! Screenshots land in `target/tmp/browser/`.

mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn dashboard_works_in_chromium_against_the_demo_and_mosquitto() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "tests/browser/node_modules missing: run `npm ci --prefix tests/browser` (scripts/test does)"
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "chromium missing: `apt-get install chromium` (scripts/test does)"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = common::mqtt::Mosquitto::start(tmp.path(), 100);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    let run = Command::new("node")
        .args(["--test", "--test-reporter=spec", "dashboard.test.mjs"])
        .current_dir(&dir)
        .env("FIELDGATE_BIN", env!("CARGO_BIN_EXE_fieldgate"))
        .env("FIELDGATE_TEST_MQTT_PORT", broker.port.to_string())
        .env("FIELDGATE_BROWSER_OUT", &out)
        .output()
        .expect("node must be installed (scripts/test checks)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    // The first-load figure, for the test log.
    for line in text.lines().filter(|l| l.contains("first load:")) {
        println!("{}", line.trim());
    }
    assert!(run.status.success(), "browser test failed:\n{text}");
    assert!(text.contains("pass 1"), "expected 1 passing test:\n{text}");
    assert!(
        out.join("dashboard.png").is_file(),
        "no screenshot in {}",
        out.display()
    );
}

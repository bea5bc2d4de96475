//! Runs the JavaScript client's tests (Node's built-in runner, the `ws` npm package)
//! against the built binary: the seed client must keep working unchanged.

use std::path::Path;
use std::process::Command;

#[test]
fn node_client_tests_pass_against_the_gateway() {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js");
    assert!(
        js.join("node_modules/ws").exists(),
        "clients/js/node_modules missing: run `npm ci --prefix clients/js` (scripts/test does)"
    );
    let out = Command::new("node")
        .args(["--test", "--test-reporter=spec", "test/"])
        .current_dir(&js)
        .env("FIELDGATE_BIN", env!("CARGO_BIN_EXE_fieldgate"))
        .output()
        .expect("node must be installed (scripts/test checks)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "node --test failed:\n{text}");
    assert!(
        text.contains("pass 4"),
        "expected 4 passing node tests:\n{text}"
    );
}

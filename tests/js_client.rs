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
    // The reporter's summary: lines `ℹ tests 3`, `ℹ pass 3`, `ℹ fail 0`, ... Compared as
    // whole numbers, so `pass 30` is not `pass 3`.
    let summary = |key: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let (k, v) = l.trim_start_matches('ℹ').trim().split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
    };
    assert_eq!(
        (summary("tests"), summary("pass"), summary("fail")),
        (Some(4), Some(4), Some(0)),
        "expected the 4 node tests to pass:\n{text}"
    );
}

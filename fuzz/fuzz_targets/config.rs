//! The config file: `Config::parse` (TOML, serde with `deny_unknown_fields`, then
//! `validate`), as `fieldgate run` and `check-config` read it.
//!
//! Input: the file's text (`Config::load` reads it with `read_to_string`: UTF-8 only).
#![no_main]

use fieldgate::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(mut cfg) => {
            // A parsed config is valid, and stays valid with no environment overrides.
            cfg.validate().expect("parse validated it");
            cfg.apply_env(|_| None).expect("no overrides, still valid");
        }
        Err(e) => {
            // The message names the key or the syntax error; it is never empty.
            assert!(!e.to_string().is_empty());
        }
    }
});

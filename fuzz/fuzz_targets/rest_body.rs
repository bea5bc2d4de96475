//! REST bodies: `POST`/`PUT /api/devices` and `/api/vehicles`, through the handlers' own
//! `api::parse_body` and `Record::validate`, and the registry record they store.
//!
//! Input: one selector byte (device or vehicle; PUT takes the id from the path), then the
//! body (at most `BODY_LIMIT` bytes, as the server reads it).
#![no_main]

use fieldgate::api::{parse_body, BODY_LIMIT};
use fieldgate::fuzz_api::{Device, Record, Vehicle};
use fieldgate_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn check<R: Record>(body: &[u8], put: bool) {
    let Ok(mut record) = parse_body::<R>(body) else {
        return;
    };
    // A body the API accepts is one JSON document, nothing before or after it.
    if let Err(e) = serde_json::from_slice::<Value>(body) {
        panic!("accepted a body that is not one JSON document ({e})");
    }
    if put && record.id().is_empty() {
        record.set_id("from-path".into());
    }
    if record.validate().is_err() {
        return;
    }
    assert!(fieldgate::config::valid_id(record.id()));
    // What is stored reads back the same (the list handler parses it again).
    let stored = serde_json::to_vec(&record).expect("records serialize");
    let back: R = serde_json::from_slice(&stored).expect("a stored record parses");
    assert_eq!(
        serde_json::to_value(&back).expect("serialize"),
        serde_json::to_value(&record).expect("serialize")
    );
    assert!(back.validate().is_ok());
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let sel = input.byte();
    let body = input.rest();
    if body.len() > BODY_LIMIT {
        return;
    }
    if sel & 1 == 0 {
        check::<Device>(body, sel & 2 != 0);
    } else {
        check::<Vehicle>(body, sel & 2 != 0);
    }
});

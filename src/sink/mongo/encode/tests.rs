use super::*;
use serde_json::json;

fn frame(payload: Value) -> Frame {
    let mut f = Frame::new("van-07", "sim", "gps0", "gps", payload);
    f.seq = 42;
    f.ts_ms = 1_700_000_000_123;
    f.vehicle = Some("van-07".into());
    f.device_ts_ms = Some(1_700_000_000_000);
    f
}

fn doc(e: &Encoded) -> bson::Document {
    e.doc.to_document().expect("valid BSON")
}

#[test]
fn plain_frames_keep_the_document_form() {
    let e = encode(&frame(json!({"lat": 52.5, "n": 7, "neg": -3, "ok": true})));
    assert_eq!(e.special, None);
    let d = doc(&e);
    assert_eq!(d.get_str("_id").expect("_id"), "van-07:42");
    assert_eq!(d.get_i64("seq").expect("seq"), 42);
    assert_eq!(d.get_str("vehicle").expect("vehicle"), "van-07");
    assert_eq!(
        d.get_datetime("ts").expect("ts").timestamp_millis(),
        1_700_000_000_123
    );
    assert!(d.get_datetime("device_ts").is_ok());
    assert_eq!(d.get_i64("h").expect("h"), e.hash);
    let p = d.get_document("payload").expect("payload");
    assert_eq!(p.get_f64("lat").expect("lat"), 52.5);
    assert_eq!(
        p.get_i64("n").expect("n"),
        7,
        "integers are Int64 as before"
    );
    assert_eq!(p.get_i64("neg").expect("neg"), -3);
    assert!(p.get_bool("ok").expect("ok"));
    assert!(d.get("payload_json").is_none() && d.get("encode_error").is_none());
}

#[test]
fn integers_beyond_i64_are_exact_decimal128() {
    let e = encode(&frame(
        json!({"odo": u64::MAX, "small": 1, "deep": [{"x": 9_223_372_036_854_775_808u64}]}),
    ));
    assert_eq!(e.special, Some(Special::BigInteger));
    let p = doc(&e).get_document("payload").expect("payload").clone();
    match p.get("odo") {
        Some(Bson::Decimal128(d)) => assert_eq!(d.to_string(), "18446744073709551615"),
        other => panic!("odo: {other:?}"),
    }
    assert_eq!(p.get_i64("small").expect("small"), 1);
    let deep = p.get_array("deep").expect("deep")[0]
        .as_document()
        .expect("doc")
        .get("x")
        .cloned();
    assert_eq!(
        deep.map(|b| b.to_string()),
        Some("9223372036854775808".into())
    );
}

#[test]
fn a_nul_in_a_key_falls_back_to_the_exact_json() {
    let payload = json!({"ok": 1, "nested": {"a\u{0}b": [1, 2]}, "big": u64::MAX});
    let e = encode(&frame(payload.clone()));
    assert_eq!(e.special, Some(Special::NulInKey));
    let d = doc(&e);
    assert!(d.get("payload").is_none());
    assert_eq!(
        d.get_str("payload_json").expect("payload_json"),
        payload.to_string()
    );
    assert!(d
        .get_str("encode_error")
        .expect("encode_error")
        .starts_with("nul_in_key"));
    assert_eq!(d.get_str("_id").expect("envelope kept"), "van-07:42");
    assert_eq!(d.get_i64("h").expect("h"), e.hash);
}

#[test]
fn documents_above_16_mib_fall_back_or_say_what_was_omitted() {
    // ~2 MiB of JSON zeros: 1.1M array elements, ~18 MiB as BSON.
    let big = Value::Array(vec![json!(0); 1_100_000]);
    let e = encode(&frame(json!({ "a": big })));
    assert_eq!(e.special, Some(Special::TooLarge));
    assert!(e.doc.as_bytes().len() <= MAX_DOCUMENT);
    let d = doc(&e);
    let text = d.get_str("payload_json").expect("payload_json");
    assert_eq!(text.len(), json!({ "a": big }).to_string().len());
    assert!(d
        .get_str("encode_error")
        .expect("why")
        .starts_with("too_large"));

    // Even the JSON text is over the limit: the envelope says how much was left out.
    let huge = "x".repeat(MAX_DOCUMENT + 10);
    let e = encode(&frame(json!({ "s": huge })));
    assert_eq!(e.special, Some(Special::TooLarge));
    let d = doc(&e);
    assert!(d.get("payload_json").is_none());
    assert_eq!(
        d.get_i64("payload_omitted_bytes").expect("omitted"),
        (MAX_DOCUMENT + 10 + 8) as i64
    );
}

#[test]
fn dollar_and_dotted_keys_go_in_as_is() {
    let e = encode(&frame(json!({"$set": 1, "a.b": {"$ref": "x"}})));
    assert_eq!(e.special, None);
    let p = doc(&e).get_document("payload").expect("payload").clone();
    assert_eq!(p.get_i64("$set").expect("$set"), 1);
    assert!(p.get_document("a.b").is_ok());
}

#[test]
fn refused_documents_use_the_fallback_with_the_servers_reason() {
    let payload = json!({"forbidden": true});
    let e = fallback(&frame(payload.clone()), "Document failed validation (121)");
    assert_eq!(e.special, Some(Special::Refused));
    let d = doc(&e);
    assert_eq!(
        d.get_str("payload_json").expect("json"),
        payload.to_string()
    );
    assert_eq!(
        d.get_str("encode_error").expect("why"),
        "refused: Document failed validation (121)"
    );
}

#[test]
fn the_content_hash_is_pinned_and_sees_every_field() {
    let f = frame(json!({"lat": 52.5, "lon": 13.4}));
    // Stored in MongoDB by every build: it must never change for the same frame (the same
    // value as the Python recipe in docs/mongodb.md).
    assert_eq!(content_hash(&f), 0xd566_250d_683e_32b6_u64 as i64);
    let variants: [fn(&mut Frame); 10] = [
        |f| f.seq += 1,
        |f| f.gateway.push('x'),
        |f| f.source.push('x'),
        |f| f.device.push('x'),
        |f| f.vehicle = None,
        |f| f.kind.push('x'),
        |f| f.ts_ms += 1,
        |f| f.device_ts_ms = None,
        |f| f.payload["lat"] = json!(52.6),
        // Field boundaries count: moving a byte from one field to the next is a change.
        |f| {
            f.source = "si".into();
            f.device = "mgps0".into();
        },
    ];
    for (i, change) in variants.iter().enumerate() {
        let mut g = f.clone();
        change(&mut g);
        assert_ne!(content_hash(&g), content_hash(&f), "variant {i}");
    }
}

use super::*;

/// Intel, Motorola, signed, float, enum, multiplexed and extended-multiplexed signals.
pub const SAMPLE: &str = r#"VERSION ""

NS_ :
	SIG_VALTYPE_
	SG_MUL_VAL_

BS_:

BU_: ECU GW

BO_ 100 Engine: 8 ECU
 SG_ Rpm : 0|16@1+ (0.25,0) [0|16000] "rpm" GW
 SG_ Temp : 23|8@0- (0.5,-10) [-50|50] "degC" GW
 SG_ Mode : 32|3@1+ (1,0) [0|7] "" GW

BO_ 2566844672 J1939Thing: 8 ECU
 SG_ Level : 56|8@1+ (0.4,0) [0|100] "%" GW

BO_ 200 Mux: 8 ECU
 SG_ Page M : 0|8@1+ (1,0) [0|255] "" GW
 SG_ A m1 : 8|16@1+ (1,0) [0|0] "" GW
 SG_ B m2 : 8|16@1- (1,0) [0|0] "" GW
 SG_ Sub m3M : 8|4@1+ (1,0) [0|15] "" GW
 SG_ Deep m5 : 16|8@1+ (1,0) [0|0] "" GW

BO_ 300 Floats: 8 ECU
 SG_ F32 : 0|32@1- (1,0) [0|0] "" GW
 SG_ Scaled : 39|16@0+ (0.01,0) [0|100] "V" GW

BO_ 3221225472 VECTOR__INDEPENDENT_SIG_MSG: 0 Vector__XXX
 SG_ Orphan : 0|8@1+ (1,0) [0|0] "" Vector__XXX

VAL_ 100 Mode 0 "Off" 1 "Idle" 2 "Run" -1 "Never" ;
SIG_VALTYPE_ 300 F32 : 1;
SG_MUL_VAL_ 200 Deep Sub 5-5, 7-9;
SG_MUL_VAL_ 200 Sub Page 3-3;
"#;

fn decode(db: &Database, key: u32, data: &[u8]) -> Vec<(String, Reading)> {
    let m = &db.messages[db.find(key).expect("message")];
    let (mut raws, mut out, mut oor) = (Vec::new(), Vec::new(), Vec::new());
    m.decode(data, &mut raws, &mut out, &mut oor);
    out.into_iter()
        .map(|(i, r)| (m.signals[i].name.clone(), r))
        .collect()
}

fn sample() -> Database {
    let mut db = Database::default();
    db.add("sample.dbc", SAMPLE).expect("parses");
    db
}

#[test]
fn signals_of_every_kind_decode() {
    let db = sample();
    assert_eq!(
        db.messages.len(),
        4,
        "the independent-signals placeholder is skipped"
    );
    // Rpm 0x145F / 4; Temp Motorola MSB bit 23 = byte 2: 0xEC = -20 → -20 * 0.5 - 10 = -20.
    let got = decode(&db, 100, &[0x5F, 0x14, 0xEC, 0, 0x02, 0, 0, 0]);
    assert_eq!(
        got,
        [
            ("Rpm".into(), Reading::Num(1303.75)),
            ("Temp".into(), Reading::Num(-20.0)),
            ("Mode".into(), Reading::Name("Run".into(), 2)),
        ]
    );
    // A raw value without a name stays a number.
    assert_eq!(
        decode(&db, 100, &[0, 0, 0, 0, 5, 0, 0, 0])[2].1,
        Reading::Num(5.0)
    );
    let f = decode(&db, 300, &[0, 0, 0xC0, 0x3F, 0x01, 0x02, 0, 0]);
    assert_eq!(
        f,
        [
            ("F32".into(), Reading::Num(1.5)),
            ("Scaled".into(), Reading::Num(2.58))
        ]
    );
    // Extended id (bit 31 set in the DBC).
    assert_eq!(
        decode(&db, 2566844672, &[0, 0, 0, 0, 0, 0, 0, 250]),
        [("Level".into(), Reading::Num(100.0))]
    );
}

#[test]
fn multiplexed_signals_follow_their_switch() {
    let db = sample();
    let names = |data: &[u8]| -> Vec<String> {
        decode(&db, 200, data).into_iter().map(|(n, _)| n).collect()
    };
    assert_eq!(names(&[1, 0x34, 0x12, 0, 0, 0, 0, 0]), ["Page", "A"]);
    assert_eq!(
        decode(&db, 200, &[2, 0xFF, 0xFF, 0, 0, 0, 0, 0])[1],
        ("B".into(), Reading::Num(-1.0))
    );
    // Page 3 selects Sub, and Sub 5 or 7-9 selects Deep.
    assert_eq!(
        names(&[3, 0x05, 0x42, 0, 0, 0, 0, 0]),
        ["Page", "Sub", "Deep"]
    );
    assert_eq!(
        names(&[3, 0x08, 0x42, 0, 0, 0, 0, 0]),
        ["Page", "Sub", "Deep"]
    );
    assert_eq!(names(&[3, 0x06, 0x42, 0, 0, 0, 0, 0]), ["Page", "Sub"]);
    assert_eq!(names(&[9, 0, 0, 0, 0, 0, 0, 0]), ["Page"]);
}

#[test]
fn short_frames_and_ranges() {
    let db = sample();
    let m = &db.messages[db.find(100).expect("Engine")];
    let (mut raws, mut out, mut oor) = (Vec::new(), Vec::new(), Vec::new());
    // Only Rpm fits in two bytes.
    m.decode(&[0x10, 0x00], &mut raws, &mut out, &mut oor);
    assert_eq!(out.len(), 1);
    // Temp 0x7F → 53.5 °C is above the declared 50.
    out.clear();
    m.decode(&[0, 0, 0x7F, 0, 0, 0, 0, 0], &mut raws, &mut out, &mut oor);
    assert_eq!(oor, [1]);
}

#[test]
fn encode_is_the_inverse() {
    let db = sample();
    let m = &db.messages[db.find(100).expect("Engine")];
    let data = m.encode(8, &[("Rpm", 1303.75), ("Temp", -20.0), ("Mode", 2.0)]);
    assert_eq!(data, [0x5F, 0x14, 0xEC, 0, 0x02, 0, 0, 0]);
}

#[test]
fn errors_name_the_file_and_line() {
    let mut db = Database::default();
    let text = "VERSION \"\"\n\nBU_: A\n\nBO_ 100 M: 8 A\n SG_ X : 0|8@1+ (1,0) [0|1] \"\" A\n SG_ Y : zero|8@1+ (1,0) [0|1] \"\" A\n";
    let e = db.add("bad.dbc", text).expect_err("syntax error");
    assert!(matches!(e, DbcError::Syntax { line: 7, .. }), "{e:?}");
    assert!(e.to_string().starts_with("bad.dbc:7:"), "{e}");
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("none.dbc");
    let e = Database::load(&[&missing], &[]).expect_err("missing");
    assert!(e.to_string().contains("none.dbc"), "{e}");
}

#[test]
fn windows_1252_files_and_later_files_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cp1252.dbc");
    let mut bytes = SAMPLE.replace("\"degC\"", "\"\u{fffd}C\"").into_bytes();
    // The degree sign as Windows-1252 writes it (one byte, not UTF-8).
    let at = bytes
        .windows(3)
        .position(|w| w == "\u{fffd}".as_bytes())
        .expect("marker");
    bytes.splice(at..at + 3, [0xB0]);
    std::fs::write(&path, bytes).expect("write");
    let db = Database::load(&[&path], &[("again", SAMPLE)]).expect("loads");
    assert_eq!(db.messages.len(), 4);
    assert_eq!(db.warnings.len(), 4, "{:?}", db.warnings);
    let mut cp = Database::default();
    cp.add("x", &read(&path).expect("read")).expect("parse");
    let engine = &cp.messages[cp.find(100).expect("Engine")];
    assert_eq!(engine.signals[1].unit, "°C");
}

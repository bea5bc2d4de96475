use super::*;
use crate::source::can::dbc::tests::SAMPLE;

fn ingest(extra: &str) -> Ingest {
    let cfg: CanConfig = toml::from_str(&format!(
        "name = \"bus\"\ninterface = \"candump\"\npath = \"/dev/null\"\nvehicle = \"truck-1\"\n{extra}"
    ))
    .expect("config");
    let mut db = Database::default();
    db.add("sample.dbc", SAMPLE).expect("dbc");
    Ingest::new(&cfg, "gw", db)
}

fn push(i: &mut Ingest, id: u32, ext: bool, data: &[u8], now: i64) -> Vec<Frame> {
    let mut out = Vec::new();
    i.push(
        &CanFrame::new(id, ext, data).expect("frame"),
        Some(now - 5),
        now,
        &mut out,
    );
    out
}

#[test]
fn decoded_messages_become_can_frames() {
    let mut i = ingest("");
    let out = push(
        &mut i,
        100,
        false,
        &[0x5F, 0x14, 0xEC, 0, 0x02, 0, 0, 0],
        1000,
    );
    assert_eq!(out.len(), 1);
    let f = &out[0];
    assert_eq!(
        (f.kind.as_str(), f.source.as_str(), f.device.as_str()),
        ("can", "can:bus", "bus")
    );
    assert_eq!(
        (f.vehicle.as_deref(), f.device_ts_ms),
        (Some("truck-1"), Some(995))
    );
    assert_eq!(
        f.payload,
        json!({"message": "Engine", "id": 100, "signals": {"Rpm": 1303.75, "Temp": -20.0, "Mode": "Run"},
               "units": {"Rpm": "rpm", "Temp": "degC"}})
    );
    // Temp 0x7F → 53.5 is out of its declared range: reported and counted.
    push(&mut i, 100, false, &[0, 0, 0x7F, 0, 0, 0, 0, 0], 1001);
    assert_eq!(i.issues.len(), 1, "{:?}", i.issues);
    assert_eq!(i.issues[0].0, "out_of_range");
}

#[test]
fn unknown_ids_are_counted_and_raw_capture_keeps_everything() {
    let mut i = ingest("");
    for n in 0..5u32 {
        assert!(push(&mut i, 0x7F0 + (n % 2), false, &[1], 0).is_empty());
    }
    let s = i.status();
    assert_eq!(s["unknown_frames"], 5);
    assert_eq!(
        s["unknown_ids"],
        json!([{"id": "0x7F0", "frames": 3}, {"id": "0x7F1", "frames": 2}])
    );
    let mut raw = ingest("raw = true");
    let out = push(&mut raw, 0x7F0, false, &[0xAB, 0x01], 0);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].payload,
        json!({"id": 0x7F0, "ext": false, "dlc": 2, "data_hex": "AB01"})
    );
    assert_eq!(
        push(&mut raw, 100, false, &[0; 8], 0).len(),
        2,
        "raw and decoded"
    );
}

#[test]
fn rules_hold_back_signals_and_whole_messages() {
    let mut i = ingest("rules = [{ signal = \"Engine.*\", min_period_ms = 1000 }]");
    let data = [0x5F, 0x14, 0xEC, 0, 0x02, 0, 0, 0];
    assert_eq!(push(&mut i, 100, false, &data, 0).len(), 1);
    assert!(push(&mut i, 100, false, &data, 500).is_empty());
    assert_eq!(push(&mut i, 100, false, &data, 1000).len(), 1);
    assert_eq!(i.status()["held_by_rules"], 3);
}

/// A candump-style J1939 bus: FMS without a DBC, PGN matching of a DBC message from
/// another source address, DM1 by BAM, and the VIN.
#[test]
fn j1939_fms_pgn_matching_dm1_and_vin() {
    let mut i = ingest("j1939 = true");
    // EEC1 from SA 0x00: 1350 rpm (FMS table).
    let out = push(
        &mut i,
        0x0CF0_0400,
        true,
        &[0xFF, 0xFF, 0x91, 0x30, 0x2A, 0xFF, 0xFF, 0xFF],
        0,
    );
    assert_eq!(
        out[0].payload,
        json!({"message": "EEC1", "id": 0x0CF0_0400u32, "pgn": 61444, "sa": 0,
               "signals": {"ActualEnginePercentTorque": 20, "EngineSpeed": 1350.0},
               "units": {"ActualEnginePercentTorque": "%", "EngineSpeed": "rpm"}})
    );
    // The DBC's J1939Thing is 0x18FEF100 (PGN 65265 from SA 0); from SA 0x17 at priority 3
    // it still matches by PGN, and 0xFF (not available) is omitted.
    let out = push(&mut i, 0x0CFE_F117, true, &[0, 0, 0, 0, 0, 0, 0, 125], 0);
    assert_eq!(out[0].payload["message"], "J1939Thing");
    assert_eq!(out[0].payload["signals"], json!({"Level": 50.0}));
    assert!(push(&mut i, 0x0CFE_F117, true, &[0, 0, 0, 0, 0, 0, 0, 0xFF], 0).is_empty());
    // DM1 with two codes by BAM from SA 0x00: 2 + 8 bytes = 10 bytes, 2 packets.
    let dm1 = [0x40, 0xFF, 110, 0, 0, 3, 0x64, 0x00, 0x03, 0x01];
    assert!(push(
        &mut i,
        0x1CEC_FF00,
        true,
        &[32, 10, 0, 2, 0xFF, 0xCA, 0xFE, 0x00],
        0
    )
    .is_empty());
    assert!(push(
        &mut i,
        0x1CEB_FF00,
        true,
        &[1, dm1[0], dm1[1], dm1[2], dm1[3], dm1[4], dm1[5], dm1[6]],
        0
    )
    .is_empty());
    let out = push(
        &mut i,
        0x1CEB_FF00,
        true,
        &[2, dm1[7], dm1[8], dm1[9], 0xFF, 0xFF, 0xFF, 0xFF],
        0,
    );
    assert_eq!(out[0].kind, "dtc");
    assert_eq!(
        out[0].payload["codes"],
        json!(["SPN 110 FMI 0", "SPN 100 FMI 3"])
    );
    // The same DM1 a second later is not journaled again; a changed one is.
    assert!(
        push(
            &mut i,
            0x18FE_CA00,
            true,
            &[0x40, 0xFF, 110, 0, 0, 3, 0xFF, 0xFF],
            1000
        )
        .len()
            == 1
    );
    assert!(push(
        &mut i,
        0x18FE_CA00,
        true,
        &[0x40, 0xFF, 110, 0, 0, 3, 0xFF, 0xFF],
        2000
    )
    .is_empty());
    // A single-frame VI.
    let out = push(&mut i, 0x18FE_EC00, true, b"ABC1234*", 0);
    assert_eq!(
        out[0].payload["signals"]["VehicleIdentificationNumber"],
        "ABC1234"
    );
    // A TP.DT nobody announced is counted.
    push(&mut i, 0x1CEB_FF33, true, &[1, 0, 0, 0, 0, 0, 0, 0], 0);
    assert_eq!(i.issues.last().map(|(r, _)| *r), Some("j1939_tp"));
    assert_eq!(
        i.status()["j1939"],
        json!({"sessions": 0, "reassembled": 1})
    );
}

//! The FMS-Standard parameters, built in: a truck's bus decodes without a DBC.
//!
//! The FMS-Standard (the truck makers' common interface) is a fixed set of J1939 PGNs
//! every modern truck and bus broadcasts: engine speed, wheel-based speed, fuel rate and
//! totals, coolant temperature, engine hours, fuel level, distance, VIN. The table below
//! is J1939-71's layout of those parameters (byte and bit positions as the standard counts
//! them, from 1), compiled into the same [`MessagePlan`]s a DBC becomes, keyed by PGN. Its
//! values follow J1939's conventions: "error" and "not available" codes are omitted.
//! The VIN (PGN 65260, variable length, `*`-terminated ASCII) is read by [`vin`].

use super::dbc::{MessagePlan, Mux, SignalPlan};
use super::decode::{Layout, Order, Scaling, Value};
use std::sync::Arc;

/// Vehicle identification (VI), the VIN.
pub const PGN_VI: u32 = 65260;

/// One parameter: name, SPN, start byte and bit (J1939 counts both from 1), size in bits,
/// factor, offset, unit.
type Param = (&'static str, u32, u8, u8, u8, f64, f64, &'static str);

/// Two-bit switch states.
const SWITCH: &[(i64, &str)] = &[(0, "off"), (1, "on")];

/// (PGN, message, parameters).
const TABLE: &[(u32, &str, &[Param])] = &[
    (
        61444,
        "EEC1",
        &[
            ("ActualEnginePercentTorque", 513, 3, 1, 8, 1.0, -125.0, "%"),
            ("EngineSpeed", 190, 4, 1, 16, 0.125, 0.0, "rpm"),
        ],
    ),
    (
        61443,
        "EEC2",
        &[
            ("AcceleratorPedalPosition1", 91, 2, 1, 8, 0.4, 0.0, "%"),
            (
                "EnginePercentLoadAtCurrentSpeed",
                92,
                3,
                1,
                8,
                1.0,
                0.0,
                "%",
            ),
        ],
    ),
    (
        61445,
        "ETC2",
        &[
            ("TransmissionSelectedGear", 524, 1, 1, 8, 1.0, -125.0, ""),
            ("TransmissionCurrentGear", 523, 4, 1, 8, 1.0, -125.0, ""),
        ],
    ),
    (
        65265,
        "CCVS1",
        &[
            ("ParkingBrakeSwitch", 70, 1, 3, 2, 1.0, 0.0, ""),
            (
                "WheelBasedVehicleSpeed",
                84,
                2,
                1,
                16,
                1.0 / 256.0,
                0.0,
                "km/h",
            ),
            ("CruiseControlActive", 595, 4, 1, 2, 1.0, 0.0, ""),
            ("BrakeSwitch", 597, 4, 5, 2, 1.0, 0.0, ""),
            ("ClutchSwitch", 598, 4, 7, 2, 1.0, 0.0, ""),
        ],
    ),
    (
        65266,
        "LFE1",
        &[
            ("EngineFuelRate", 183, 1, 1, 16, 0.05, 0.0, "L/h"),
            (
                "EngineInstantaneousFuelEconomy",
                184,
                3,
                1,
                16,
                1.0 / 512.0,
                0.0,
                "km/L",
            ),
        ],
    ),
    (
        65262,
        "ET1",
        &[("EngineCoolantTemperature", 110, 1, 1, 8, 1.0, -40.0, "°C")],
    ),
    (
        65253,
        "HOURS",
        &[("EngineTotalHoursOfOperation", 247, 1, 1, 32, 0.05, 0.0, "h")],
    ),
    (65276, "DD1", &[("FuelLevel1", 96, 2, 1, 8, 0.4, 0.0, "%")]),
    (
        64777,
        "HRLFC",
        &[
            (
                "HighResolutionEngineTripFuel",
                5053,
                1,
                1,
                32,
                0.001,
                0.0,
                "L",
            ),
            (
                "HighResolutionEngineTotalFuelUsed",
                5054,
                5,
                1,
                32,
                0.001,
                0.0,
                "L",
            ),
        ],
    ),
    (
        65257,
        "LFC1",
        &[
            ("EngineTripFuel", 182, 1, 1, 32, 0.5, 0.0, "L"),
            ("EngineTotalFuelUsed", 250, 5, 1, 32, 0.5, 0.0, "L"),
        ],
    ),
    (
        65217,
        "VDHR",
        &[
            (
                "HighResolutionTotalVehicleDistance",
                917,
                1,
                1,
                32,
                0.005,
                0.0,
                "km",
            ),
            (
                "HighResolutionTripDistance",
                918,
                5,
                1,
                32,
                0.005,
                0.0,
                "km",
            ),
        ],
    ),
    (
        65132,
        "TCO1",
        &[(
            "TachographVehicleSpeed",
            1624,
            7,
            1,
            16,
            1.0 / 256.0,
            0.0,
            "km/h",
        )],
    ),
    (
        65269,
        "AMB",
        &[(
            "AmbientAirTemperature",
            171,
            4,
            1,
            16,
            0.03125,
            -273.0,
            "°C",
        )],
    ),
    (
        65198,
        "AIR1",
        &[
            (
                "ServiceBrakeCircuit1AirPressure",
                1087,
                3,
                1,
                8,
                8.0,
                0.0,
                "kPa",
            ),
            (
                "ServiceBrakeCircuit2AirPressure",
                1088,
                4,
                1,
                8,
                8.0,
                0.0,
                "kPa",
            ),
        ],
    ),
    (
        65216,
        "SERV",
        &[("ServiceDistance", 914, 2, 1, 16, 5.0, -160_635.0, "km")],
    ),
];

/// The built-in parameters as messages keyed by PGN (not by CAN id), J1939 semantics on.
pub fn table() -> Vec<MessagePlan> {
    TABLE
        .iter()
        .map(|(pgn, name, params)| {
            let signals: Vec<SignalPlan> = params
                .iter()
                .filter_map(|&(signal, _spn, byte, bit, size, factor, offset, unit)| {
                    let start = u64::from(byte - 1) * 8 + u64::from(bit - 1);
                    let names = if size == 2 {
                        SWITCH.iter().map(|(v, n)| (*v, Arc::from(*n))).collect()
                    } else {
                        Box::default()
                    };
                    Some(SignalPlan {
                        name: signal.into(),
                        unit: unit.into(),
                        layout: Layout::new(start, u64::from(size), Order::Intel)?,
                        value: Value::Unsigned,
                        scaling: Scaling::new(factor, offset),
                        range: None,
                        names,
                        mux: Mux::Always,
                    })
                })
                .collect();
            MessagePlan {
                name: (*name).into(),
                key: *pgn,
                order: (0..signals.len()).collect(),
                signals,
                j1939: true,
            }
        })
        .collect()
}

/// The SPN of a built-in parameter, for documentation and tests.
pub fn spn(signal: &str) -> Option<u32> {
    TABLE
        .iter()
        .flat_map(|(_, _, params)| params.iter())
        .find(|p| p.0 == signal)
        .map(|p| p.1)
}

/// The VIN in a VI message: printable ASCII up to the `*` delimiter, 1–32 characters.
pub fn vin(data: &[u8]) -> Option<String> {
    let end = data.iter().position(|&b| b == b'*').unwrap_or(data.len());
    let text = data.get(..end)?;
    let text = std::str::from_utf8(text)
        .ok()?
        .trim_matches(|c: char| c == ' ' || c == '\0');
    let ok = (1..=32).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::can::dbc::Reading;

    fn decode(pgn: u32, data: &[u8]) -> Vec<(String, Reading)> {
        let t = table();
        let m = t.iter().find(|m| m.key == pgn).expect("pgn in table");
        let (mut raws, mut out, mut oor) = (Vec::new(), Vec::new(), Vec::new());
        m.decode(data, &mut raws, &mut out, &mut oor);
        out.into_iter()
            .map(|(i, r)| (m.signals[i].name.clone(), r))
            .collect()
    }

    #[test]
    fn values_match_hand_computed_ones() {
        // EEC1: torque byte 3 = 0x91 → 145 - 125 = 20 %; speed bytes 4-5 = 0x2A30 → 10800 × 0.125 = 1350 rpm.
        let eec1 = decode(61444, &[0xFF, 0xFF, 0x91, 0x30, 0x2A, 0xFF, 0xFF, 0xFF]);
        assert_eq!(
            eec1,
            [
                ("ActualEnginePercentTorque".into(), Reading::Num(20.0)),
                ("EngineSpeed".into(), Reading::Num(1350.0))
            ]
        );
        // CCVS1: speed 0x5480 / 256 = 84.5 km/h; parking brake (byte 1 bits 3-4) = 01 → on;
        // byte 4 = 0b11_01_11_00: cruise off, brake on, clutch not available (omitted).
        let ccvs = decode(65265, &[0b0000_0100, 0x80, 0x54, 0b1101_1100, 0, 0, 0, 0]);
        assert_eq!(
            ccvs,
            [
                ("ParkingBrakeSwitch".into(), Reading::Name("on".into(), 1)),
                ("WheelBasedVehicleSpeed".into(), Reading::Num(84.5)),
                ("CruiseControlActive".into(), Reading::Name("off".into(), 0)),
                ("BrakeSwitch".into(), Reading::Name("on".into(), 1)),
            ]
        );
        // LFE1: 0x0190 × 0.05 = 20 L/h; economy not available.
        assert_eq!(
            decode(65266, &[0x90, 0x01, 0xFF, 0xFF, 0, 0, 0, 0])[..],
            [("EngineFuelRate".into(), Reading::Num(20.0))]
        );
        // ET1: 0x82 - 40 = 90 °C.
        assert_eq!(
            decode(65262, &[0x82, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])[0].1,
            Reading::Num(90.0)
        );
        // HOURS: 0x0001_E240 = 123456 × 0.05 = 6172.8 h.
        assert_eq!(
            decode(65253, &[0x40, 0xE2, 0x01, 0x00, 0xFF, 0xFF, 0xFF, 0xFF])[0].1,
            Reading::Num(6172.8)
        );
        // HRLFC total: 0x00BC614E = 12345678 × 0.001 = 12345.678 L; trip is "error" (0xFE…).
        assert_eq!(
            decode(64777, &[0, 0, 0, 0xFE, 0x4E, 0x61, 0xBC, 0x00]),
            [(
                "HighResolutionEngineTotalFuelUsed".into(),
                Reading::Num(12345.678)
            )]
        );
        // VDHR: 200000 × 5 m = 1000 km.
        assert_eq!(
            decode(65217, &[0x40, 0x0D, 0x03, 0x00, 0xFF, 0xFF, 0xFF, 0xFF])[0].1,
            Reading::Num(1000.0)
        );
        // DD1: fuel level byte 2 = 200 × 0.4 = 80 %.
        assert_eq!(
            decode(65276, &[0xFF, 200, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])[0].1,
            Reading::Num(80.0)
        );
        // AMB: 0x2610 = 9744 × 0.03125 - 273 = 31.5 °C.
        assert_eq!(
            decode(65269, &[0xFF, 0xFF, 0xFF, 0x10, 0x26, 0xFF, 0xFF, 0xFF])[0].1,
            Reading::Num(31.5)
        );
        // Everything "not available": nothing at all.
        assert!(decode(61444, &[0xFF; 8]).is_empty());
        assert_eq!(spn("EngineSpeed"), Some(190));
    }

    #[test]
    fn vin_is_ascii_up_to_the_delimiter() {
        assert_eq!(
            vin(b"WDB9634031L123456*").as_deref(),
            Some("WDB9634031L123456")
        );
        assert_eq!(
            vin(b"YV2RT40A8EB123456").as_deref(),
            Some("YV2RT40A8EB123456")
        );
        assert_eq!(vin(b"*"), None);
        assert_eq!(vin(b"AB\x01C*"), None);
    }
}

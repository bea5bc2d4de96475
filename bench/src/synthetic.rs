//! Load-test frames: deterministic, realistic telemetry of a chosen size, so a benchmark
//! measures the gateway and a crash test can check every byte that came back.

use fieldgate::frame::Frame;
use serde_json::json;

/// A load-test frame: realistic vehicle telemetry (varying numbers, no padding tricks), about
/// `payload_bytes` of JSON, carrying its own index `n` for integrity checks.
pub fn synthetic_frame(n: u64, payload_bytes: usize) -> Frame {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |scale: f64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 1_000_000) as f64 / 1_000_000.0 * scale
    };
    let r = |v: f64, places: i32| (v * 10f64.powi(places)).round() / 10f64.powi(places);
    let mut payload = json!({"n": n});
    let fields: [(&str, f64, f64, i32); 14] = [
        ("lat", 53.5, 0.05, 6),
        ("lon", 9.9, 0.1, 6),
        ("alt_m", 5.0, 40.0, 1),
        ("speed_kmh", 0.0, 90.0, 1),
        ("course_deg", 0.0, 360.0, 1),
        ("rpm", 700.0, 3000.0, 0),
        ("coolant_c", 80.0, 15.0, 1),
        ("intake_c", 15.0, 20.0, 1),
        ("maf_gs", 2.0, 30.0, 2),
        ("throttle_pct", 10.0, 60.0, 1),
        ("fuel_pct", 20.0, 70.0, 1),
        ("battery_v", 13.6, 0.8, 2),
        ("hdop", 0.6, 1.5, 1),
        ("odometer_km", 120_000.0, 500.0, 1),
    ];
    for (name, base, span, places) in fields {
        if payload.to_string().len() >= payload_bytes {
            break;
        }
        payload[name] = json!(r(base + next(span), places));
    }
    let mut i = 0;
    while payload.to_string().len() + 12 < payload_bytes {
        payload[format!("aux{i}")] = json!(r(next(1000.0), 3));
        i += 1;
    }
    let mut f = Frame::new("bench", "bench", "dev0", "json", payload);
    f.vehicle = Some("van-01".into());
    f
}

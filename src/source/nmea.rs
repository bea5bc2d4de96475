//! NMEA 0183 sentences: checksum-verified parsing and decoding of position fixes.
//!
//! GPS receivers on a serial port speak NMEA: one ASCII sentence per line, `$` + address
//! (talker `GP`, `GN`, `GL`, ... and sentence kind `GGA`, `RMC`, ...) + comma-separated
//! fields + `*HH` checksum. The `nmea` framing in [`super::framing`] splits the stream and
//! calls [`parse_sentence`]; the serial source then calls [`decode`] to turn GGA, RMC and VTG
//! into the frame payload (`lat`, `lon`, `alt_m`, `speed_kmh`, ...). Empty fields (no fix)
//! are omitted rather than treated as errors, and nothing here panics on any input.

use serde_json::{Map, Value};

/// Knots to km/h.
const KNOT_KMH: f64 = 1.852;

/// A checksum-verified NMEA sentence, split into address and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentence {
    /// Talker id: `GP`, `GN`, `GL`, ...; `P` for proprietary sentences.
    pub talker: String,
    /// Sentence kind: `GGA`, `RMC`, `VTG`, ...
    pub kind: String,
    /// The fields after the address, checksum removed (may be empty strings).
    pub fields: Vec<String>,
    /// The whole sentence as received, without line ending.
    pub raw: String,
}

impl Sentence {
    /// Field `i` after the address, `None` if absent or empty.
    pub fn field(&self, i: usize) -> Option<&str> {
        self.fields
            .get(i)
            .map(String::as_str)
            .filter(|f| !f.is_empty())
    }
}

/// Why a line is not a valid NMEA sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NmeaError {
    /// The line does not start with `$` or `!`.
    #[error("sentence does not start with '$' or '!'")]
    NoStart,
    /// No `*HH` checksum (fieldgate requires one).
    #[error("sentence has no '*HH' checksum")]
    MissingChecksum,
    /// The checksum is not two hex digits.
    #[error("checksum is not two hex digits")]
    BadChecksumHex,
    /// The checksum does not match the sentence.
    #[error("checksum mismatch: sentence says {expected:02X}, computed {computed:02X}")]
    BadChecksum {
        /// Checksum written in the sentence.
        expected: u8,
        /// XOR of the bytes between the start character and `*`.
        computed: u8,
    },
    /// The address field is not 2..=10 ASCII letters/digits, or the sentence is not ASCII.
    #[error("bad sentence address or non-ASCII content")]
    BadAddress,
}

impl NmeaError {
    /// Short stable label for metrics: `bad_checksum` or `bad_nmea`.
    pub fn reason(&self) -> &'static str {
        match self {
            NmeaError::BadChecksum { .. } => "bad_checksum",
            _ => "bad_nmea",
        }
    }
}

/// XOR of all bytes: the NMEA checksum of a sentence body.
fn checksum(body: &str) -> u8 {
    body.bytes().fold(0, |acc, b| acc ^ b)
}

/// Parses one sentence (surrounding whitespace and `\r\n` allowed) and verifies its checksum.
pub fn parse_sentence(line: &str) -> Result<Sentence, NmeaError> {
    let raw = line.trim();
    let rest = raw
        .strip_prefix('$')
        .or_else(|| raw.strip_prefix('!'))
        .ok_or(NmeaError::NoStart)?;
    let (body, hex) = rest.rsplit_once('*').ok_or(NmeaError::MissingChecksum)?;
    if hex.len() != 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NmeaError::BadChecksumHex);
    }
    let expected = u8::from_str_radix(hex, 16).map_err(|_| NmeaError::BadChecksumHex)?;
    let computed = checksum(body);
    if expected != computed {
        return Err(NmeaError::BadChecksum { expected, computed });
    }
    if !body.is_ascii() {
        return Err(NmeaError::BadAddress);
    }
    let mut parts = body.split(',');
    let address = parts.next().unwrap_or_default();
    if !(2..=10).contains(&address.len()) || !address.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(NmeaError::BadAddress);
    }
    // ASCII was checked above, so these byte offsets are char boundaries.
    let split = if address.starts_with('P') { 1 } else { 2 };
    let (talker, kind) = address.split_at(split.min(address.len()));
    Ok(Sentence {
        talker: talker.to_string(),
        kind: kind.to_string(),
        fields: parts.map(str::to_string).collect(),
        raw: raw.to_string(),
    })
}

/// Builds `$BODY*HH\r\n` from a body without the leading `$` (for tests and the simulator).
pub fn with_checksum(body: &str) -> String {
    format!("${body}*{:02X}\r\n", checksum(body))
}

/// Decodes GGA, RMC and VTG into payload fields; `None` for other sentence kinds.
///
/// Fields: `sentence`, `lat`/`lon` (signed decimal degrees), `alt_m`, `fix` (GGA quality),
/// `satellites`, `hdop`, `utc` (`hh:mm:ss.sss`), `valid` (RMC status `A`), `speed_kmh`,
/// `course_deg`, `device_ts_ms` (RMC date + time, unix ms). A position is only emitted when
/// the receiver reports a fix (GGA quality > 0, RMC status `A`); empty fields are omitted.
pub fn decode(s: &Sentence) -> Option<Map<String, Value>> {
    let mut out = Map::new();
    out.insert("sentence".into(), Value::from(s.kind.as_str()));
    match s.kind.as_str() {
        "GGA" => {
            let time = s.field(0).and_then(parse_time);
            if let Some(t) = time {
                out.insert("utc".into(), Value::from(t.utc()));
            }
            let fix = s.field(5).and_then(|f| f.parse::<u64>().ok());
            put(&mut out, "fix", fix.map(Value::from));
            if fix.unwrap_or(0) > 0 {
                put_position(&mut out, s, 1);
                put(&mut out, "alt_m", num(s.field(8)).map(|v| round(v, 2)));
            }
            let sats = s.field(6).and_then(|f| f.parse::<u64>().ok());
            put(&mut out, "satellites", sats.map(Value::from));
            put(&mut out, "hdop", num(s.field(7)).map(|v| round(v, 2)));
        }
        "RMC" => {
            let time = s.field(0).and_then(parse_time);
            if let Some(t) = time {
                out.insert("utc".into(), Value::from(t.utc()));
            }
            let valid = s.field(1) == Some("A");
            out.insert("valid".into(), Value::Bool(valid));
            if valid {
                put_position(&mut out, s, 2);
            }
            let speed = num(s.field(6)).map(|kn| round(kn * KNOT_KMH, 3));
            put(&mut out, "speed_kmh", speed);
            put(&mut out, "course_deg", num(s.field(7)).map(|v| round(v, 2)));
            let ts = time.zip(s.field(8)).and_then(|(t, d)| unix_ms(d, t));
            put(&mut out, "device_ts_ms", ts.map(Value::from));
        }
        "VTG" => {
            // NMEA 2.x+: course,T,course,M,knots,N,kmh,K[,mode]; older: course,course,knots,kmh.
            let (course, knots, kmh) = if s.field(1) == Some("T") {
                (s.field(0), s.field(4), s.field(6))
            } else {
                (s.field(0), s.field(2), s.field(3))
            };
            put(&mut out, "course_deg", num(course).map(|v| round(v, 2)));
            let speed = num(kmh).or_else(|| num(knots).map(|kn| kn * KNOT_KMH));
            put(&mut out, "speed_kmh", speed.map(|v| round(v, 3)));
        }
        _ => return None,
    }
    Some(out)
}

/// Inserts `value` under `key` if present.
fn put(out: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(v) = value {
        out.insert(key.to_string(), v.into());
    }
}

/// Inserts `lat`/`lon` from the four fields starting at `first` (lat, N/S, lon, E/W).
fn put_position(out: &mut Map<String, Value>, s: &Sentence, first: usize) {
    let lat = coord(s.field(first), s.field(first + 1), 'N', 'S', 90.0);
    let lon = coord(s.field(first + 2), s.field(first + 3), 'E', 'W', 180.0);
    if let (Some(lat), Some(lon)) = (lat, lon) {
        out.insert("lat".into(), Value::from(round(lat, 7)));
        out.insert("lon".into(), Value::from(round(lon, 7)));
    }
}

/// A finite decimal number; rejects `inf`, `NaN` and anything else `f64` would accept.
fn num(field: Option<&str>) -> Option<f64> {
    let f = field?;
    let plain = f
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
    plain
        .then(|| f.parse::<f64>().ok())
        .flatten()
        .filter(|v| v.is_finite())
}

/// Rounds to `places` decimals (keeps the JSON free of binary-fraction noise).
fn round(v: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (v * scale).round() / scale
}

/// `ddmm.mmmm` / `dddmm.mmmm` plus hemisphere into signed decimal degrees.
fn coord(value: Option<&str>, hemi: Option<&str>, pos: char, neg: char, max: f64) -> Option<f64> {
    let v = num(value)?;
    if v < 0.0 {
        return None;
    }
    let deg = (v / 100.0).trunc();
    let min = v - deg * 100.0;
    let abs = deg + min / 60.0;
    if min >= 60.0 || abs > max {
        return None;
    }
    let mut hemi = hemi?.chars();
    match (hemi.next(), hemi.next()) {
        (Some(c), None) if c == pos => Some(abs),
        (Some(c), None) if c == neg => Some(-abs),
        _ => None,
    }
}

/// A UTC time of day from an NMEA `hhmmss[.sss]` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimeOfDay {
    h: u32,
    m: u32,
    s: u32,
    ms: u32,
}

impl TimeOfDay {
    /// `hh:mm:ss.sss`.
    fn utc(&self) -> String {
        format!("{:02}:{:02}:{:02}.{:03}", self.h, self.m, self.s, self.ms)
    }
}

/// Parses `hhmmss` with an optional fraction of up to any number of digits.
fn parse_time(f: &str) -> Option<TimeOfDay> {
    let (hms, frac) = f.split_once('.').unwrap_or((f, ""));
    if hms.len() != 6 || !hms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let two = |i: usize| hms.get(i..i + 2).and_then(|d| d.parse::<u32>().ok());
    let (h, m, s) = (two(0)?, two(2)?, two(4)?);
    if h > 23 || m > 59 || s > 60 {
        return None;
    }
    // First three fraction digits, right-padded: ".5" -> 500 ms, ".25" -> 250 ms.
    let ms = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0, |acc, b| acc * 10 + u32::from(b - b'0'));
    Some(TimeOfDay { h, m, s, ms })
}

/// RMC `ddmmyy` date plus time of day into unix milliseconds (years 80..99 are 19xx).
fn unix_ms(date: &str, t: TimeOfDay) -> Option<i64> {
    if date.len() != 6 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let two = |i: usize| date.get(i..i + 2).and_then(|d| d.parse::<i64>().ok());
    let (d, mo, yy) = (two(0)?, two(2)?, two(4)?);
    let y = if yy < 80 { 2000 + yy } else { 1900 + yy };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let max_day = *month_days.get(usize::try_from(mo).ok()?.checked_sub(1)?)?;
    if !(1..=max_day).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + i64::from(t.h * 3600 + t.m * 60 + t.s);
    Some(secs * 1000 + i64::from(t.ms))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const GGA: &str = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
    const RMC: &str = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A";
    const VTG: &str = "$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48";

    fn decoded(line: &str) -> Value {
        Value::Object(decode(&parse_sentence(line).unwrap()).unwrap())
    }

    #[test]
    fn parses_address_fields_and_checksum() {
        let s = parse_sentence(&format!("  {GGA}\r\n")).unwrap();
        assert_eq!((s.talker.as_str(), s.kind.as_str()), ("GP", "GGA"));
        assert_eq!(s.fields.len(), 14);
        assert_eq!(s.field(0), Some("123519"));
        assert_eq!(s.field(12), None);
        assert_eq!(s.raw, GGA);
        let p = parse_sentence(&with_checksum("PGRMZ,246,f,3")).unwrap();
        assert_eq!((p.talker.as_str(), p.kind.as_str()), ("P", "GRMZ"));
        let ais = parse_sentence(&format!("!{}", &with_checksum("AIVDM,1,1,,A,13aG,0")[1..]));
        assert_eq!(ais.unwrap().kind, "VDM");
    }

    #[test]
    fn rejects_bad_sentences() {
        let bad = GGA.replace("*47", "*48");
        let err = parse_sentence(&bad).unwrap_err();
        assert_eq!(
            err,
            NmeaError::BadChecksum {
                expected: 0x48,
                computed: 0x47
            }
        );
        assert_eq!(err.reason(), "bad_checksum");
        assert_eq!(parse_sentence("GPGGA,1*00"), Err(NmeaError::NoStart));
        assert_eq!(parse_sentence("$GPGGA,1"), Err(NmeaError::MissingChecksum));
        assert_eq!(parse_sentence("$GPGGA,1*4"), Err(NmeaError::BadChecksumHex));
        assert_eq!(
            parse_sentence("$GPGGA,1*+4"),
            Err(NmeaError::BadChecksumHex)
        );
        assert_eq!(
            parse_sentence(&with_checksum("G,1")),
            Err(NmeaError::BadAddress)
        );
        let utf = with_checksum("GPGGA,é");
        assert_eq!(parse_sentence(&utf), Err(NmeaError::BadAddress));
        assert_eq!(parse_sentence("").unwrap_err().reason(), "bad_nmea");
    }

    #[test]
    fn with_checksum_round_trips() {
        assert_eq!(with_checksum(&VTG[1..VTG.len() - 3]), format!("{VTG}\r\n"));
    }

    #[test]
    fn decodes_gga() {
        let v = decoded(GGA);
        assert_eq!(v["sentence"], "GGA");
        assert_eq!(v["lat"], 48.1173);
        assert_eq!(v["lon"], 11.5166667);
        assert_eq!(v["alt_m"], 545.4);
        assert_eq!(v["fix"], 1);
        assert_eq!(v["satellites"], 8);
        assert_eq!(v["hdop"], 0.9);
        assert_eq!(v["utc"], "12:35:19.000");
    }

    #[test]
    fn decodes_rmc_with_device_time() {
        let v = decoded(RMC);
        assert_eq!(v["sentence"], "RMC");
        assert_eq!(v["valid"], true);
        assert_eq!(v["lat"], 48.1173);
        assert_eq!(v["speed_kmh"], 41.485);
        assert_eq!(v["course_deg"], 84.4);
        // 1994-03-23T12:35:19Z
        assert_eq!(v["device_ts_ms"], 764_426_119_000i64);
        let south = with_checksum("GNRMC,235959.50,A,3351.000,S,15112.000,W,0,0,291224,,,A");
        let v = decoded(&south);
        assert_eq!(v["lat"], -33.85);
        assert_eq!(v["lon"], -151.2);
        assert_eq!(v["utc"], "23:59:59.500");
        // 2024-12-29T23:59:59.5Z
        assert_eq!(v["device_ts_ms"], 1_735_516_799_500i64);
    }

    #[test]
    fn decodes_vtg_both_layouts() {
        let v = decoded(VTG);
        assert_eq!(
            (v["course_deg"].clone(), v["speed_kmh"].clone()),
            (54.7.into(), 10.2.into())
        );
        let old = decoded(&with_checksum("GPVTG,054.7,034.4,005.5,"));
        assert_eq!(old["speed_kmh"], 10.186);
    }

    #[test]
    fn no_fix_omits_fields() {
        let v = decoded(&with_checksum("GPGGA,,,,,,0,00,99.99,,,,,,"));
        assert_eq!(
            v,
            serde_json::json!({"sentence": "GGA", "fix": 0, "satellites": 0, "hdop": 99.99})
        );
        let v = decoded(&with_checksum("GPRMC,,V,,,,,,,,,,N"));
        assert_eq!(v, serde_json::json!({"sentence": "RMC", "valid": false}));
        let v = decoded(&with_checksum(
            "GPRMC,123519,V,4807.038,N,01131.000,E,,,230394,,",
        ));
        assert!(v.get("lat").is_none() && v.get("device_ts_ms").is_some());
        let s = parse_sentence(&with_checksum("GPGSV,3,1,11")).unwrap();
        assert!(decode(&s).is_none());
    }

    #[test]
    fn nonsense_values_are_omitted_not_panics() {
        for body in [
            "GPGGA,996060,9100.0,N,18100.0,E,1,x,inf,NaN,M",
            "GPGGA,12ééé,4807.038,Q,01131.000,EE,1,08,-,1e999,M",
            "GPRMC,123519.x,A,4860.0,N,01131.000,E,x,y,320394",
            "GPRMC,123519,A,4807.038,X,01131.000,E,1,2,290223",
            "GPRMC,123519,A,,N,,E,,,0000ab",
            "GPVTG",
            "GPGGA",
        ] {
            let s = parse_sentence(&with_checksum(body));
            if let Ok(s) = s {
                let v = decode(&s).unwrap();
                assert!(
                    v.get("lat").is_none() && v.get("device_ts_ms").is_none(),
                    "{body}: {v:?}"
                );
            }
        }
    }

    #[test]
    fn leap_day_and_time_parsing() {
        let t = parse_time("000000").unwrap();
        assert_eq!(unix_ms("290200", t), Some(951_782_400_000));
        assert_eq!(unix_ms("010180", t), Some(315_532_800_000));
        assert_eq!(parse_time("123519.123456").map(|t| t.ms), Some(123));
        assert_eq!(parse_time("1235"), None);
    }
}

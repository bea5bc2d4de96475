//! SAE J1939 on a 29-bit bus: identifier fields, transport-protocol reassembly, DM1.
//!
//! Trucks and buses speak J1939: the 29-bit id carries a priority, a parameter group
//! number (PGN) and the sender's source address (SA), so the same PGN arrives under many
//! ids and matching must ignore priority and SA (J1939-21); PDU1 PGNs (PF < 240) also carry
//! a destination address in the low byte, which is not part of the PGN. Messages longer
//! than 8 bytes travel in transport-protocol sessions: TP.CM announces (BAM to everyone,
//! RTS/CTS to one node), TP.DT carries 7 bytes per packet. Every node may have one
//! session open per destination at once, so [`Transport`] keeps sessions per (SA, DA),
//! bounded in number and timed out as J1939-21 times them out. DM1 ([`Dm1`]) lists a
//! node's active trouble codes (SPN, FMI, occurrence count) and its lamps.

use serde_json::{json, Value};

/// TP.CM: connection management.
pub const PGN_TP_CM: u32 = 0xEC00;
/// TP.DT: data transfer.
pub const PGN_TP_DT: u32 = 0xEB00;
/// DM1: active diagnostic trouble codes.
pub const PGN_DM1: u32 = 0xFECA;
/// Longest TP message: 255 packets of 7 bytes.
pub const TP_MAX: usize = 1785;
/// Sessions tracked at once (a bus has at most a few dozen nodes).
const MAX_SESSIONS: usize = 64;
/// A session with no packet for this long is dropped (J1939-21's T1/T2/T3 are ≤ 1250 ms).
const SESSION_TIMEOUT_MS: i64 = 1250;

/// The fields of a 29-bit J1939 identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct J1939Id {
    /// Priority, 0 (highest) to 7.
    pub priority: u8,
    /// Parameter group number (18 bits; the destination of PDU1 groups is not part of it).
    pub pgn: u32,
    /// Source address.
    pub sa: u8,
    /// Destination address (PDU1 only; 0xFF is global).
    pub da: Option<u8>,
}

/// Splits a 29-bit id into priority, PGN, source and destination address.
pub fn split(id: u32) -> J1939Id {
    let pf = (id >> 16) & 0xFF;
    let ps = ((id >> 8) & 0xFF) as u8;
    let page = (id >> 24) & 0x3; // EDP and DP
    let base = (page << 16) | (pf << 8);
    let (pgn, da) = if pf < 240 {
        (base, Some(ps))
    } else {
        (base | u32::from(ps), None)
    };
    J1939Id {
        priority: ((id >> 26) & 0x7) as u8,
        pgn,
        sa: (id & 0xFF) as u8,
        da,
    }
}

/// Whether a raw parameter value is J1939's "error" or "not available" (or another
/// out-of-range indicator): 0xFB… and above for whole bytes, the top two codes of a 2–7
/// bit field (`10` error, `11` not available for two bits).
pub fn not_a_value(raw: u64, size: u8) -> bool {
    match size {
        8 | 16 | 24 | 32 | 40 | 48 | 56 | 64 => raw >= 0xFBu64 << (size - 8),
        2..=7 => raw >= (1u64 << size) - 2,
        _ => false,
    }
}

/// What a transport-protocol frame led to.
#[derive(Debug, Clone, PartialEq)]
pub enum TpEvent {
    /// A whole message arrived.
    Complete {
        /// Its PGN.
        pgn: u32,
        /// Sender.
        sa: u8,
        /// Destination (0xFF for BAM).
        da: u8,
        /// Its bytes, exactly the announced size.
        data: Vec<u8>,
    },
    /// Something went wrong with a session (counted as `j1939_tp`).
    Problem(String),
}

/// One reassembly in progress.
#[derive(Debug)]
struct Session {
    sa: u8,
    da: u8,
    pgn: u32,
    size: usize,
    packets: u8,
    data: Vec<u8>,
    /// Received packets, bit n-1 for packet n.
    seen: [u64; 4],
    got: u8,
    last_ms: i64,
}

impl Session {
    fn has(&self, n: u8) -> bool {
        let i = usize::from(n - 1);
        self.seen[i / 64] & (1 << (i % 64)) != 0
    }
    fn mark(&mut self, n: u8) {
        let i = usize::from(n - 1);
        self.seen[i / 64] |= 1 << (i % 64);
    }
}

/// TP.CM / TP.DT reassembly for every (SA, DA) pair on a bus.
#[derive(Debug, Default)]
pub struct Transport {
    sessions: Vec<Session>,
    /// Messages reassembled so far.
    pub completed: u64,
}

impl Transport {
    /// Sessions now open.
    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// A TP.CM frame from `sa` to `da`.
    pub fn on_cm(&mut self, sa: u8, da: u8, data: &[u8], now_ms: i64) -> Option<TpEvent> {
        let control = *data.first()?;
        match control {
            // RTS (16) and BAM (32) open a session.
            16 | 32 => {
                if data.len() < 8 {
                    return Some(TpEvent::Problem(format!("short TP.CM from SA {sa:#04x}")));
                }
                let size = usize::from(u16::from_le_bytes([data[1], data[2]]));
                let packets = data[3];
                let pgn = u32::from_le_bytes([data[5], data[6], data[7], 0]);
                if !(9..=TP_MAX).contains(&size) || usize::from(packets) != size.div_ceil(7) {
                    return Some(TpEvent::Problem(format!(
                        "TP.CM from SA {sa:#04x} announces {size} bytes in {packets} packets"
                    )));
                }
                let replaced = self.remove(sa, da);
                if self.sessions.len() >= MAX_SESSIONS {
                    self.sessions.remove(0);
                }
                self.sessions.push(Session {
                    sa,
                    da,
                    pgn,
                    size,
                    packets,
                    data: vec![0; usize::from(packets) * 7],
                    seen: [0; 4],
                    got: 0,
                    last_ms: now_ms,
                });
                replaced.map(|old| {
                    TpEvent::Problem(format!(
                        "SA {sa:#04x} started a new session before PGN {} was complete",
                        old.pgn
                    ))
                })
            }
            // Abort: either side may send it; the session is keyed by the sender's side.
            255 => {
                let a = self.remove(sa, da);
                let b = self.remove(da, sa);
                let pgn = a.or(b).map(|s| s.pgn)?;
                Some(TpEvent::Problem(format!(
                    "session of PGN {pgn} between {sa:#04x} and {da:#04x} aborted (reason {})",
                    data.get(1).copied().unwrap_or(0xFF)
                )))
            }
            // CTS (17) and End of Message Ack (19) pace and confirm; nothing to collect.
            _ => None,
        }
    }

    /// A TP.DT frame from `sa` to `da`.
    pub fn on_dt(&mut self, sa: u8, da: u8, data: &[u8], now_ms: i64) -> Option<TpEvent> {
        let Some(at) = self.sessions.iter().position(|s| s.sa == sa && s.da == da) else {
            return Some(TpEvent::Problem(format!(
                "TP.DT from SA {sa:#04x} without a session"
            )));
        };
        let s = &mut self.sessions[at];
        let n = *data.first()?;
        if n == 0 || n > s.packets || data.len() < 2 {
            return Some(TpEvent::Problem(format!(
                "TP.DT packet {n} from SA {sa:#04x} outside 1..={}",
                s.packets
            )));
        }
        let chunk = &data[1..data.len().min(8)];
        let off = usize::from(n - 1) * 7;
        s.data[off..off + chunk.len()].copy_from_slice(chunk);
        if !s.has(n) {
            s.mark(n);
            s.got += 1;
        }
        s.last_ms = now_ms;
        if s.got < s.packets {
            return None;
        }
        let mut s = self.sessions.remove(at);
        s.data.truncate(s.size);
        self.completed += 1;
        Some(TpEvent::Complete {
            pgn: s.pgn,
            sa: s.sa,
            da: s.da,
            data: s.data,
        })
    }

    /// Drops sessions silent for longer than J1939-21 allows; one problem per session.
    pub fn expire(&mut self, now_ms: i64) -> Vec<TpEvent> {
        let mut out = Vec::new();
        self.sessions.retain(|s| {
            let alive = now_ms - s.last_ms <= SESSION_TIMEOUT_MS;
            if !alive {
                out.push(TpEvent::Problem(format!(
                    "session of PGN {} from SA {:#04x} timed out after {} of {} packets",
                    s.pgn, s.sa, s.got, s.packets
                )));
            }
            alive
        });
        out
    }

    fn remove(&mut self, sa: u8, da: u8) -> Option<Session> {
        let at = self
            .sessions
            .iter()
            .position(|s| s.sa == sa && s.da == da)?;
        Some(self.sessions.remove(at))
    }
}

/// One active trouble code of a DM1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtc {
    /// Suspect parameter number (19 bits).
    pub spn: u32,
    /// Failure mode identifier (5 bits).
    pub fmi: u8,
    /// Occurrence count (7 bits; 127 = not available).
    pub oc: u8,
}

/// A DM1 message: lamps and active trouble codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dm1 {
    /// Malfunction indicator, red stop, amber warning, protect lamps (2 bits each).
    pub lamps: [u8; 4],
    /// Active codes.
    pub dtcs: Vec<Dtc>,
}

impl Dm1 {
    /// Decodes a DM1 (single frame or reassembled); `None` if shorter than one code.
    pub fn parse(data: &[u8]) -> Option<Dm1> {
        let (lamp, codes) = (data.get(..2)?, data.get(2..)?);
        let lamps = [6, 4, 2, 0].map(|shift| (lamp[0] >> shift) & 0x3);
        let dtcs = codes
            .chunks_exact(4)
            .map(|c| Dtc {
                spn: u32::from(c[0]) | (u32::from(c[1]) << 8) | (u32::from(c[2] & 0xE0) << 11),
                fmi: c[2] & 0x1F,
                oc: c[3] & 0x7F,
            })
            // SPN 0 is "no code" (all-zero or 0xFF padding decodes to 0 or 0x7FFFF).
            .filter(|d| d.spn != 0 && d.spn != 0x7FFFF)
            .collect();
        Some(Dm1 { lamps, dtcs })
    }

    /// The `dtc` frame payload: `codes` as text like OBD's, the detail per code, lamps.
    pub fn payload(&self, sa: u8) -> Value {
        let codes: Vec<String> = self
            .dtcs
            .iter()
            .map(|d| format!("SPN {} FMI {}", d.spn, d.fmi))
            .collect();
        let detail: Vec<Value> = self
            .dtcs
            .iter()
            .map(|d| {
                let mut v = json!({"spn": d.spn, "fmi": d.fmi});
                if d.oc != 0x7F {
                    v["oc"] = json!(d.oc);
                }
                v
            })
            .collect();
        let mut lamps = serde_json::Map::new();
        for (name, state) in ["mil", "red_stop", "amber_warning", "protect"]
            .iter()
            .zip(self.lamps)
        {
            match state {
                0 => lamps.insert((*name).into(), json!("off")),
                1 => lamps.insert((*name).into(), json!("on")),
                _ => None,
            };
        }
        json!({
            "protocol": "j1939",
            "source_address": sa,
            "count": codes.len(),
            "codes": codes,
            "dtcs": detail,
            "lamps": lamps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_split_into_priority_pgn_and_addresses() {
        // EEC1 from the engine (SA 0), priority 3.
        assert_eq!(
            split(0x0CF0_0400),
            J1939Id {
                priority: 3,
                pgn: 61444,
                sa: 0,
                da: None
            }
        );
        // CCVS from SA 0x17, priority 6.
        assert_eq!(split(0x18FE_F117).pgn, 65265);
        // TP.CM (PDU1) from 0x00 to global: the destination is not part of the PGN.
        assert_eq!(
            split(0x1CEC_FF00),
            J1939Id {
                priority: 7,
                pgn: PGN_TP_CM,
                sa: 0,
                da: Some(0xFF)
            }
        );
        assert_eq!(split(0x18EB_3DF9).da, Some(0x3D));
        // Data page set: PGN 0x1FExx.
        assert_eq!(split(0x19FE_CA00).pgn, 0x1FECA);
    }

    #[test]
    fn error_and_not_available_values() {
        assert!(!not_a_value(0xFA, 8));
        assert!(not_a_value(0xFE, 8) && not_a_value(0xFF, 8));
        assert!(!not_a_value(0xFAFF, 16) && not_a_value(0xFE00, 16) && not_a_value(0xFFFF, 16));
        assert!(not_a_value(0xFFFF_FFFF, 32) && !not_a_value(0xFAFF_FFFF, 32));
        assert!(!not_a_value(1, 2) && not_a_value(2, 2) && not_a_value(3, 2));
        assert!(not_a_value(0xE, 4) && !not_a_value(0xD, 4));
        assert!(!not_a_value(1, 1) && !not_a_value(0x3FF, 10));
    }

    /// BAM TP.CM: `size` bytes of `pgn` in `packets`.
    fn bam(size: u16, pgn: u32) -> Vec<u8> {
        let [s0, s1] = size.to_le_bytes();
        let [p0, p1, p2, _] = pgn.to_le_bytes();
        vec![32, s0, s1, size.div_ceil(7) as u8, 0xFF, p0, p1, p2]
    }

    #[test]
    fn interleaved_bam_sessions_from_two_senders_reassemble() {
        let a: Vec<u8> = (1..=20).collect(); // 3 packets
        let b: Vec<u8> = (100..=116).rev().collect(); // 17 bytes, 3 packets
        let mut tp = Transport::default();
        assert_eq!(tp.on_cm(0x00, 0xFF, &bam(20, PGN_DM1), 0), None);
        assert_eq!(tp.on_cm(0x3D, 0xFF, &bam(17, 65260), 1), None);
        let dt = |n: u8, data: &[u8]| {
            let mut f = vec![n];
            let chunk: Vec<u8> = data
                .iter()
                .skip(usize::from(n - 1) * 7)
                .take(7)
                .copied()
                .collect();
            f.extend(&chunk);
            f.resize(8, 0xFF);
            f
        };
        let mut done = Vec::new();
        // Packets interleaved and B's arrive out of order.
        for (sa, n) in [
            (0x00, 1),
            (0x3D, 2),
            (0x00, 2),
            (0x3D, 1),
            (0x3D, 3),
            (0x00, 3),
        ] {
            let data = if sa == 0 { &a } else { &b };
            if let Some(ev) = tp.on_dt(sa, 0xFF, &dt(n, data), 10) {
                done.push(ev);
            }
        }
        assert_eq!(
            done,
            [
                TpEvent::Complete {
                    pgn: 65260,
                    sa: 0x3D,
                    da: 0xFF,
                    data: b.clone()
                },
                TpEvent::Complete {
                    pgn: PGN_DM1,
                    sa: 0x00,
                    da: 0xFF,
                    data: a.clone()
                },
            ]
        );
        assert_eq!((tp.open_sessions(), tp.completed), (0, 2));
    }

    #[test]
    fn broken_sessions_are_reported_not_delivered() {
        let mut tp = Transport::default();
        assert!(matches!(
            tp.on_dt(0x10, 0xFF, &[1, 0, 0, 0, 0, 0, 0, 0], 0),
            Some(TpEvent::Problem(_))
        ));
        // 20 bytes cannot come in 5 packets.
        let mut bad = bam(20, 1);
        bad[3] = 5;
        assert!(matches!(
            tp.on_cm(0x10, 0xFF, &bad, 0),
            Some(TpEvent::Problem(_))
        ));
        tp.on_cm(0x10, 0xFF, &bam(20, 1), 0);
        assert!(matches!(
            tp.on_dt(0x10, 0xFF, &[9, 0, 0, 0, 0, 0, 0, 0], 1),
            Some(TpEvent::Problem(_))
        ));
        assert_eq!(tp.on_dt(0x10, 0xFF, &[1, 0, 0, 0, 0, 0, 0, 0], 1), None);
        assert!(tp.expire(1000).is_empty());
        assert_eq!(tp.expire(1252).len(), 1);
        assert_eq!(tp.open_sessions(), 0);
        // An RTS session aborted by the receiver (its frame goes the other way).
        let mut rts = bam(20, 0xFECA);
        rts[0] = 16;
        tp.on_cm(0x00, 0x3D, &rts, 0);
        assert!(matches!(
            tp.on_cm(0x3D, 0x00, &[255, 3, 0xFF, 0xFF, 0xFF, 0xCA, 0xFE, 0], 5),
            Some(TpEvent::Problem(_))
        ));
        assert_eq!(tp.open_sessions(), 0);
    }

    #[test]
    fn dm1_codes_and_lamps() {
        // MIL on, amber on; SPN 110 FMI 0 OC 3; SPN 0x1F123 (19 bits) FMI 31 OC 127; padding.
        let spn2: u32 = 0x1F123;
        let data = [
            0b0100_0100,
            0xFF,
            110,
            0,
            0,
            3,
            (spn2 & 0xFF) as u8,
            ((spn2 >> 8) & 0xFF) as u8,
            (((spn2 >> 16) as u8) << 5) | 31,
            0x7F,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
        ];
        let dm1 = Dm1::parse(&data).expect("dm1");
        assert_eq!(dm1.lamps, [1, 0, 1, 0]);
        assert_eq!(
            dm1.dtcs,
            [
                Dtc {
                    spn: 110,
                    fmi: 0,
                    oc: 3
                },
                Dtc {
                    spn: spn2,
                    fmi: 31,
                    oc: 127
                }
            ]
        );
        let p = dm1.payload(0x00);
        assert_eq!(
            p["codes"],
            json!(["SPN 110 FMI 0", format!("SPN {spn2} FMI 31")])
        );
        assert_eq!(p["count"], 2);
        assert_eq!(p["dtcs"][1], json!({"spn": spn2, "fmi": 31}));
        assert_eq!(
            p["lamps"],
            json!({"mil": "on", "red_stop": "off", "amber_warning": "on", "protect": "off"})
        );
        // A DM1 saying "no active codes".
        assert!(Dm1::parse(&[0, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF])
            .expect("dm1")
            .dtcs
            .is_empty());
        assert!(Dm1::parse(&[0]).is_none());
    }
}

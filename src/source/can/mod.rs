//! CAN bus source (`[[sources.can]]`): a vehicle's bus into decoded, journaled frames.
//!
//! A bus carries 2,000–8,000 frames a second, far too many to ship over a cellular link,
//! and most of them mean nothing without the fleet's DBC files. One task per bus
//! ([`task`]) reads frames from a [`transport`] (an SLCAN adapter on a serial port or TCP,
//! a SocketCAN interface, a `candump -L` log), hands them to the [`ingest`] pipeline, and
//! appends what comes out in one `append_many` per burst, exactly like the serial sources:
//! same reopen/backoff ([`crate::source::port`]), same per-reason counters and
//! rate-limited logs ([`crate::source::events`]), same `waiting`/`running` states.
//!
//! The pipeline looks each frame up in the DBC files ([`dbc`], parsed by the `can-dbc`
//! crate and compiled into bit layouts by [`decode`]), keeps the signals the per-signal
//! rules let through ([`collect`]), and journals one `can` frame per message. On a J1939
//! bus ([`j1939`]) it also reassembles transport-protocol sessions, turns DM1 into `dtc`
//! frames and decodes the FMS-Standard parameters without a DBC ([`fms`]). The codec of
//! the SLCAN wire is in [`slcan`], candump logs in [`candump`], SocketCAN in
//! [`socketcan`], the technician's transmit path in [`command`], and the demo's simulated
//! adapter in [`sim`].

pub mod candump;
pub mod collect;
pub mod command;
pub mod config;
pub mod dbc;
pub mod decode;
pub mod fms;
pub mod ingest;
pub mod j1939;
pub mod sim;
pub mod slcan;
pub mod socketcan;
pub mod task;
pub mod transport;

pub use config::CanConfig;
pub use task::run;

/// Largest 11-bit identifier.
pub const SFF_MAX: u32 = 0x7FF;
/// Largest 29-bit identifier.
pub const EFF_MAX: u32 = 0x1FFF_FFFF;
/// Largest payload (CAN FD).
pub const MAX_DATA: usize = 64;

/// One CAN frame as it came off the bus.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CanFrame {
    /// Identifier, 11 or 29 bits.
    pub id: u32,
    /// 29-bit (extended) identifier.
    pub ext: bool,
    /// Remote transmission request (no data).
    pub rtr: bool,
    /// CAN FD frame.
    pub fd: bool,
    len: u8,
    data: [u8; MAX_DATA],
}

impl std::fmt::Debug for CanFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.rtr { "R" } else { "#" };
        if self.ext {
            write!(f, "{:08X}{kind}{}", self.id, hex::encode_upper(self.data()))
        } else {
            write!(f, "{:03X}{kind}{}", self.id, hex::encode_upper(self.data()))
        }
    }
}

impl CanFrame {
    /// A data frame; `None` if the id does not fit its format or the data exceeds 64 bytes.
    pub fn new(id: u32, ext: bool, data: &[u8]) -> Option<CanFrame> {
        let id_ok = if ext { id <= EFF_MAX } else { id <= SFF_MAX };
        if !id_ok || data.len() > MAX_DATA {
            return None;
        }
        let mut buf = [0u8; MAX_DATA];
        buf[..data.len()].copy_from_slice(data);
        Some(CanFrame {
            id,
            ext,
            rtr: false,
            fd: data.len() > 8,
            len: data.len() as u8,
            data: buf,
        })
    }

    /// A remote frame requesting `dlc` bytes (0–8).
    pub fn remote(id: u32, ext: bool, dlc: u8) -> Option<CanFrame> {
        let mut f = CanFrame::new(id, ext, &[])?;
        if dlc > 8 {
            return None;
        }
        f.rtr = true;
        f.len = dlc;
        Some(f)
    }

    /// The payload (empty for a remote frame).
    pub fn data(&self) -> &[u8] {
        if self.rtr {
            &[]
        } else {
            &self.data[..usize::from(self.len)]
        }
    }

    /// Data length code as sent: the payload length, or the requested length of a remote
    /// frame.
    pub fn dlc(&self) -> u8 {
        self.len
    }

    /// One number for id and format: the id with bit 31 set for 29-bit ids (the DBC
    /// convention), so `0x123` and `0x00000123` stay distinct.
    pub fn key(&self) -> u32 {
        key(self.id, self.ext)
    }
}

/// The [`CanFrame::key`] of an id.
pub fn key(id: u32, ext: bool) -> u32 {
    id | (u32::from(ext) << 31)
}

/// `0x123` or `0x18FEF100` as text for the status page and logs.
pub fn key_text(key: u32) -> String {
    if key & (1 << 31) != 0 {
        format!("0x{:08X}", key & EFF_MAX)
    } else {
        format!("0x{key:03X}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_check_their_ids_and_lengths() {
        assert!(CanFrame::new(0x7FF, false, &[1, 2]).is_some());
        assert!(CanFrame::new(0x800, false, &[]).is_none());
        assert!(CanFrame::new(EFF_MAX, true, &[0; 64]).is_some());
        assert!(CanFrame::new(EFF_MAX + 1, true, &[]).is_none());
        assert!(CanFrame::new(1, false, &[0; 65]).is_none());
        let r = CanFrame::remote(0x100, false, 4).expect("rtr");
        assert_eq!((r.data(), r.dlc()), (&[][..], 4));
        assert_eq!(
            key_text(CanFrame::new(0x123, false, &[]).expect("f").key()),
            "0x123"
        );
        assert_eq!(key_text(key(0x18FEF100, true)), "0x18FEF100");
        assert_eq!(
            format!("{:?}", CanFrame::new(0x12, false, &[0xAB]).expect("f")),
            "012#AB"
        );
    }
}

//! SocketCAN: a Linux CAN interface (`can0`, `vcan0`, a PiCAN HAT, a candleLight adapter).
//!
//! The `socketcan` crate's tokio socket does the reading and writing; this module opens it
//! (with error frames enabled, so bus errors and overruns are counted), converts its
//! frames to and from ours, and makes a kernel without CAN support a clear, non-fatal
//! state: socket(2) fails with `EAFNOSUPPORT`, which the source reports in `/api/status`
//! and its log as such while the rest of the gateway runs on. [`classify_error`] reads a
//! SocketCAN error frame (also found in candump logs) into a counter label.

use super::CanFrame;
use socketcan::{EmbeddedFrame, ExtendedId, Frame as _, Id, SocketOptions, StandardId};

/// Error class bits of a SocketCAN error frame (`linux/can/error.h`).
const ERR_CRTL: u32 = 0x0004;
const ERR_PROT: u32 = 0x0008;
const ERR_TRX: u32 = 0x0010;
const ERR_ACK: u32 = 0x0020;
const ERR_BUSOFF: u32 = 0x0040;
const ERR_BUSERROR: u32 = 0x0080;
/// `data[1]` bits of a controller problem: receive / transmit buffer overflow.
const CRTL_OVERFLOW: u8 = 0x01 | 0x02;

/// The counter label of an error frame: `overrun` (controller buffer overflow),
/// `bus_error` (bus off, protocol, transceiver or acknowledgement errors) or `error_frame`.
pub fn classify_error(id_word: u32, data: &[u8]) -> &'static str {
    let class = id_word & 0x1FFF_FFFF;
    if class & ERR_CRTL != 0 && data.get(1).is_some_and(|b| b & CRTL_OVERFLOW != 0) {
        "overrun"
    } else if class & (ERR_BUSOFF | ERR_BUSERROR | ERR_PROT | ERR_TRX | ERR_ACK) != 0 {
        "bus_error"
    } else {
        "error_frame"
    }
}

/// A socketcan frame as ours; an error frame as its counter label.
pub fn from_socketcan(f: &socketcan::CanFrame) -> Result<CanFrame, &'static str> {
    match f {
        socketcan::CanFrame::Error(e) => Err(classify_error(e.id_word(), e.data())),
        socketcan::CanFrame::Remote(r) => {
            CanFrame::remote(r.raw_id(), r.is_extended(), r.dlc().min(8) as u8).ok_or("error_frame")
        }
        socketcan::CanFrame::Data(d) => {
            CanFrame::new(d.raw_id(), d.is_extended(), d.data()).ok_or("error_frame")
        }
    }
}

/// Our frame as a classic socketcan frame; `None` for CAN FD (not sent on a classic socket).
pub fn to_socketcan(f: &CanFrame) -> Option<socketcan::CanFrame> {
    let id: Id = if f.ext {
        ExtendedId::new(f.id)?.into()
    } else {
        StandardId::new(u16::try_from(f.id).ok()?)?.into()
    };
    if f.rtr {
        socketcan::CanFrame::new_remote(id, usize::from(f.dlc()))
    } else if f.fd {
        None
    } else {
        socketcan::CanFrame::new(id, f.data())
    }
}

/// Whether this kernel can open CAN sockets at all (`EAFNOSUPPORT` if not).
pub fn probe() -> std::io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the descriptor is closed right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_CAN,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::CAN_RAW,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is the descriptor socket(2) just returned and nothing else holds it.
    unsafe { libc::close(fd) };
    Ok(())
}

/// The message for a kernel without CAN sockets.
pub const NO_AF_CAN: &str = "this kernel has no SocketCAN support (socket(AF_CAN) failed with EAFNOSUPPORT): \
load the can and can_raw modules (modprobe can_raw) or use an SLCAN adapter (interface = \"slcan\")";

/// An open CAN interface.
pub struct SocketLink {
    sock: socketcan::tokio::CanSocket,
}

impl SocketLink {
    /// Opens `ifname` with error frames enabled; a kernel without CAN gets [`NO_AF_CAN`].
    pub fn open(ifname: &str) -> std::io::Result<SocketLink> {
        if let Err(e) = probe() {
            if e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    NO_AF_CAN,
                ));
            }
            return Err(e);
        }
        let sock = socketcan::tokio::CanSocket::open(ifname)?;
        sock.set_error_filter_accept_all()?;
        Ok(SocketLink { sock })
    }

    /// The next frame (or error-frame label).
    pub async fn read(&self) -> std::io::Result<Result<CanFrame, &'static str>> {
        let f = self.sock.read_frame().await?;
        Ok(from_socketcan(&f))
    }

    /// Transmits a frame.
    pub async fn write(&self, frame: &CanFrame) -> std::io::Result<()> {
        let f = to_socketcan(frame).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "CAN FD frames cannot be sent on a classic socket",
            )
        })?;
        self.sock.write_frame(f).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_convert_both_ways() {
        let ours = [
            CanFrame::new(0x123, false, &[1, 2, 3]).expect("f"),
            CanFrame::new(0x7FF, false, &[]).expect("f"),
            CanFrame::new(0x18FEF100, true, &[0xFF; 8]).expect("f"),
            // A 29-bit id that would fit in 11 bits stays 29-bit.
            CanFrame::new(0x10, true, &[9]).expect("f"),
            CanFrame::remote(0x321, false, 6).expect("r"),
            CanFrame::remote(0x1ABCDEF0, true, 0).expect("r"),
        ];
        for f in ours {
            let theirs = to_socketcan(&f).expect("classic frame");
            assert_eq!(theirs.is_extended(), f.ext, "{f:?}");
            assert_eq!(theirs.raw_id(), f.id, "{f:?}");
            assert_eq!(theirs.is_remote_frame(), f.rtr, "{f:?}");
            assert_eq!(from_socketcan(&theirs), Ok(f), "{f:?}");
        }
        assert!(to_socketcan(&CanFrame::new(1, false, &[0; 12]).expect("fd")).is_none());
    }

    #[test]
    fn error_frames_are_classified() {
        let frame = |class: u32, data: [u8; 8]| {
            socketcan::CanFrame::Error(
                socketcan::CanErrorFrame::new_error(class, &data).expect("error frame"),
            )
        };
        assert_eq!(from_socketcan(&frame(ERR_BUSOFF, [0; 8])), Err("bus_error"));
        assert_eq!(
            from_socketcan(&frame(ERR_CRTL, [0, 0x01, 0, 0, 0, 0, 0, 0])),
            Err("overrun")
        );
        assert_eq!(
            from_socketcan(&frame(ERR_CRTL, [0, 0x04, 0, 0, 0, 0, 0, 0])),
            Err("error_frame")
        );
        assert_eq!(from_socketcan(&frame(0x0002, [0; 8])), Err("error_frame"));
        assert_eq!(classify_error(0x2000_0080, &[]), "bus_error");
    }

    /// This machine's kernel has no CAN: opening reports it as such (the source test in
    /// tests/can_socketcan.rs checks the status and log; this one the error itself).
    #[test]
    fn a_kernel_without_can_says_so() {
        match probe() {
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                let err = SocketLink::open("can0").err().expect("no CAN here");
                assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
                assert!(err.to_string().contains("EAFNOSUPPORT"), "{err}");
            }
            other => {
                eprintln!("kernel has CAN sockets ({other:?}); EAFNOSUPPORT path not testable here")
            }
        }
    }
}

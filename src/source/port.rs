//! A serial port that comes and goes: opening it, and waiting for it to come back.
//!
//! USB adapters are unplugged, GPS pucks brown out, udev links appear late. The serial and
//! OBD sources share this: [`open`] opens a path at a baud rate (8N1, no flow control, raw),
//! [`Backoff`] spaces the retries (250 ms doubling to 3 s), and [`Outage`] makes sure an
//! outage is logged once and ends with one "back" line. A pseudo-terminal slave behaves
//! like a USB adapter here: when its master closes, reads fail with `EIO`, the unplug.

use crate::source::events::{PortOpened, PortUnavailable};
use crate::source::SourceSlot;
use std::path::Path;
use std::time::Duration;
use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};
use tokio_util::sync::CancellationToken;

/// First retry delay after a failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// Longest retry delay: a device plugged back in is read again within about 3 s, however
/// long it was gone (the promise is under 5 s, docs/reliability.md `ingest-faults`).
const BACKOFF_MAX: Duration = Duration::from_secs(3);

/// Opens `path` at `baud`, 8N1, no flow control.
pub fn open(path: &Path, baud: u32) -> std::io::Result<SerialStream> {
    let path = path.to_string_lossy();
    tokio_serial::new(path.as_ref(), baud)
        .data_bits(DataBits::Eight)
        .parity(Parity::None)
        .stop_bits(StopBits::One)
        .flow_control(FlowControl::None)
        .open_native_async()
        .map_err(std::io::Error::from)
}

/// Exponential retry delays: 250 ms, 500 ms, ... capped at 3 s; reset after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    /// The delay to wait now; doubles the next one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }

    /// Back to the first delay (after the port worked).
    pub fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }

    /// Sleeps the next delay; `false` if shutdown fired first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let d = self.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

/// Tracks whether a source is in an outage, so each outage is logged once.
#[derive(Debug, Default)]
pub struct Outage {
    down: bool,
    ever_open: bool,
}

impl Outage {
    /// The port failed (open or read): state `waiting`, logged if a new outage.
    pub fn failed(
        &mut self,
        source: &str,
        path: &Path,
        slot: &SourceSlot,
        error: &dyn std::fmt::Display,
    ) {
        let first = !self.down;
        self.down = true;
        PortUnavailable {
            source,
            path,
            error,
        }
        .emit(slot, first);
    }

    /// The port is open (or the device answers again): state `running`, logged when it
    /// first opens and when it ends an outage.
    pub fn opened(&mut self, source: &str, path: &Path, slot: &SourceSlot) {
        if self.down || !self.ever_open {
            PortOpened {
                source,
                path,
                after_outage: self.down && self.ever_open,
            }
            .emit(slot);
        } else {
            slot.set_state("running", None);
        }
        self.down = false;
        self.ever_open = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 3000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_FIRST);
    }

    #[test]
    fn missing_path_is_not_found() {
        let err = open(Path::new("/nonexistent/fieldgate-tty"), 9600).expect_err("no such port");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    }
}

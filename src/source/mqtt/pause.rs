//! Backpressure: while the journal's write queue is full the MQTT source stops reading
//! from the broker instead of holding more in memory or dropping anything.
//!
//! Not calling `EventLoop::poll` leaves publishes in the socket and the broker's queue
//! (QoS1 ones unacknowledged, so a broker keeps them), while the journal's flusher, which
//! depends on nothing here, frees room. The ack task never waits on this loop (rumqttc's
//! request channel is only polled from it, so acks simply queue), so nothing can
//! deadlock. A PINGREQ written straight to the connection every keep-alive keeps the
//! broker from dropping us during a long disk stall.

use crate::journal::{Journal, JournalError};
use crate::source::SourceSlot;
use rumqttc::{EventLoop, Packet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Stop reading until the journal can take the refused batch, `(frames, bytes)`. Errors
/// when the journal closes or shutdown fires first (the held publishes stay unacked: the
/// broker resends them).
pub async fn until_room(
    eventloop: &mut EventLoop,
    journal: &Journal,
    (frames, needed): (u64, u64),
    shutdown: &CancellationToken,
    slot: &SourceSlot,
) -> Result<(), JournalError> {
    slot.set_state(
        "paused",
        Some("journal write queue full: not reading from the broker until it has room".into()),
    );
    let keep_alive = eventloop
        .mqtt_options
        .keep_alive()
        .max(Duration::from_secs(1));
    let start = tokio::time::Instant::now();
    let mut ping = tokio::time::interval_at(start + keep_alive / 2, keep_alive / 2);
    let mut beat = crate::source::beat_interval();
    let mut pinged = false;
    let room = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Err(JournalError::Closed),
            r = journal.wait_room(frames, needed) => break r,
            _ = ping.tick() => pinged |= ping_broker(eventloop).await,
            _ = beat.tick() => slot.beat(),
        }
    };
    if pinged {
        // Our own PINGRESPs are still unread; rumqttc must not take its own outstanding
        // ping for a dead connection when its keep-alive timer fires before it reads them.
        eventloop.state.await_pingresp = false;
    }
    slot.set_state("running", None);
    room
}

/// Write a PINGREQ straight to the connection; rumqttc reads the PINGRESP once polling
/// resumes. False when there is no connection or the write failed (the next poll says so).
async fn ping_broker(eventloop: &mut EventLoop) -> bool {
    let timeout = Duration::from_secs(eventloop.network_options().connection_timeout());
    let Some(net) = eventloop.network.as_mut() else {
        return false;
    };
    if net.write(Packet::PingReq).await.is_err() {
        return false;
    }
    matches!(tokio::time::timeout(timeout, net.flush()).await, Ok(Ok(())))
}
